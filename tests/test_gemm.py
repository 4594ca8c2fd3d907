"""torch.ops.halo.qgemm and hadamard_qgemm: exact int8 (integer accumulation), float8 vs float64, scales per tensor
and per row, bias, tails, zero and tiny sizes, errors, opcheck; CUDA (CUTLASS sm90) vs the CPU reference."""
import pytest
import torch

import halo_ext
from refs import fwht_last, rel_err

PAIRS = [(torch.int8, torch.int8), (torch.float8_e4m3fn, torch.float8_e4m3fn),
         (torch.float8_e5m2, torch.float8_e4m3fn)]


def _rand8(shape, dtype, device):
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, dtype=torch.int8, device=device)
    return (torch.randn(shape, device=device) * 4).to(dtype)


def _ref(a, b, sa, sb, bias=None):
    acc = a.double().cpu() @ b.double().cpu().T
    out = acc * sa.double().cpu().reshape(-1, 1) * sb.double().cpu().reshape(1, -1)
    return out + (bias.double().cpu() if bias is not None else 0)


@pytest.mark.parametrize("ta,tb", PAIRS)
@pytest.mark.parametrize("M,N,K", [(1, 16, 16), (77, 136, 272), (256, 128, 512), (130, 264, 64)])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_qgemm(device, ta, tb, M, N, K, per_row, out_dtype):
    a, b = _rand8((M, K), ta, device), _rand8((N, K), tb, device)
    sa = torch.rand(M if per_row else 1, device=device) + 0.5
    sb = torch.rand(N if per_row else 1, device=device) * 1e-2 + 1e-3
    bias = torch.randn(N, device=device).to(out_dtype) if M % 2 else None
    out = halo_ext.qgemm(a, b, sa, sb, out_dtype, bias)
    assert out.shape == (M, N) and out.dtype == out_dtype
    ref = _ref(a, b, sa, sb, bias)
    # One rounding to out_dtype, plus for float8 the accumulation of Hopper's fp8 tensor cores, which keep about
    # 14 mantissa bits inside an MMA (torch._scaled_mm has the same property): 4 * 2^-14 ~ 2.5e-4.
    base = rel_err(ref.to(out_dtype), ref)
    fp8_acc = 2.5e-4 if (ta != torch.int8 and device == "cuda") else 2e-6
    assert rel_err(out, ref) <= 2 * base + (1e-6 if ta == torch.int8 else fp8_acc)


def test_int8_exact_integer_accumulation(device):
    M, N, K = 96, 80, 4096  # |sum| up to 4096*127^2 = 6.6e7 > 2^24: exact only with integer accumulation
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=device)
    b = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
    a[0] = 127
    b[0] = 127
    one = torch.ones(1, device=device)
    out = halo_ext.qgemm(a, b, one, one, torch.float32)
    exact = a.cpu().long() @ b.cpu().long().T
    assert exact.abs().max() < 2 ** 31
    # float32 output rounds the exact integer once: compare against that rounding.
    assert torch.equal(out.cpu(), exact.to(torch.float64).to(torch.float32))


def test_zero_and_tiny(device):
    one = torch.ones(1, device=device)
    for ta, tb in PAIRS:
        a = torch.zeros(5, 32, device=device).to(ta)
        b = torch.zeros(16, 32, device=device).to(tb)
        out = halo_ext.qgemm(a, b, one, one)
        assert (out == 0).all()
    e = halo_ext.qgemm(torch.zeros(0, 32, dtype=torch.int8, device=device),
                       torch.zeros(16, 32, dtype=torch.int8, device=device), one, one)
    assert e.shape == (0, 16)


