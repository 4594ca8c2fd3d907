"""torch.ops.halo.quantize / dequantize / hadamard_quantize: error bounds, bit-exact CPU/CUDA agreement,
granularities, all-zero and tiny tensors, transposed output, opcheck, errors; hypothesis fuzzing of the CPU ops."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import halo_ext
import hadamard_ref as hr
from refs import QMAX, hadamard_ref, quant_ref

QDTYPES = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]
MANT = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}
MIN_SUB = {torch.float8_e4m3fn: 2.0 ** -9, torch.float8_e5m2: 2.0 ** -16}


def _group_view(x, granularity, block):
    x2 = x.reshape(-1, x.shape[-1]).float()
    if granularity == "tensor":
        return x2.reshape(1, -1)
    if granularity == "row":
        return x2
    return x2.reshape(-1, block)


def _check_bound(x, q, scale, qdtype, granularity, block):
    """int8: |x - q s| <= absmax/254; fp8: half an ulp of the scaled value (or of the smallest subnormal), times the
    scale; plus 2e-6 absmax for float32 intermediates (the transform of hadamard_quantize is computed in float32)."""
    xs = _group_view(x, granularity, block).double()
    deq = _group_view(q.float(), granularity, block).double()
    s = scale.reshape(-1, 1).double() if granularity != "tensor" else scale.double().reshape(1, 1)
    err = (xs - deq * s).abs()
    amax = xs.abs().amax(dim=1, keepdim=True)
    if qdtype == torch.int8:
        bound = amax / 254 * (1 + 1e-5) + 1e-30
    else:
        v = xs.abs() / s
        bound = torch.maximum(v * 2.0 ** -(MANT[qdtype] + 1), torch.full_like(v, MIN_SUB[qdtype] / 2)) * s * (1 + 1e-5)
    bound = bound + 2e-6 * amax
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"
    assert torch.allclose(s.squeeze(1).float(), (amax.squeeze(1).clamp_min(1e-30) / QMAX[qdtype]).float(), rtol=1e-6)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("granularity,block", [("tensor", 0), ("row", 0), ("block", 128), ("block", 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_bound(device, qdtype, granularity, block, dtype):
    x = (torch.randn(37, 512, device=device) * torch.rand(37, 1, device=device) * 5).to(dtype)
    x[3, 7] = 40.0  # an outlier
    q, s = halo_ext.quantize(x, qdtype, granularity, block)
    assert q.dtype == qdtype and q.shape == x.shape and s.dtype == torch.float32
    expected_s = {"tensor": (1,), "row": (37, 1), "block": (37, 512 // max(block, 1))}[granularity]
    assert tuple(s.shape) == expected_s
    _check_bound(x.cpu(), q.cpu(), s.cpu(), qdtype, granularity, block)
    deq = halo_ext.dequantize(q, s, torch.float32, granularity, block)
    s_full = s.repeat_interleave(block, dim=-1) if granularity == "block" else s
    assert torch.equal(deq.cpu(), (q.float() * s_full).cpu())


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("granularity,block", [("tensor", 0), ("row", 0), ("block", 128)])
def test_quantize_cuda_bit_exact(qdtype, granularity, block):
    x = torch.randn(300, 1024, dtype=torch.bfloat16) * 3
    qc, sc = halo_ext.quantize(x, qdtype, granularity, block)
    qg, sg = halo_ext.quantize(x.cuda(), qdtype, granularity, block)
    assert torch.equal(sc, sg.cpu())
    assert torch.equal(qc.view(torch.uint8), qg.cpu().view(torch.uint8))
    big = torch.randn(4096, 8192, device="cuda", dtype=torch.bfloat16)
    q, s = halo_ext.quantize(big, qdtype, granularity, block)
    assert torch.allclose(s.cpu().reshape(-1)[:1].float() if granularity == "tensor" else s[:1].cpu().reshape(-1)[:1],
                          (big.float().abs().max() if granularity == "tensor" else
                           (big[0].float().abs().max() if granularity == "row" else big[0, :block].float().abs().max()))
                          .cpu().reshape(1) / QMAX[qdtype], rtol=1e-6)


def test_all_zero_and_tiny(device):
    for qdtype in QDTYPES:
        z = torch.zeros(5, 64, device=device)
        q, s = halo_ext.quantize(z, qdtype)
        assert (q.float() == 0).all() and torch.isfinite(s).all() and (s > 0).all()
        assert (halo_ext.dequantize(q, s) == 0).all()
        q, qt, s = halo_ext.hadamard_quantize(z, qdtype, want_qt=True)
        assert (q.float() == 0).all() and (qt.float() == 0).all() and torch.isfinite(s).all()
        t = torch.tensor([[1e-35, -3e-36]], device=device)
        q, s = halo_ext.quantize(t, qdtype)
        assert torch.isfinite(s).all() and torch.isfinite(q.float()).all()
        e = torch.empty(0, 64, device=device)
        q, s = halo_ext.quantize(e, qdtype)
        assert q.shape == e.shape and torch.isfinite(s).all()
        q, s = halo_ext.quantize(torch.randn(1, 1, device=device), qdtype, "row")
        assert q.shape == (1, 1)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("n", [256, 4096, 28 * 128])
def test_hadamard_quantize(device, qdtype, n):
    x = torch.randn(96, n, device=device, dtype=torch.bfloat16)
    x[:, 5] *= 50  # outlier channel, spread by the rotation
    q, qt, s = halo_ext.hadamard_quantize(x, qdtype, want_qt=True)
    assert q.shape == x.shape and qt.shape == (n, 96) and s.shape == (1,)
    assert torch.equal(q.t().cpu().view(torch.uint8), qt.cpu().view(torch.uint8))
    y = hadamard_ref(x)
    _, sref = quant_ref(y, qdtype)
    assert abs(s.item() - sref) <= 1e-5 * sref
    _check_bound(y, q.cpu(), s.cpu(), qdtype, "tensor", 0)
    # want_q=False gives only qt; a given amax skips the reduction.
    q2, qt2, s2 = halo_ext.hadamard_quantize(x, qdtype, want_q=False, want_qt=True)
    assert q2.numel() == 0 and torch.equal(qt2.cpu().view(torch.uint8), qt.cpu().view(torch.uint8))
    amax = (s * QMAX[qdtype]).reshape(1)
    _, _, s3 = halo_ext.hadamard_quantize(x, qdtype, amax=amax)
    assert torch.allclose(s3, s)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [4096, 14336, 28 * 64, 344 * 32, 148 * 128])
def test_hadamard_quantize_cuda_vs_cpu(n):
    x = torch.randn(256, n, dtype=torch.bfloat16)
    qc, qtc, sc = halo_ext.hadamard_quantize(x, torch.int8, want_qt=True)
    qg, qtg, sg = halo_ext.hadamard_quantize(x.cuda(), torch.int8, want_qt=True)
    assert abs(sg.item() - sc.item()) <= 1e-6 * sc.item()
    diff = (qg.cpu().int() - qc.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # fp32 summation order only
    assert torch.equal(qtg.cpu(), qg.cpu().t())


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows,cols,block,qdtype", [
    (2 * 2048 + 256, 4096, 0, torch.int8),               # power of two, many 256 x 128 transpose tiles
    (4104, 4096, 0, torch.int8),                         # rows not a multiple of 16: byte-wise transpose
    (1100, 16384, 256, torch.float8_e4m3fn),             # block-diagonal: 64 groups a row, ragged last row block
    (1100, 16384, 0, torch.float8_e4m3fn),               # one staging buffer, two CTAs an SM, refilled
    (520, 32768, 0, torch.int8),                         # one group a tile, the largest n (refilled early)
    (1100, 14336, 0, torch.int8), (5000, 28 * 64, 0, torch.int8),  # dense route
])
def test_hadamard_quantize_qt_large(rows, cols, block, qdtype):
    """q and qt of tensors of 16M+ elements on the power-of-two and dense routes (many transpose tiles, ragged row
    tiles, block-diagonal groups, signs), q in the workspace (qt only) and a given absmax (pass 1 skipped, pass 2
    not launched programmatically); outputs poisoned first. Codes equal the CPU's up to float32 summation order; qt
    is exactly q transposed."""
    x = torch.randn(rows, cols, dtype=torch.bfloat16)
    signs = (torch.randint(0, 2, (cols,)) * 2 - 1).float()
    qc, _, sc = halo_ext.hadamard_quantize(x, qdtype, block=block, signs=signs)
    torch.cuda.synchronize()
    poison = torch.full((4 * x.numel() + 8192,), 0x5A, dtype=torch.uint8, device="cuda")
    del poison
    xg, sg_ = x.cuda(), signs.cuda()
    qg, qtg, sg = halo_ext.hadamard_quantize(xg, qdtype, block=block, signs=sg_, want_qt=True)
    assert abs(sg.item() - sc.item()) <= 1e-6 * sc.item()
    def step(q):  # one code step: 1 for int8; 2^-3 relative for e4m3, at least its subnormal spacing 2^-9
        return 1.0 if qdtype == torch.int8 else (q.float().abs() * 2.0 ** -3).clamp_min(2.0 ** -9)

    diff = (qg.cpu().float() - qc.float()).abs()
    assert (diff <= step(qc)).all() and (diff > 0).float().mean() < 1e-3  # fp32 summation order only
    assert torch.equal(_u8(qtg), _u8(qg).t().contiguous())
    _, qt2, _ = halo_ext.hadamard_quantize(xg, qdtype, block=block, signs=sg_, want_q=False, want_qt=True)
    assert torch.equal(_u8(qt2), _u8(qtg))
    amax = (sg * QMAX[qdtype]).reshape(1)
    q3, qt3, s3 = halo_ext.hadamard_quantize(xg, qdtype, block=block, signs=sg_, want_qt=True, amax=amax)
    assert torch.allclose(s3, sg) and torch.equal(_u8(qt3), _u8(q3).t().contiguous())
    d3 = (q3.cpu().float() - qg.cpu().float()).abs()
    assert (d3 <= step(qg.cpu())).all()
    assert (d3 > 0).float().mean() < 1e-3  # the scale may differ in its last bit


@pytest.mark.parametrize("n", [32, 1024, 4096])
def test_int8_ties_round_half_even(device, n):
    """Codes of exact half-integers (scale exactly 1, absmax 127) round half to even on every device: quantize, and
    hadamard_quantize of x = y H / n (unnormalized H, hadamard_scale=1), whose butterflies are exact in float32
    (after any subset of stages the values are signed averages of y), so H x = y and absmax = 127 exactly. Covers
    the int8 conversion (clamp, round, pack) and pass 1's absmax on the fused kernels' deferred last butterfly."""
    g = torch.Generator().manual_seed(n)
    rows = 64
    y = torch.randint(-254, 255, (rows, n), generator=g).double() / 2  # half-integers in [-127, 127]
    y[0, 0] = 127.0
    y[1, :7] = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -126.5], dtype=torch.float64)
    expected = torch.round(y).to(torch.int8)  # half to even
    q, s = halo_ext.quantize(y.float().to(device), torch.int8, "tensor")
    assert s.item() == 1.0 and torch.equal(q.cpu(), expected)
    h = torch.from_numpy(hr.sylvester(n)).double()
    x = (y @ h / n).float()
    assert torch.equal((x.double() @ h), y)  # exact construction
    q, qt, s = halo_ext.hadamard_quantize(x.to(device), torch.int8, hadamard_scale=1.0, want_qt=True)
    assert s.item() == 1.0
    assert torch.equal(q.cpu(), expected) and torch.equal(qt.cpu(), expected.t())
    # bfloat16 input: one tie per row, x = (127 h_0 + 0.5 h_1) / n is exact in bfloat16
    yb = torch.zeros(rows, n, dtype=torch.float64)
    yb[:, 0], yb[:, 1] = 127.0, 0.5
    xb = (yb @ h / n).to(torch.bfloat16)
    assert torch.equal(xb.double() @ h, yb)
    q, _, s = halo_ext.hadamard_quantize(xb.to(device), torch.int8, hadamard_scale=1.0)
    assert s.item() == 1.0 and torch.equal(q.cpu(), torch.round(yb).to(torch.int8))


def _u8(t):
    return t.cpu().view(torch.uint8)


# Shapes for block=1 (no rotation): full 64x64 tiles, edge tiles in rows and cols, rows not a multiple of 16
# (scalar qt stores), cols not a multiple of 16 (scalar q stores) or of 8 (no 16-byte loads), one row, one col.
IDENTITY_SHAPES = [(128, 256), (200, 136), (65, 64), (1, 48), (37, 8), (64, 1), (3, 5), (256, 4096)]


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("shape", IDENTITY_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_hadamard_quantize_identity(device, qdtype, shape, dtype):
    """block=1: per-tensor quantize with q and qt from one read, bit-identical to quantize() and its transpose."""
    x = (torch.randn(shape, dtype=torch.float32) * 3).to(dtype).to(device)
    q, qt, s = halo_ext.hadamard_quantize(x, qdtype, block=1, want_qt=True)
    qr, sr = halo_ext.quantize(x, qdtype)
    assert torch.equal(s.cpu(), sr.cpu())
    assert torch.equal(_u8(q), _u8(qr)) and torch.equal(_u8(qt), _u8(qr).t().contiguous())
    # qt alone, and a given amax (the FSDP global scale): same codes
    q2, qt2, s2 = halo_ext.hadamard_quantize(x, qdtype, block=1, want_q=False, want_qt=True)
    assert q2.numel() == 0 and torch.equal(_u8(qt2), _u8(qt)) and torch.equal(s2.cpu(), s.cpu())
    amax = x.float().abs().amax().reshape(1)
    q3, _, s3 = halo_ext.hadamard_quantize(x, qdtype, block=1, amax=amax)
    assert torch.equal(_u8(q3), _u8(q)) and torch.equal(s3.cpu(), s.cpu())


def test_hadamard_quantize_identity_strided_and_empty(device):
    base = torch.randn(70, 160, device=device, dtype=torch.bfloat16)
    x = base[:, 8:136]  # row stride 160, 16-byte aligned start
    q, qt, s = halo_ext.hadamard_quantize(x, torch.int8, block=1, want_qt=True)
    qr, sr = halo_ext.quantize(x.contiguous(), torch.int8)
    assert torch.equal(_u8(q), _u8(qr)) and torch.equal(_u8(qt), _u8(qr).t().contiguous())
    e = torch.empty(0, 64, device=device, dtype=torch.bfloat16)
    q, qt, s = halo_ext.hadamard_quantize(e, torch.int8, block=1, want_qt=True)
    assert q.shape == (0, 64) and qt.shape == (64, 0) and torch.isfinite(s).all() and s.item() > 0
    _, _, s = halo_ext.hadamard_quantize(e, torch.int8, block=1, amax=torch.full((1,), 2.54, device=device))
    assert abs(s.item() - 0.02) < 1e-7
    z = torch.zeros(33, 64, device=device)
    q, qt, s = halo_ext.hadamard_quantize(z, torch.float8_e4m3fn, block=1, want_qt=True)
    assert (q.float() == 0).all() and (qt.float() == 0).all() and torch.isfinite(s).all()
    with pytest.raises(ValueError, match="block=1"):
        halo_ext.hadamard_quantize(z, torch.int8, block=1, signs=torch.ones(64, device=device))
    with pytest.raises(ValueError, match="block=1"):
        halo_ext.hadamard_quantize(z, torch.int8, block=1, hadamard_scale=0.5)
    with pytest.raises(ValueError, match=">= 2"):
        halo_ext.hadamard(z, block=1)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="needs CUDA")
@pytest.mark.parametrize("qdtype", QDTYPES)
def test_hadamard_quantize_identity_cuda_vs_cpu(qdtype):
    for shape in IDENTITY_SHAPES + [(8192 + 40, 1024)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        qc, qtc, sc = halo_ext.hadamard_quantize(x, qdtype, block=1, want_qt=True)
        torch.cuda.synchronize()
        poison = torch.full((2 * x.numel() + 4096,), 0x5A, dtype=torch.uint8, device="cuda")
        del poison  # the caching allocator hands these poisoned bytes to the op's outputs
        qg, qtg, sg = halo_ext.hadamard_quantize(x.cuda(), qdtype, block=1, want_qt=True)
        assert torch.equal(sg.cpu(), sc), shape
        assert torch.equal(_u8(qg), _u8(qc)) and torch.equal(_u8(qtg), _u8(qtc)), shape


def test_opcheck(device):
    x = torch.randn(8, 256, device=device)
    torch.library.opcheck(torch.ops.halo.quantize.default, (x, torch.int8, "row", 0))
    torch.library.opcheck(torch.ops.halo.quantize.default, (x, torch.float8_e4m3fn, "block", 64))
    q, s = halo_ext.quantize(x, torch.int8, "tensor")
    torch.library.opcheck(torch.ops.halo.dequantize.default, (q, s, torch.bfloat16, "tensor", 0))
    torch.library.opcheck(torch.ops.halo.hadamard_quantize.default,
                          (x, torch.int8, None, 0, None, False, True, True, None))
    torch.library.opcheck(torch.ops.halo.hadamard_quantize.default,
                          (x, torch.float8_e4m3fn, None, 1, None, False, True, True, None))


def test_bad_inputs(device):
    x = torch.randn(4, 64, device=device)
    with pytest.raises(TypeError, match="int8, torch.float8_e4m3fn"):
        halo_ext.quantize(x, torch.float16)
    with pytest.raises(ValueError, match="granularity must be"):
        halo_ext.quantize(x, torch.int8, "channel")
    with pytest.raises(ValueError, match="block"):
        halo_ext.quantize(x, torch.int8, "block", 48)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        halo_ext.quantize(x.long(), torch.int8)
    q, s = halo_ext.quantize(x, torch.int8, "row")
    with pytest.raises(ValueError, match="scale has 4 elements"):
        halo_ext.dequantize(q, s, torch.float32, "tensor")
    with pytest.raises(ValueError, match="both False"):
        halo_ext.hadamard_quantize(x, torch.int8, want_q=False, want_qt=False)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 9), cols_k=st.integers(1, 8), qdtype=st.sampled_from(QDTYPES),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       gran=st.sampled_from(["tensor", "row", "block"]), mag=st.floats(1e-3, 1e3))
def test_fuzz_quantize_cpu(rows, cols_k, qdtype, dtype, gran, mag):
    cols = 16 * cols_k
    x = (torch.randn(rows, cols) * mag).to(dtype)
    block = 16 if gran == "block" else 0
    q, s = halo_ext.quantize(x, qdtype, gran, block)
    if rows:
        _check_bound(x, q, s, qdtype, gran, block)


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 3), max_size=2), k=st.sampled_from([1, 12, 20, 28]), p=st.integers(1, 9),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_fuzz_hadamard_cpu(lead, k, p, dtype):
    n = k * 2 ** p
    x = torch.randn(*lead, n).to(dtype)
    out = halo_ext.hadamard(x)
    ref = hadamard_ref(x)
    err = (out.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    base = (ref.to(dtype).double() - ref).norm() / ref.norm().clamp_min(1e-30)
    assert err <= 2 * base + 2e-6
