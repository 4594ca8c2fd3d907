"""halo.ey_quantize (HALO-2's E_Y preparation): the token-rotated per-tensor Q(R E_Y) and the per-channel
Q(E_Y)ᵀ against float64 references, CUDA against the CPU reference (same bits), empty / zero / strided inputs,
opcheck, errors. CUDA cases skip without a GPU."""
import math

import pytest
import torch

from conftest import DEVICES
from refs import QMAX, hadamard_ref

DTYPES = list(QMAX)


def _signs(b, device):
    return (torch.randint(0, 2, (b,)) * 2 - 1).float().to(device)


def _rot_ref(ey, b, signs):
    """R E_Y in float64: per block of b rows, H_b diag(signs) = the block Hadamard of E_Yᵀ along its rows (H_b is
    symmetric)."""
    s = None if signs is None else signs.cpu().repeat(ey.shape[0] // b)
    if b == 1:  # R = diag(signs)
        return ey.double().cpu() * (1.0 if s is None else s.double()[:, None])
    return hadamard_ref(ey.t(), block=b, signs=s).t()


def _check_codes(q, scale, ref, qdtype):
    """q * scale approximates ref within the quantization step of each element (per-row scale broadcast)."""
    deq = q.double().cpu() * scale.double().cpu()
    if qdtype == torch.int8:
        tol = scale.double().cpu() * 0.5 * (1 + 1e-5) + 1e-30
    else:  # fp8: relative half-ulp (3 or 2 mantissa bits) plus the subnormal step
        mant = 3 if qdtype == torch.float8_e4m3fn else 2
        tol = ref.abs() * 2.0 ** -(mant + 1) * (1 + 1e-5) + scale.double().cpu() * 2.0 ** -6
    assert torch.all((deq - ref).abs() <= tol), float(((deq - ref).abs() - tol).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qdtype", DTYPES)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols,b", [(256, 64, 256), (96, 48, 16), (512, 80, 128), (64, 16, 32), (48, 32, 1),
                                         (32, 48, 8)])
def test_against_float64(device, qdtype, in_dtype, rows, cols, b):
    ey = (torch.randn(rows, cols) * torch.rand(1, cols) * 4).to(device, in_dtype)
    ey[:, 3 % cols] *= 20  # an outlier channel: its own scale must not touch the others
    signs = _signs(b, device)
    q_rot, s_rot, qt, s_t = torch.ops.halo.ey_quantize(ey, qdtype, b, signs)
    assert q_rot.shape == (rows, cols) and qt.shape == (cols, rows) and s_rot.shape == (1,) and s_t.shape == (cols,)
    assert q_rot.dtype == qdtype and qt.dtype == qdtype and s_t.dtype == torch.float32
    rot = _rot_ref(ey, b, signs)
    col_amax = ey.double().cpu().abs().amax(0)
    assert torch.allclose(s_t.double().cpu(), col_amax / QMAX[qdtype], rtol=1e-6)
    assert math.isclose(float(s_rot), float(rot.abs().max()) / QMAX[qdtype], rel_tol=1e-5)
    _check_codes(qt, s_t[:, None], ey.double().cpu().t(), qdtype)
    _check_codes(q_rot, s_rot, rot, qdtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("qdtype", DTYPES)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
# the kernel's CTA tile is 256 rows x 64 columns and each thread holds 32 rows: shapes below cover partial row
# tiles (384, 1056, 1040: last thread half full), partial column tiles (80, 272, 48) and every block 16..256
@pytest.mark.parametrize("rows,cols,b", [(4096, 1024, 256), (1040, 272, 16), (768, 96, 64), (384, 80, 128),
                                         (1056, 48, 32), (512, 4096, 256), (1040, 272, 1), (96, 48, 8),
                                         (512, 80, 2)])
@pytest.mark.parametrize("want", [(True, True), (True, False), (False, True)])
def test_cuda_matches_cpu_bits(qdtype, in_dtype, rows, cols, b, want):
    import halo_ext

    if not halo_ext.cuda_available():
        pytest.skip("halo_ext was built without CUDA kernels")
    ey = torch.randn(rows, cols, device="cuda", dtype=in_dtype) * torch.rand(1, cols, device="cuda", dtype=in_dtype)
    ey[rows // 3, cols // 2] = 60.0  # one outlier: a single column scale and the rotated tensor's scale follow it
    signs = _signs(b, "cuda") if want == (True, True) else None  # (True, False): the rotation without signs
    out_g = torch.ops.halo.ey_quantize(ey, qdtype, b, signs, *want)
    out_c = torch.ops.halo.ey_quantize(ey.cpu(), qdtype, b, None if signs is None else signs.cpu(), *want)
    for g, c in zip(out_g, out_c):
        assert torch.equal(g.cpu().view(torch.uint8) if g.dtype != torch.float32 else g.cpu(),
                           c.view(torch.uint8) if c.dtype != torch.float32 else c)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_optional_strided_and_no_signs(device):
    base = torch.randn(128, 96, device=device)
    ey = base[:, :64]  # row stride 96: a strided view
    q_rot, s_rot, qt, s_t = torch.ops.halo.ey_quantize(ey, torch.int8, 32, None, True, False)
    assert qt.numel() == 0 and s_t.numel() == 0 and q_rot.shape == (128, 64)
    _check_codes(q_rot, s_rot, _rot_ref(ey, 32, None), torch.int8)
    q_rot2, s_rot2, qt2, s_t2 = torch.ops.halo.ey_quantize(ey, torch.int8, 32, None, False, True)
    assert q_rot2.numel() == 0 and qt2.shape == (64, 128)
    _check_codes(qt2, s_t2[:, None], ey.double().cpu().t(), torch.int8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qdtype", DTYPES)
def test_block1_is_plain_per_tensor_quantize(device, qdtype):
    # block = 1 (no rotation): q_rot is hadamard_quantize(block=1)'s per-tensor Q(E_Y), bit for bit (HaloLinear's
    # levels 0/1 take Q(E_Y) and the per-channel Q(E_Y)^T from this one op)
    ey = torch.randn(1040, 272, device=device, dtype=torch.bfloat16) * torch.rand(1, 272, device=device).bfloat16()
    q, s, qt, st = torch.ops.halo.ey_quantize(ey, qdtype, 1, None, True, True)
    q2, _, s2 = torch.ops.halo.hadamard_quantize(ey, qdtype, None, 1, None, False, True, False, None)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
    _, _, qt3, st3 = torch.ops.halo.ey_quantize(ey, qdtype, 16, None, False, True)
    assert torch.equal(qt.view(torch.uint8), qt3.view(torch.uint8)) and torch.equal(st, st3)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_and_empty(device):
    z = torch.zeros(64, 32, device=device, dtype=torch.bfloat16)
    q_rot, s_rot, qt, s_t = torch.ops.halo.ey_quantize(z, torch.int8, 16)
    assert torch.all(q_rot == 0) and torch.all(qt == 0)
    assert torch.isfinite(s_rot).all() and torch.isfinite(s_t).all() and float(s_rot) > 0
    e = torch.zeros(0, 32, device=device)
    q_rot, s_rot, qt, s_t = torch.ops.halo.ey_quantize(e, torch.float8_e4m3fn, 16)
    assert q_rot.shape == (0, 32) and qt.shape == (32, 0) and torch.isfinite(s_t).all() and s_t.shape == (32,)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ey = torch.randn(64, 32, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.halo.ey_quantize.default, (ey, torch.int8, 16, _signs(16, device), True, True))
    torch.library.opcheck(torch.ops.halo.ey_quantize.default, (ey, torch.float8_e4m3fn, 32, None, False, True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(ey=torch.randn(64, 32), block=24), "power of two"),
    (dict(ey=torch.randn(64, 32), block=0), "power of two"),
    (dict(ey=torch.randn(64, 32), block=512), "power of two"),
    (dict(ey=torch.randn(40, 32), block=16), "multiple of block"),
    (dict(ey=torch.randn(40, 32), block=8), "multiple of 16"),  # the transposed output needs 16-token rows
    (dict(ey=torch.randn(64, 24), block=16), "multiple of 16"),
    (dict(ey=torch.randn(2, 64, 32), block=16), "2-D"),
    (dict(ey=torch.randn(64, 32), block=16, dtype=torch.bfloat16), "dtype"),
    (dict(ey=torch.randn(64, 32).to(torch.int32), block=16), "ey"),
    (dict(ey=torch.randn(64, 32), block=16, signs=torch.ones(8)), "signs"),
])
def test_errors(kwargs, match):
    args = dict(dtype=torch.int8, signs=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.halo.ey_quantize(args["ey"], args["dtype"], args["block"], args["signs"])
