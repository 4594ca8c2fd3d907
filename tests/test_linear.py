"""HaloLinear (HALO levels 0/1/2, int8/fp8): gradients vs float64, outliers, training, state_dict, convert on HF
models, LoRA/PEFT, the QuantizedWeight hook, torch.compile, bad configs. CUDA cases skip without a GPU.

Error bounds (relative Frobenius error of Y, E_X, G against float64 autograd), derived for the test data (Gaussian):
- int8, per-tensor absmax: each operand's rounding error is uniform in +-s/2, s = amax/127, so its relative rms
  error is e = (amax/rms) / (127 sqrt 12). For Gaussian data of <= 1e5 elements (rotated or not) amax/rms <= 5, so
  e <= 0.0114. A GEMM of two independently quantized operands has relative error ~ sqrt(e_a^2 + e_b^2) <= 0.016;
  the undo rotations are orthogonal (norm-preserving) and the bf16/fp32 output rounding adds <= 2^-8. Bound used:
  2x that (the spread of the estimate at these sizes, which have only ~1e3-1e4 output elements): 0.035.
- fp8 e4m3: 3 mantissa bits, round to nearest: relative error uniform in +-2^-4, rms 2^-4/sqrt 3 = 0.036 per operand,
  0.051 per GEMM, bound 2x = 0.10. e5m2 gradients (2 mantissa bits): rms 2^-3/sqrt 3 = 0.072 for E_Y, with e4m3 for
  the other operand 0.081, bound 2x = 0.16.
A rotation left undone (or applied on the wrong side) gives errors ~1, so each bound is far from vacuous.
"""
import logging

import pytest
import torch
import torch.nn as nn

import halo_ext
from halo_ext import HaloLinear

from conftest import DEVICES
from refs import rel_err

BOUND = {("int8", None): 0.035, ("fp8", None): 0.10, ("fp8", "e5m2"): 0.16}
PRECS = list(BOUND)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _ref_grads(x, w, b, g):
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_() if b is not None else None
    y = torch.nn.functional.linear(x64, w64, b64)
    y.backward(g.double().cpu())
    return y, x64.grad, w64.grad, (b64.grad if b is not None else None)


def _check_layer(device, dtype, level, prec, gprec, shape_x, n, bias=True, bound_scale=1.0):
    k = shape_x[-1]
    lin = HaloLinear(k, n, bias=bias, level=level, precision=prec, grad_precision=gprec, device=device,
                     dtype=dtype)
    x = torch.randn(*shape_x, device=device, dtype=dtype, requires_grad=True)
    y = lin(x)
    assert y.shape == (*shape_x[:-1], n) and y.dtype == dtype
    g = torch.randn_like(y)
    y.backward(g)
    yr, gx, gw, gb = _ref_grads(x, lin.weight, lin.bias, g)
    bound = BOUND[(prec, gprec)] * bound_scale
    errs = (_rel(y, yr), _rel(x.grad, gx), _rel(lin.weight.grad, gw))
    assert max(errs) < bound, (level, prec, gprec, errs, bound)
    assert x.grad.dtype == dtype and lin.weight.grad.dtype == dtype and lin.weight.grad.shape == (n, k)
    if bias:
        # the bias gradient is exact up to the output rounding (a sum of E_Y in fp32)
        assert _rel(lin.bias.grad, gb) < (1e-2 if dtype == torch.bfloat16 else 1e-5)
    return errs


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("prec,gprec", PRECS)
def test_grads_cpu(level, prec, gprec):
    # M = 2*37 tokens: not a multiple of 16 (padding of the weight-gradient GEMM) nor a power of two (HALO-2 H_T)
    _check_layer("cpu", torch.float32, level, prec, gprec, (2, 37, 128), 96)


@pytest.mark.cuda
@pytest.mark.skipif(not halo_ext.cuda_available(), reason="no CUDA device / CUDA kernels")
@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("prec,gprec", PRECS)
@pytest.mark.parametrize("shape_x,n", [((200, 512), 256), ((3, 100, 1024), 512), ((4096, 256), 768),
                                       ((8, 128, 768), 384)])
