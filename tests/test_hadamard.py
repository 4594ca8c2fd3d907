"""torch.ops.halo.hadamard: numerics vs float64 (kron(D_m, Sylvester) built independently in numpy), sizes,
strides, signs, blocks, autograd, opcheck and errors, on CPU and (when present) CUDA."""
import math

import numpy as np
import pytest
import torch

import halo_ext
import hadamard_ref as hr
from refs import hadamard_ref, rel_err, rounding_err

POW2 = [2 ** k for k in range(1, 16)]
DENSE_K = [12, 20, 28, 36, 40, 44, 52, 60, 108, 140]
REAL = [11008, 13824, 14336, 18944, 28672, 5120, 12288, 3584, 4864, 8960]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _rows_for(n):
    return max(1, min(64, 65536 // n))


def _check_close(out, ref, dtype, x_dtype=None):
    """No worse than 2x the error of rounding the exact result once to dtype, and than plain torch in dtype."""
    base = rounding_err(ref, dtype)
    err = rel_err(out, ref)
    slack = {torch.float32: 2e-6, torch.float16: 1e-5, torch.bfloat16: 1e-4}[dtype]
    assert err <= 2 * base + slack, f"rel err {err:.3g} vs rounding {base:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", POW2)
def test_pow2_sizes(device, dtype, n):
    x = torch.randn(_rows_for(n), n, device=device, dtype=dtype)
    out = halo_ext.hadamard(x)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    _check_close(out, hadamard_ref(x), dtype)


@pytest.mark.parametrize("n", [k * 2 ** p for k in DENSE_K for p in (0, 2, 5)] + REAL)
def test_dense_sizes(device, n):
    dtype = torch.bfloat16
    x = torch.randn(_rows_for(n), n, device=device, dtype=dtype)
    _check_close(halo_ext.hadamard(x), hadamard_ref(x), dtype)


def test_plain_torch_baseline_bf16(device):
    """The tolerance rule above is at least as strict as plain torch bf16 (x @ H in bf16)."""
    n = 1024
    x = torch.randn(16, n, dtype=torch.bfloat16)
    ref = hadamard_ref(x)
    H = torch.from_numpy(hr.hadamard_matrix(n)).to(torch.bfloat16)
    torch_out = (x @ H) * torch.tensor(1 / math.sqrt(n), dtype=torch.bfloat16)
    ours = halo_ext.hadamard(x.to(device))
    assert rel_err(ours, ref) <= 2 * rel_err(torch_out, ref)


@pytest.mark.parametrize("n", [16, 4096, 20 * 64, 14336])
def test_orthogonal_and_involution(device, n):
    x = torch.randn(8, n, device=device, dtype=torch.float32)
    y = halo_ext.hadamard(x)
    assert rel_err(halo_ext.hadamard(y, transpose=True), x) < 1e-5  # H H^T = I
    assert abs(y.norm().item() / x.norm().item() - 1) < 1e-5          # norm preserving
    m, _ = halo_ext.hadamard_factor(n)
    if hr.dense_symmetric(m):
        assert rel_err(halo_ext.hadamard(y), x) < 1e-5               # symmetric: involution


def test_matrix_is_orthonormal():
    # hadamard of the identity is the matrix itself: check H H^T = I exactly in float64 terms.
    for n in [12 * 4, 28 * 2, 64, 344, 92 * 2, 172]:
        eye = torch.eye(n)
        H = halo_ext.hadamard(eye).double()
        assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-6)
        ref = torch.from_numpy(hr.hadamard_matrix(n)) / math.sqrt(n)
        assert torch.allclose(H, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_leading_dims_and_strides(device, dtype):
    base = torch.randn(6, 4, 2 * 256, device=device, dtype=dtype)
    x = base[:, :, :256]             # row pitch 512, last dim contiguous: handled as a strided view
    _check_close(halo_ext.hadamard(x), hadamard_ref(x), dtype)
    xt = torch.randn(256, 8, device=device, dtype=dtype).t()  # last dim not contiguous: copied
    _check_close(halo_ext.hadamard(xt), hadamard_ref(xt), dtype)
    x3 = torch.randn(2, 3, 5, 128, device=device, dtype=dtype)
    assert halo_ext.hadamard(x3).shape == x3.shape
    _check_close(halo_ext.hadamard(x3), hadamard_ref(x3), dtype)


@pytest.mark.parametrize("block", [2, 16, 128, 1024])
def test_block_diagonal(device, block):
    x = torch.randn(5, 4096, device=device, dtype=torch.bfloat16)
    out = halo_ext.hadamard(x, block=block)
    _check_close(out, hadamard_ref(x, block=block), torch.bfloat16)
    ref2 = torch.from_numpy(np.kron(np.eye(4096 // block), hr.sylvester(block)) / math.sqrt(block))
    _check_close(out, x.double().cpu() @ ref2, torch.bfloat16)


@pytest.mark.parametrize("n", [256, 28 * 64])
def test_signs_and_scale(device, n):
    x = torch.randn(7, n, device=device, dtype=torch.float32)
    s = torch.randint(0, 2, (n,), device=device).float() * 2 - 1
    out = halo_ext.hadamard(x, scale=0.5, signs=s)
    assert rel_err(out, hadamard_ref(x, scale=0.5, signs=s)) < 2e-6
    inv = halo_ext.hadamard(halo_ext.hadamard(x, signs=s), signs=s, transpose=True)
    assert rel_err(inv, x) < 2e-6


def test_empty_and_zero(device):
    for shape in [(0, 64), (3, 0, 64)]:
        x = torch.empty(shape, device=device)
        assert halo_ext.hadamard(x).shape == x.shape
    z = torch.zeros(4, 1024, device=device, dtype=torch.bfloat16)
    assert (halo_ext.hadamard(z) == 0).all()
    tiny = torch.randn(1, 2, device=device)
    assert rel_err(halo_ext.hadamard(tiny), hadamard_ref(tiny)) < 1e-6


@pytest.mark.parametrize("n", [64, 20 * 32])
def test_autograd(device, n):
    x = torch.randn(3, n, device=device, requires_grad=True)
    s = torch.randint(0, 2, (n,), device=device).float() * 2 - 1
    y = halo_ext.hadamard(x, signs=s)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    # y = x diag(s) H / sqrt(n)  =>  dx = g H^T diag(s) / sqrt(n), from the float64 matrix.
    H = torch.from_numpy(hr.hadamard_matrix(n)) / math.sqrt(n)
    ref = (g.double().cpu() @ H.T) * s.double().cpu()
    assert rel_err(gx, ref) < 2e-6


def test_opcheck(device):
    x = torch.randn(4, 256, device=device)
    s = torch.ones(256, device=device)
    torch.library.opcheck(torch.ops.halo.hadamard.default, (x, None, 0, None, False))
    torch.library.opcheck(torch.ops.halo.hadamard.default, (x.bfloat16(), 0.25, 64, s, True))


def test_torch_compile_no_graph_break(device):
    def f(x):
        return halo_ext.hadamard(x * 2) + 1

    x = torch.randn(4, 128, device=device)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x), f(x))


def test_bad_inputs(device):
    x = torch.randn(4, 64, device=device)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        halo_ext.hadamard(x.to(torch.int32))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        halo_ext.hadamard(x.double())
    with pytest.raises(ValueError, match="unsupported size 188"):  # 4 * 47: no construction
        halo_ext.hadamard(torch.randn(2, 188, device=device))
    with pytest.raises(ValueError, match="unsupported size 26"):
        halo_ext.hadamard(torch.randn(2, 26, device=device))
    with pytest.raises(ValueError, match="must divide"):
        halo_ext.hadamard(x, block=48)
    with pytest.raises(ValueError, match="signs must have shape"):
        halo_ext.hadamard(x, signs=torch.ones(32, device=device))
    with pytest.raises(ValueError, match=">= 2"):
        halo_ext.hadamard(torch.randn(3, 1, device=device))


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
def test_cuda_errors_and_stream():
    x = torch.randn(4, 256, device="cuda")
    with pytest.raises(ValueError, match="is on"):
        halo_ext.hadamard(x, signs=torch.ones(256))
    mis = torch.randn(4 * 256 + 1, device="cuda")[1:].view(4, 256)
    with pytest.raises(ValueError, match="16-byte aligned"):
        halo_ext.hadamard(mis)
    # Runs on the current stream: a result computed on a side stream is right after that stream syncs.
    s = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        y = halo_ext.hadamard(big)
    s.synchronize()
    _check_close(y, hadamard_ref(big), torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [128, 4096, 32768, 14336, 11008])
def test_cuda_matches_cpu_poisoned(n):
    x = torch.randn(33, n, dtype=torch.bfloat16)
    cpu = halo_ext.hadamard(x)
    torch.cuda.empty_cache()
    junk = torch.full((33 * n,), float("nan"), device="cuda", dtype=torch.bfloat16)  # poison the allocator's pool
    del junk
    gpu = halo_ext.hadamard(x.cuda()).cpu()
    assert torch.isfinite(gpu.float()).all()
    assert rel_err(gpu, cpu) < 8e-3


def _hadamard_ref_cuda64(x, n, signs, transpose):
    """float64 reference on the GPU (same construction as hadamard_ref: kron(D_m, Sylvester), blockwise)."""
    m, p = hr.factor(n)
    D = torch.from_numpy(hr.dense_hadamard(m)).to(x.device)
    if transpose:
        D = D.T
    S = torch.from_numpy(hr.sylvester(1 << p)).to(x.device)
    xd = x.double()
    if not transpose:
        xd = xd * signs.double()
    g = xd.reshape(-1, m, 1 << p) @ S
    y = torch.einsum("ij,gik->gjk", D, g).reshape(x.shape) / math.sqrt(n)
    return y * signs.double() if transpose else y


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,transpose", [(torch.bfloat16, False), (torch.float16, True)])
@pytest.mark.parametrize("n", [12 * 32, 28 * 64, 28 * 128, 140 * 64, 172 * 64, 156 * 64, 92 * 128, 148 * 128, 20 * 256,
                               28 * 512, 12 * 1024, 28 * 1024, 12 * 2048, 344 * 64])
def test_dense_tensor_core_many_groups(dtype, transpose, n):
    """The 16-bit dense-factor kernels (the register-resident one; for 2^p > 128 with L kron S_{2^(p-7)}) over
    enough groups that each persistent CTA streams more tiles than it has staging buffers and the last tile is
    partial, as blocks of a wider row, with signs before (transpose=False) or after (transpose=True): vs float64."""
    groups = 5 * 264 * max(1, 24576 // (2 * n)) + 3
    x = torch.randn((groups + 1) // 2, 2 * n, device="cuda", dtype=dtype)
    s = torch.randint(0, 2, (2 * n,), device="cuda").float() * 2 - 1
    out = halo_ext.hadamard(x, block=n, signs=s, transpose=transpose)
    ref = _hadamard_ref_cuda64(x, n, s, transpose)
    _check_close(out, ref, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("stream", ["1", "0"])
@pytest.mark.parametrize("n,with_signs", [(172 * 64, True), (148 * 128, False), (140 * 64, False), (28 * 128, True),
                                          (28 * 1024, True)])
def test_dense_strided_rows_both_schedulers(monkeypatch, stream, n, with_signs):
    """The register-resident dense-factor kernel on rows with a pitch (groups not one contiguous span), more tiles
    than a CTA has staging buffers, with and without signs before the transform, under the streaming scheduler and
    under the barrier-a-tile loop (HALO_DENSE_STREAM=0; the default for groups of at most 2 m-tiles, 28 * 128 here;
    28 * 1024 streams with 16 warps, one CTA an SM, and takes dense_kernel without streaming): vs float64."""
    monkeypatch.setenv("HALO_DENSE_STREAM", stream)
    rows = 2 * 264 * 4 + 5
    x = torch.randn(rows, n + 64, device="cuda", dtype=torch.bfloat16)[:, :n]
    s = torch.randint(0, 2, (n,), device="cuda").float() * 2 - 1 if with_signs else torch.ones(n, device="cuda")
    out = halo_ext.hadamard(x, signs=s if with_signs else None)
    _check_close(out, _hadamard_ref_cuda64(x, n, s, False), torch.bfloat16)