def test_qgemm_errors(device):
    a = torch.zeros(8, 32, dtype=torch.int8, device=device)
    one = torch.ones(1, device=device)
    with pytest.raises(ValueError, match="K mismatch"):
        halo_ext.qgemm(a, torch.zeros(16, 48, dtype=torch.int8, device=device), one, one)
    with pytest.raises(TypeError, match="supported \\(a, b\\) dtypes"):
        halo_ext.qgemm(a, torch.zeros(16, 32, device=device).to(torch.float8_e4m3fn), one, one)
    with pytest.raises(TypeError, match="must be torch.int8"):
        halo_ext.qgemm(a.float(), a.float(), one, one)
    with pytest.raises(ValueError, match="scale_a must have 1 or M=8"):
        halo_ext.qgemm(a, a, torch.ones(3, device=device), one)
    with pytest.raises(ValueError, match="K-major"):
        halo_ext.qgemm(torch.zeros(32, 8, dtype=torch.int8, device=device).t(), a, one, one)
    with pytest.raises(ValueError, match="bias must have shape"):
        halo_ext.qgemm(a, a, one, one, torch.bfloat16, torch.zeros(3, dtype=torch.bfloat16, device=device))


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.sm90_available(), reason="needs an sm_90 GPU and the sm90a build")
def test_sm90_alignment_errors():
    one = torch.ones(1, device="cuda")
    a = torch.zeros(8, 24, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="halo.qgemm"):
        halo_ext.qgemm(a, a, one, one)  # K = 24 is not a multiple of 16


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.sm90_available(), reason="needs an sm_90 GPU and the sm90a build")
@pytest.mark.parametrize("ta,tb", PAIRS)
def test_sm90_forced_config(ta, tb):
    """set_qgemm_sm90_config runs every configuration of the family; int8 ones agree bit for bit (exact integer
    accumulation, same epilogue), float8 ones within the fp8 accumulation bound; -1 restores the heuristic; a family
    without the index keeps its heuristic."""
    C = halo_ext._C
    M, N, K = 300, 528, 1024
    a, b = _rand8((M, K), ta, "cuda"), _rand8((N, K), tb, "cuda")
    sa, sb = torch.rand(M, device="cuda") + 0.5, torch.rand(1, device="cuda") * 1e-2
    ref = _ref(a, b, sa, sb)
    names = C.qgemm_sm90_configs({torch.int8: "int8", torch.float8_e5m2: "e5m2"}.get(ta, "e4m3"))
    assert len(names) >= 2
    outs = []
    try:
        for i in range(len(names)):
            C.set_qgemm_sm90_config(i)
            assert C.qgemm_sm90_config() == i
            outs.append(halo_ext.qgemm(a, b, sa, sb, torch.bfloat16))
            f32 = halo_ext.qgemm(a, b, sa, sb, torch.float32)  # the fp32-out families have one configuration
            assert rel_err(f32, ref) <= (1e-6 if ta == torch.int8 else 2.5e-4)
    finally:
        C.set_qgemm_sm90_config(-1)
    assert C.qgemm_sm90_config() == -1
    base = rel_err(ref.to(torch.bfloat16), ref)
    for i, out in enumerate(outs):
        assert rel_err(out, ref) <= 2 * base + (1e-6 if ta == torch.int8 else 2.5e-4), names[i]
        if ta == torch.int8:
            assert torch.equal(out, outs[0]), names[i]


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("ta,tb", PAIRS)
@pytest.mark.parametrize("M,N,K", [(4096, 4096, 4096), (1000, 14336, 4096), (8200, 1024, 2048), (64, 256, 8192)])
def test_qgemm_cuda_large(ta, tb, M, N, K):
    a, b = _rand8((M, K), ta, "cuda"), _rand8((N, K), tb, "cuda")
    sa = torch.rand(M, device="cuda") + 0.5
    sb = torch.rand(1, device="cuda") * 1e-2
    ref = _ref(a[:512], b, sa[:512], sb)
    out = halo_ext.qgemm(a, b, sa, sb)
    base = rel_err(ref.to(torch.bfloat16), ref)
    assert rel_err(out[:512], ref) <= 2 * base + (1e-5 if ta == torch.int8 else 2.5e-4)
    assert torch.isfinite(out.float()).all()