def test_grads_cuda(level, prec, gprec, shape_x, n):
    # bf16 inputs: one more bf16 rounding of X, W, E_Y and the outputs (2^-9 each) than the CPU case: bound x1.1.
    _check_layer("cuda", torch.bfloat16, level, prec, gprec, shape_x, n, bound_scale=1.1)


def test_no_bias_and_frozen_weight():
    lin = HaloLinear(64, 32, bias=False, level=2)
    lin.weight.requires_grad_(False)
    x = torch.randn(10, 64, requires_grad=True)
    y = lin(x)
    g = torch.randn_like(y)
    y.backward(g)
    _, gx, _, _ = _ref_grads(x, lin.weight, None, g)
    assert lin.weight.grad is None and _rel(x.grad, gx) < BOUND[("int8", None)]
    # the cached quantized weight is reused, and refreshed after an in-place update
    c1 = lin._wcache
    lin(x)
    assert lin._wcache is c1
    with torch.no_grad():
        lin.weight.mul_(2)
    y2 = lin(x)
    assert lin._wcache is not c1 and _rel(y2, 2 * y) < 1e-6


def test_zero_and_tiny_inputs():
    lin = HaloLinear(32, 16, level=2)
    x = torch.zeros(3, 32, requires_grad=True)
    y = lin(x)
    y.backward(torch.zeros_like(y))
    assert torch.isfinite(y).all() and torch.allclose(y, lin.bias.expand_as(y), atol=1e-6)
    assert torch.all(x.grad == 0) and torch.all(lin.weight.grad == 0)
    y1 = lin(torch.randn(1, 32))  # one token
    assert y1.shape == (1, 16) and torch.isfinite(y1).all()


def _outlier_errs(level, prec, device="cpu", dtype=torch.float32):
    torch.manual_seed(1)
    m, k, n = 256, 256, 128
    x = torch.randn(m, k, device=device, dtype=dtype)
    x[:, [3, 77, 200]] *= 100.0  # a few outlier channels
    lin = HaloLinear(k, n, level=level, precision=prec, device=device, dtype=dtype)
    xr = x.clone().requires_grad_()
    y = lin(xr)
    g = torch.randn_like(y)
    y.backward(g)
    yr, _, gw, _ = _ref_grads(x, lin.weight, lin.bias, g)
    return _rel(y, yr), _rel(lin.weight.grad, gw)


@pytest.mark.parametrize("device", DEVICES)
def test_outliers(device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    e = {(lv, p): _outlier_errs(lv, p, device, dtype) for lv in (0, 1, 2) for p in ("int8", "fp8")}
    # int8: one per-tensor scale set by the outliers wipes out the other channels at HALO-0; the rotation spreads
    # each outlier over all K channels. Measured ~10x; require 3x ("several times") on Y and on G.
    for lv in (1, 2):
        for i in range(2):
            assert e[(lv, "int8")][i] * 3 < e[(0, "int8")][i], e
    # fp8 keeps a relative precision per element, so outliers barely hurt HALO-0: what holds is that all levels
    # stay within the plain fp8 bound, and the rotation does not make it worse by more than 1.5x.
    for lv in (0, 1, 2):
        assert max(e[(lv, "fp8")]) < BOUND[("fp8", None)], e
        assert e[(lv, "fp8")][0] < 1.5 * e[(0, "fp8")][0] + 1e-3, e


def _grad_errs(x, g, seed, **kw):
    """(E_X error, G error, layer) of one HaloLinear(bias=False, **kw) backward for input x and output gradient g."""
    torch.manual_seed(seed)
    lin = HaloLinear(x.shape[1], g.shape[1], bias=False, device=x.device, dtype=x.dtype, **kw)
    xr = x.clone().requires_grad_()
    lin(xr).backward(g)
    _, gx, gw, _ = _ref_grads(x, lin.weight, None, g)
    return _rel(xr.grad, gx), _rel(lin.weight.grad, gw), lin


@pytest.mark.parametrize("device", DEVICES)
def test_token_rotation_coherent_gradient(device):
    # E_Y with a component shared by all tokens (as the residual-stream gradient of an LM has). A plain Sylvester
    # H_T sums it into the first token of each block (sqrt(b) = 16x larger there), the per-tensor int8 scale follows
    # that row and the rest of E_Y loses ~4 bits: measured 7.6x HALO-1's E_X error. With the fixed random signs
    # the rotated columns are Gaussian with the column's rms; for this data (columns nearly constant, crest factor
    # ~1 per column) that raises the absmax by at most the Gaussian crest factor of a column (~3): measured 1.8x.
    # Bound 2.5x: the signs must stay in (a plain H_T fails it by 3x).
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    torch.manual_seed(3)
    m, k, n = 512, 256, 256
    x = torch.randn(m, k, device=device, dtype=dtype)
    g = (torch.randn(1, n) * 3 + 0.3 * torch.randn(m, n)).to(device, dtype)
    errs = {level: _grad_errs(x, g, 4, level=level)[0] for level in (1, 2)}
    assert errs[2] < 2.5 * errs[1] and errs[2] < BOUND[("int8", None)], errs


@pytest.mark.parametrize("device", DEVICES)
def test_wgrad_channel_scale(device):
    # E_Y with a few output channels 30x the rest (as the gradients at the q/k projections and the MLP gate/up have):
    # with one int8 scale for all of E_Y (set by the outlier channels) the other 253 channels of G are quantized
    # with a step 30x too coarse for them; one scale per output channel (the default for int8) gives each channel
    # its own step. Measured (CPU): per tensor 0.073, per channel 0.013. Required: per channel within the int8
    # bound and 3x lower than per tensor.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    torch.manual_seed(5)
    m, k, n = 512, 256, 256
    x = torch.randn(m, k, device=device, dtype=dtype)
    g = torch.randn(m, n)
    g[:, [5, 100, 201]] *= 30.0
    g = g.to(device, dtype)
    errs = {}
    for mode in ("tensor", "channel"):
        _, errs[mode], lin = _grad_errs(x, g, 6, level=2, wgrad_scale=mode)
        assert lin.wgrad_scale == mode
    assert errs["channel"] < BOUND[("int8", None)] and 3 * errs["channel"] < errs["tensor"], errs
    assert HaloLinear(k, n).wgrad_scale == "channel" and HaloLinear(k, n, precision="fp8").wgrad_scale == "tensor"


def test_state_dict_roundtrip():
    lin = nn.Linear(64, 48)
    h = HaloLinear(64, 48, level=1, precision="fp8")
    h.load_state_dict(lin.state_dict())
    assert set(h.state_dict()) == {"weight", "bias"}
    lin2 = nn.Linear(64, 48)
    lin2.load_state_dict(h.state_dict())
    assert torch.equal(lin2.weight, lin.weight) and torch.equal(lin2.bias, lin.bias)
    f = HaloLinear.from_linear(lin, level=0)
    assert f.weight is lin.weight and f.bias is lin.bias and isinstance(f, nn.Linear)
    x = torch.randn(5, 64)
    assert _rel(f(x), lin(x)) < BOUND[("int8", None)]
    b = HaloLinear(64, 48, precision="bf16")
    b.load_state_dict(lin.state_dict())
    assert torch.allclose(b(x), lin(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(level=3), "level"),
    (dict(precision="int4"), "precision"),
    (dict(precision="int8", grad_precision="e5m2"), "grad_precision"),
    (dict(precision="fp8", grad_precision="bf8"), "grad_precision"),
    (dict(token_block=100), "token_block"),
    (dict(wgrad_scale="row"), "wgrad_scale"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HaloLinear(64, 64, **kwargs)


def test_bad_dims():
    with pytest.raises(ValueError, match="multiples of 16"):
        HaloLinear(64, 40)
    with pytest.raises(ValueError, match="Hadamard"):
        HaloLinear(752, 64, level=2)  # 752 = 47 * 16: no Hadamard matrix of that order is constructible here
    HaloLinear(752, 64, level=0)  # level 0 needs no rotation
    with pytest.raises(ValueError, match="level"):
        halo_ext.convert(nn.Linear(16, 16), level=5)


def test_quantized_weight_hook():
    torch.manual_seed(3)
    for level in (0, 2):
        lin = HaloLinear(128, 64, level=level)
        qw = halo_ext.quantize_weight(lin.weight, level, torch.int8, want_qt=level == 0)
        calls = []

        def hook(lv, prec, qw=qw):
            calls.append((lv, prec))
            return qw
        # the layer must only use the hook: poison the weight values (NaN) to prove they are not read
        poisoned = nn.Parameter(torch.full_like(lin.weight, float("nan")))
        poisoned.halo_qweight = hook
        ref_w = lin.weight.detach().clone()
        lin.weight = poisoned
        x = torch.randn(40, 128, requires_grad=True)
        y = lin(x)
        g = torch.randn_like(y)
        y.backward(g)
        yr, gx, gw, _ = _ref_grads(x, ref_w, lin.bias, g)
        assert calls == [(level, "int8")]
        b = BOUND[("int8", None)]
        assert _rel(y, yr) < b and _rel(x.grad, gx) < b and _rel(poisoned.grad, gw) < b
        assert poisoned.grad.shape == (64, 128) and poisoned.grad.dtype == torch.float32
    # a hook returning None: the layer quantizes the weight itself
    lin = HaloLinear(64, 32)
    lin.weight.halo_qweight = lambda lv, p: None
    assert torch.isfinite(lin(torch.randn(4, 64))).all()


def _tiny_cfg(kind):
    import transformers
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        return transformers.LlamaConfig(**common)
    if kind == "qwen2":
        return transformers.Qwen2Config(**common)
    if kind == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_convert_hf(kind, caplog):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = _tiny_cfg(kind)
    cfg.intermediate_size = 72  # not a multiple of 16: gate/up (out 72) and down (in 72) must be skipped
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = model(ids).logits
    with caplog.at_level(logging.INFO, logger="halo_ext.linear"):
        halo_ext.convert(model, level=2, precision="int8")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("skipping" in m for m in msgs) == 1 + 3 * 2, msgs  # lm_head + 3 MLP layers x 2 blocks
    assert any("lm_head" in m for m in msgs) and any("down_proj" in m and "72" in m for m in msgs), msgs
    halo = [n for n, m in model.named_modules() if isinstance(m, HaloLinear)]
    assert len(halo) == 2 * 4 and all(n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in halo)
    assert type(model.lm_head) is nn.Linear
    out = model(ids).logits
    assert _rel(out.detach(), ref) < 0.05
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_convert_matches_original():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_cfg("llama"))
    ids = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        ref = model(ids).logits
        halo_ext.convert(model, level=2, precision="int8")
        out = model(ids).logits
    assert _rel(out, ref) < 0.05


def _train(precision, level, steps=25, seed=0):
    import transformers
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_cfg("llama"))
    if precision != "bf16":
        halo_ext.convert(model, level=level, precision=precision)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(123)
    # a learnable task: each sequence is an arithmetic progression mod 128 with a random start and stride 1..4
    losses = []
    for _ in range(steps):
        start = torch.randint(0, 128, (8, 1), generator=g)
        stride = torch.randint(1, 5, (8, 1), generator=g)
        ids = (start + stride * torch.arange(32)) % 128
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_training_tiny_llama():
    pytest.importorskip("transformers")
    ref = _train("bf16", 0)
    h2 = _train("int8", 2)
    tail = lambda l: sum(l[-5:]) / 5  # noqa: E731
    assert tail(ref) < 0.7 * ref[0] and tail(h2) < 0.7 * h2[0], (ref, h2)
    assert abs(tail(h2) - tail(ref)) < 0.05 * tail(ref), (tail(h2), tail(ref))


def test_lora_layer():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    lo = halo_ext.HaloLoraLinear.from_linear(base, r=4, lora_alpha=8)
    nn.init.normal_(lo.lora_B.weight)
    assert not lo.weight.requires_grad and lo.lora_A.weight.requires_grad
    x = torch.randn(3, 9, 64, requires_grad=True)
    y = lo(x)
    g = torch.randn_like(y)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    yr = (x64 @ base.weight.double().T + base.bias.double()
          + 2.0 * (x64 @ lo.lora_A.weight.double().T) @ lo.lora_B.weight.double().T)
    yr.backward(g.double())
    b = BOUND[("int8", None)]
    assert _rel(y, yr) < b and _rel(x.grad, x64.grad) < b
    assert lo.weight.grad is None and lo.lora_A.weight.grad is not None
    assert lo._wcache is not None


def test_peft_llama(caplog):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_cfg("llama"))
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                       "down_proj"]))
    ids = torch.randint(0, 128, (2, 16))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        ref = pm(ids).logits
    with caplog.at_level(logging.INFO, logger="halo_ext.linear"):
        halo_ext.prepare_peft(pm, level=2)
    bases = [m for n, m in pm.named_modules() if n.endswith("base_layer")]
    assert bases and all(isinstance(m, HaloLinear) for m in bases)
    assert not any(isinstance(m, HaloLinear) for n, m in pm.named_modules() if "lora_" in n)
    out = pm(ids, labels=ids)
    assert _rel(out.logits.detach(), ref) < 0.05
    out.loss.backward()
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(m.weight.grad is None for m in bases)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = HaloLinear(64, 32, level=2)
    eager = HaloLinear(64, 32, level=2)
    eager.load_state_dict(lin.state_dict())
    f = torch.compile(lin, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 20, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = f(x)
    ye = eager(x2)
    y.sum().backward()
    ye.sum().backward()
    assert torch.allclose(y, ye, atol=1e-5) and torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(lin.weight.grad, eager.weight.grad, atol=1e-5)


def test_rotation_block():
    # K = 3 * 256: the default H_m is block-diagonal with b = 256 (the largest power-of-two divisor); the algebra
    # (rotate, 8-bit GEMM, undo) holds for any orthogonal block size, so the same bounds apply.
    assert halo_ext.rotation_block(768) == 256 and halo_ext.rotation_block(1024) == 0
    assert halo_ext.rotation_block(14336) == 2048 and halo_ext.rotation_block(96) == 0
    lin = HaloLinear(768, 64, level=2)
    assert lin.rotation_block == 256
    _check_layer("cpu", torch.float32, 1, "int8", None, (40, 768), 64)
    full = HaloLinear(768, 64, level=1, rotation_block=0)
    x = torch.randn(24, 768, requires_grad=True)
    y = full(x)
    y.backward(torch.ones_like(y))
    yr, gx, gw, _ = _ref_grads(x, full.weight, full.bias, torch.ones_like(y))
    assert max(_rel(y, yr), _rel(x.grad, gx), _rel(full.weight.grad, gw)) < BOUND[("int8", None)]
    with pytest.raises(ValueError, match="rotation_block"):
        HaloLinear(768, 64, rotation_block=100)


def test_autocast_bf16_cpu():
    # under autocast the layer computes in the autocast dtype like nn.Linear (output bf16, grads in param dtypes)
    lin = HaloLinear(64, 32, level=2)
    x = torch.randn(2, 17, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    y.backward(g)
    yr, gx, gw, _ = _ref_grads(x, lin.weight, lin.bias, g)
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    b = BOUND[("int8", None)] * 1.1  # + bf16 roundings (2^-9) of x, E_Y and the outputs
    assert max(_rel(y, yr), _rel(x.grad, gx), _rel(lin.weight.grad, gw)) < b


def _sibling_run(x, layers, share):
    """q/k/v-style siblings: every layer reads x itself (share) or its own copy of x (no sharing possible)."""
    xs = [x if share else x.detach().clone().requires_grad_() for _ in layers]
    ys = [m(xi) for m, xi in zip(layers, xs)]
    sum((y * g).sum() for y, g in zip(ys, _sibling_run.grads)).backward()
    gx = x.grad.clone() if share else sum(xi.grad for xi in xs)
    return [y.detach() for y in ys], gx, [m.weight.grad.clone() for m in layers]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level", [0, 2])
def test_sibling_layers_share_input_quantization(device, level, monkeypatch):
    # q/k/v read one tensor: it is rotated and quantized once (one hadamard_quantize call instead of three), with
    # bit-identical outputs and gradients to three independent quantizations
    import halo_ext.linear as L

    torch.manual_seed(0)
    layers = [HaloLinear(128, n, level=level).to(device) for n in (64, 32, 32)]
    x = torch.randn(3, 40, 128, device=device, requires_grad=True)
    _sibling_run.grads = [torch.randn(3, 40, m.out_features, device=device) for m in layers]
    calls = []
    real = L._lin_fwd
    # the forward op quantizes the input itself when it is not handed the shared codes (qx, argument 5)
    monkeypatch.setattr(L, "_lin_fwd", lambda *a: calls.append(a[5] is None) or real(*a))
    ys0, gx0, gw0 = _sibling_run(x, layers, share=False)
    assert sum(calls) == 3 and len(calls) == 3
    for m in layers:
        m.weight.grad = None
    x.grad = None
    calls.clear()
    ys1, gx1, gw1 = _sibling_run(x, layers, share=True)
    assert sum(calls) == 1
    for a, b in zip(ys0 + gw0, ys1 + gw1):
        assert torch.equal(a, b)
    assert torch.allclose(gx0, gx1, rtol=1e-6, atol=1e-7)  # the same three terms, summed in autograd's order


def test_input_quantization_cache_invalidation(monkeypatch):
    import gc

    import halo_ext.linear as L

    calls = []
    real = L._lin_fwd  # counts the forward calls that quantize their input (not handed shared codes, argument 5)
    monkeypatch.setattr(L, "_lin_fwd", lambda *a: (calls.append(1) if a[5] is None else None) or real(*a))
    a, b = HaloLinear(64, 48, level=2), HaloLinear(64, 48, level=2)  # weights [48, 64]; x padded to [32, 64]
    x = torch.randn(20, 64)
    ya = a(x)
    with torch.no_grad():
        x.mul_(3.0)  # in-place change: _version moves on, the next sibling must not reuse the old codes
    yb = b(x)
    assert len(calls) == 2
    assert torch.equal(yb, HaloLinear.from_linear(b, level=2)(x.clone()))  # a copy: computed afresh (3 calls)
    # a different quantization (precision, level 0 = no rotation) of the same tensor is not shared either
    HaloLinear.from_linear(b, level=2, precision="fp8")(x)
    HaloLinear.from_linear(b, level=0)(x)
    assert len(calls) == 5
    # the entry goes with its tensor: nothing kept alive, a new tensor (even at the same address) recomputes
    del x, ya, yb
    gc.collect()
    assert L._XQ_CACHE.ref is None and L._XQ_CACHE.value is None
    a(torch.randn(20, 64))
    assert len(calls) == 6


def test_inference_mode_siblings():
    # inference tensors have no version counter: the layers must not share (and must not fail on) them
    a, b = HaloLinear(64, 48, level=2), HaloLinear(64, 48, level=0)
    with torch.inference_mode():
        x = torch.randn(20, 64)
        ya = a(x)
        x.mul_(2.0)
        yb = b(x)
    assert ya.shape == yb.shape == (20, 48)
    with torch.no_grad():
        assert torch.equal(yb, b(x.clone()))
    with torch.inference_mode():  # a layer made in inference mode: inference-tensor weights, frozen
        m = HaloLinear(64, 48, level=2).requires_grad_(False)
        assert m(torch.randn(20, 64)).shape == (20, 48)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing(use_reentrant):
    # the recomputation runs inside the layer's backward (non-reentrant: when the saved tensors are unpacked); it
    # must record autograd state like the original forward and give the same gradients
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    q, k, o = HaloLinear(64, 64, level=2), HaloLinear(64, 32, level=2), HaloLinear(96, 64, level=1)

    def block(x):
        return o(torch.cat([q(x), k(x)], -1)) + x

    x = torch.randn(2, 24, 64, requires_grad=True)
    block(x).square().sum().backward()
    ref = [x.grad.clone()] + [m.weight.grad.clone() for m in (q, k, o)]
    x.grad = None
    for m in (q, k, o):
        m.weight.grad = None
    checkpoint(block, x, use_reentrant=use_reentrant).square().sum().backward()
    for a, b in zip(ref, [x.grad] + [m.weight.grad for m in (q, k, o)]):
        assert torch.equal(a, b)


def _fwd_bwd_args(device, level, m, k, n, b, wgs_channel, bias, qd=torch.int8, gd=torch.int8):
    """Arguments of halo.linear_forward / linear_backward for one layer call (what _HaloLinearFn passes)."""
    import halo_ext.linear as L

    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
    bb = torch.randn(n, device=device, dtype=torch.float32) if bias else None
    mp = -(-m // b) * b if level == 2 else -(-m // 16) * 16
    fwd = (x, w, bb, None, None, None, None, level, qd, mp, 0, True, True)
    y, wq, ws, wqt, qx, qxt, sx = torch.ops.halo.linear_forward(*fwd)
    rot = L._token_hadamard(b, device, torch.bfloat16) if level == 2 else None
    signs = L._token_signs_on(b, device) if level == 2 and b <= 256 else None
    ey = torch.randn(m, n, device=device, dtype=torch.bfloat16)
    bwd = (ey, qxt, sx, wqt, ws, rot, signs, level, gd, b if level == 2 else 0, mp, 0, wgs_channel, True, True,
           torch.bfloat16, torch.float32 if bias else None)
    return fwd, bwd, (y, wq, ws, wqt, qx, qxt, sx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level,m,b,wgs_channel,bias", [(0, 40, 0, True, True), (1, 32, 0, False, False),
                                                        (2, 40, 16, True, True), (2, 20, 32, False, False)])
def test_linear_ops_opcheck(device, level, m, b, wgs_channel, bias):
    torch.manual_seed(0)
    fwd, bwd, (y, wq, ws, wqt, qx, qxt, sx) = _fwd_bwd_args(device, level, m, 64, 48, b, wgs_channel, bias)
    assert y.shape == (m, 48) and qxt.shape == (64, fwd[9]) and wqt.shape == (64, 48)
    torch.library.opcheck(torch.ops.halo.linear_forward.default, fwd)
    # pre-quantized weight and shared input codes: nothing quantized again, those outputs empty
    fwd2 = fwd[:3] + (wq, ws, qx, sx) + fwd[7:]
    out2 = torch.ops.halo.linear_forward(*fwd2)
    assert torch.equal(out2[0], y) and all(t.numel() == 0 for t in out2[1:])
    torch.library.opcheck(torch.ops.halo.linear_forward.default, fwd2)
    torch.library.opcheck(torch.ops.halo.linear_backward.default, bwd)
    gx, gw, gb = torch.ops.halo.linear_backward(*bwd)
    assert gx.shape == (m, 64) and gw.shape == (48, 64) and gw.dtype == torch.bfloat16
    assert (gb.shape == (48,) and torch.equal(gb, bwd[0].float().sum(0))) if bias else gb.numel() == 0
    # only one of the gradients
    gx1, gw1, _ = torch.ops.halo.linear_backward(*bwd[:13], True, False, None, None)
    assert torch.equal(gx1, gx) and gw1.numel() == 0
    _, gw2, _ = torch.ops.halo.linear_backward(*bwd[:13], False, True, torch.float32, None)
    # the same GEMM; the bf16 call rounds its output before the H_m undo: within a few bf16 ulps of the max
    assert gw2.dtype == torch.float32 and (gw2 - gw.float()).abs().max() <= 2 ** -6 * gw.float().abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dt", [torch.int8, torch.float8_e4m3fn])
def test_halo2_token_undo_in_gemm(device, dt):
    """bf16, token block 256: linear_backward undoes the token rotation inside the input-gradient GEMM (qgemm's
    row_hadamard; the sm90 epilogue on Hopper). Same E_X as the composition it replaces (bf16 GEMM output, batched
    GEMM with R_b, H_m undo) within that composition's own roundings: two bf16 roundings of ~2^-9 rms each."""
    torch.manual_seed(0)
    m, k, n, b = 300, 128, 96, 256
    _, bwd, (_, _, ws, wqt, _, _, _) = _fwd_bwd_args(device, 2, m, k, n, b, True, False, qd=dt, gd=dt)
    gx, _, _ = torch.ops.halo.linear_backward(*bwd)
    ey, rot, signs, mp = bwd[0], bwd[5], bwd[6], bwd[10]
    eyp = torch.cat([ey, ey.new_zeros(mp - m, n)])
    qr, sr, _, _ = torch.ops.halo.ey_quantize(eyp, dt, b, signs, True, False)
    z = halo_ext.qgemm(qr, wqt, sr, ws, torch.bfloat16)
    z = (rot.t() @ z.view(-1, b, k)).view(mp, k)
    z = halo_ext.hadamard(z, transpose=True)[:m]
    assert gx.shape == (m, k) and rel_err(gx, z) < 8e-3
    # and E_X itself against float64 (HALO-2's bound for the precision, bf16 inputs)
    _check_layer(device, torch.bfloat16, 2, "int8" if dt == torch.int8 else "fp8", None, (m, k), n,
                 bound_scale=1.1)


def test_linear_backward_token_block_above_256():
    # HALO-2 with a token block ey_quantize does not fuse (> 256): the batched-GEMM rotation + quantize path
    torch.manual_seed(0)
    fwd, bwd, _ = _fwd_bwd_args("cpu", 2, 600, 64, 32, 512, True, False)
    assert bwd[6] is None and bwd[5].shape == (512, 512)
    torch.library.opcheck(torch.ops.halo.linear_backward.default, bwd)
    gx, gw, _ = torch.ops.halo.linear_backward(*bwd)
    assert gx.shape == (600, 64) and gw.shape == (32, 64) and torch.isfinite(gx.float()).all()


def test_linear_ops_errors():
    torch.manual_seed(0)
    fwd, bwd, _ = _fwd_bwd_args("cpu", 2, 40, 64, 48, 16, True, False)
    with pytest.raises(ValueError, match="wqt"):
        torch.ops.halo.linear_backward(*bwd[:3], None, *bwd[4:])
    with pytest.raises(ValueError, match="token_rot"):
        torch.ops.halo.linear_backward(*bwd[:5], None, *bwd[6:])
    with pytest.raises(ValueError, match="multiple of token_block"):
        torch.ops.halo.linear_backward(*bwd[:10], 40, *bwd[11:])
    with pytest.raises(ValueError, match="2-D"):
        torch.ops.halo.linear_backward(bwd[0].flatten(), *bwd[1:])
    with pytest.raises(ValueError, match="level must be"):
        torch.ops.halo.linear_forward(*fwd[:7], 3, *fwd[8:])
    with pytest.raises(ValueError, match="padded_tokens"):
        torch.ops.halo.linear_forward(*fwd[:9], 8, *fwd[10:])
    qx, sx = torch.zeros(8, 64, dtype=torch.int8), torch.ones(1)
    with pytest.raises(ValueError, match="pre-quantized input must be"):
        torch.ops.halo.linear_forward(*fwd[:5], qx, sx, *fwd[7:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level", [0, 2])
def test_cache_weight_gradient_accumulation(device, level, monkeypatch):
    # cache_weight=True: a trainable weight is quantized once per optimizer step, not once per micro-batch; outputs
    # and gradients are bit-identical to quantizing every call, and an optimizer step (in place, version bump) or a
    # write through .data + invalidate_weight_cache() re-quantizes
    import halo_ext.linear as L

    torch.manual_seed(0)
    ref = nn.Linear(64, 48, bias=True).to(device)
    a = HaloLinear.from_linear(ref, level=level)
    b = HaloLinear.from_linear(nn.Linear(64, 48).to(device), level=level, cache_weight=True)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert "cache_weight=True" in repr(b)
    calls = []
    real = L.quantize_weight  # what the cache calls to (re)make the 8-bit weight
    monkeypatch.setattr(L, "quantize_weight", lambda *a_, **k: calls.append(1) or real(*a_, **k))
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    for step in range(2):
        for micro in range(3):
            x = torch.randn(32, 64, device=device)
            g = torch.randn(32, 48, device=device)
            calls.clear()
            ya, yb = a(x), b(x)
            assert len(calls) == (1 if micro == 0 else 0), (step, micro, calls)  # once per optimizer step
            assert torch.equal(ya, yb)
            ya.backward(g)
            yb.backward(g)
        assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.bias.grad, b.bias.grad)
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
    with torch.no_grad():
        a.weight.data.mul_(0.5)
        b.weight.data.mul_(0.5)  # invisible to the version counter
    b.invalidate_weight_cache()
    x = torch.randn(32, 64, device=device)
    assert torch.equal(a(x), b(x))