def _ref_row_hadamard(a, b, sa, sb, rb):
    """float64 diag(sa) (I (x) H_rb) (a b^T) diag(sb), H_rb the unnormalized Sylvester matrix (numpy butterflies)."""
    acc = (a.double().cpu() @ b.double().cpu().T).numpy()
    if rb > 1:
        m, n = acc.shape
        acc = fwht_last(acc.reshape(m // rb, rb, n).transpose(0, 2, 1)).transpose(0, 2, 1).reshape(m, n)
    acc = torch.from_numpy(acc.copy())
    return acc * sa.double().cpu().reshape(-1, 1) * sb.double().cpu().reshape(1, -1)


@pytest.mark.parametrize("ta,tb", PAIRS)
@pytest.mark.parametrize("M,N,K,rb", [(512, 136, 272, 256), (256, 264, 64, 256), (768, 128, 512, 256),
                                      (64, 48, 32, 16), (96, 16, 16, 2), (48, 32, 64, 1)])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_qgemm_row_hadamard(device, ta, tb, M, N, K, rb, per_row, out_dtype):
    """row_hadamard: the product's rows mixed by H_rb before the scales (the fused sm90 kernel for rb = 256 with
    int8/e4m3 and bf16 out, the fallback otherwise), against float64. One output rounding, plus float32 rounding of
    the butterflies (8 stages: < 2^-20 relative) and, for float8 on the GPU, its tensor-core accumulation."""
    a, b = _rand8((M, K), ta, device), _rand8((N, K), tb, device)
    sa = (torch.rand(M if per_row else 1, device=device) + 0.5) * (-1) ** torch.arange(M if per_row else 1,
                                                                                     device=device)
    # outputs of order 1-100 (fp16 range): the row mix grows them by sqrt(rb)
    sb = (torch.rand(N if per_row else 1, device=device) * 1e-2 + 1e-3) / (K * max(rb, 1)) ** 0.5
    out = halo_ext.qgemm(a, b, sa, sb, out_dtype, None, rb)
    assert out.shape == (M, N) and out.dtype == out_dtype
    ref = _ref_row_hadamard(a, b, sa, sb, rb)
    base = rel_err(ref.to(out_dtype), ref)
    fp8_acc = 2.5e-4 if (ta != torch.int8 and device == "cuda") else 2e-6
    assert rel_err(out, ref) <= 2 * base + (1e-6 if ta == torch.int8 else fp8_acc)
    if rb <= 1:
        assert torch.equal(out, halo_ext.qgemm(a, b, sa, sb, out_dtype))
    else:  # not the plain product: a row mix left undone gives an error ~1
        assert rel_err(halo_ext.qgemm(a, b, sa, sb, out_dtype), ref) > 0.5


def test_qgemm_row_hadamard_zero_and_errors(device):
    one = torch.ones(1, device=device)
    z = torch.zeros(256, 32, dtype=torch.int8, device=device)
    assert (halo_ext.qgemm(z, z[:16], one, one, torch.bfloat16, None, 256) == 0).all()
    a = torch.randint(-127, 128, (48, 32), dtype=torch.int8, device=device)
    with pytest.raises(ValueError, match="row_hadamard must be 0 or a power of two"):
        halo_ext.qgemm(a, a, one, one, torch.bfloat16, None, 3)
    with pytest.raises(ValueError, match="must divide the rows of a"):
        halo_ext.qgemm(a, a, one, one, torch.bfloat16, None, 32)
    with pytest.raises(ValueError, match="bias is not supported with row_hadamard"):
        halo_ext.qgemm(a, a, one, one, torch.bfloat16, torch.zeros(48, dtype=torch.bfloat16, device=device), 16)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.sm90_available(), reason="needs an sm_90 GPU and the sm90a build")
@pytest.mark.parametrize("ta", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("M,N,K", [(8192, 4096, 4096), (1024, 14336, 1024), (4096, 200, 2048)])
def test_qgemm_row_hadamard_cuda_large(ta, M, N, K):
    """The fused kernel at layer shapes (HALO-2's E_X: tokens x in-features, K = out-features), per-row scale_a with
    signs as HALO-2 passes it, partial tiles along N; checked on 512 rows = 2 token blocks against float64."""
    a, b = _rand8((M, K), ta, "cuda"), _rand8((N, K), ta, "cuda")
    signs = torch.randint(0, 2, (256,), device="cuda").float() * 2 - 1
    sa = signs.repeat(M // 256) * 1e-3 / 16
    sb = torch.rand(1, device="cuda") * 1e-2
    out = halo_ext.qgemm(a, b, sa, sb, torch.bfloat16, None, 256)
    rows = slice(M - 512, M)
    ref = _ref_row_hadamard(a[rows], b, sa[rows], sb, 256)
    base = rel_err(ref.to(torch.bfloat16), ref)
    assert rel_err(out[rows], ref) <= 2 * base + (1e-5 if ta == torch.int8 else 2.5e-4)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("K", [256, 28 * 64])
def test_hadamard_qgemm(device, dtype, K):
    x = torch.randn(4, 33, K, device=device, dtype=torch.bfloat16)
    x[..., 3] *= 30  # outlier channel
    w = torch.randn(96, K, device=device, dtype=torch.bfloat16) / K ** 0.5
    bias = torch.randn(96, device=device, dtype=torch.bfloat16)
    out = halo_ext.hadamard_qgemm(x, w, dtype, bias=bias)
    assert out.shape == (4, 33, 96) and out.dtype == torch.bfloat16
    ref = x.double().cpu() @ w.double().cpu().T + bias.double().cpu()
    tol = 0.02 if dtype == torch.int8 else 0.06
    assert rel_err(out, ref) < tol
    if dtype == torch.int8:
        # Rotation helps int8 (a uniform grid): per-tensor quantization without it is worse with an outlier
        # channel. float8's relative precision makes it nearly indifferent to the outlier, so no claim there.
        qx, sx = halo_ext.quantize(x.reshape(-1, K), dtype)
        qw, sw = halo_ext.quantize(w, dtype)
        plain = halo_ext.qgemm(qx, qw, sx, sw, torch.bfloat16, bias).reshape(out.shape)
        assert rel_err(out, ref) < rel_err(plain, ref)
    # Pre-rotated, pre-quantized weight gives the same result.
    qw_rot, _, sw_rot = halo_ext.hadamard_quantize(w, dtype)
    out2 = halo_ext.hadamard_qgemm(x, qw_rot, dtype, w_scale=sw_rot, bias=bias)
    assert torch.equal(out2, out)


def test_hadamard_qgemm_errors(device):
    x = torch.randn(8, 64, device=device)
    w = torch.randn(16, 64, device=device)
    with pytest.raises(ValueError, match="w must be \\[N, K\\]"):
        halo_ext.hadamard_qgemm(x, w.t().contiguous(), torch.int8)
    qw, _ = halo_ext.quantize(w, torch.int8)
    with pytest.raises(ValueError, match="needs w_scale"):
        halo_ext.hadamard_qgemm(x, qw, torch.int8)


def test_opcheck(device):
    a = _rand8((32, 64), torch.int8, device)
    b = _rand8((16, 64), torch.int8, device)
    sa, sb = torch.rand(32, device=device), torch.rand(1, device=device)
    torch.library.opcheck(torch.ops.halo.qgemm.default, (a, b, sa, sb, torch.bfloat16, None))
    torch.library.opcheck(torch.ops.halo.qgemm.default, (a, b, sa, sb, torch.bfloat16, None, 16))
    x = torch.randn(32, 64, device=device)
    w = torch.randn(16, 64, device=device)
    torch.library.opcheck(torch.ops.halo.hadamard_qgemm.default, (x, w, torch.int8, None, None, None, 0, None))
