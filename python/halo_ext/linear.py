"""HALO training layer: :class:`HaloLinear` (levels 0/1/2, int8/fp8), :func:`convert`, LoRA (:class:`HaloLoraLinear`,
:func:`prepare_peft`).

For ``Y = X Wᵀ (+ b)`` with ``X [M, K]`` (M tokens), ``W [N, K]``, backward ``E_X = E_Y W``, ``G = E_Yᵀ X``;
``Q`` = per-tensor absmax quantization with a device scale, ``H_m`` = Hadamard along K (in-features),
``H_T`` = Hadamard along tokens (block-diagonal, ``I ⊗ (diag(d)·H_b)`` with ``b = token_block`` and fixed random
signs d, see :func:`_token_hadamard`):

=======  ============================  =========================================  ==============================
level    forward                       input gradient E_X                         weight gradient G
=======  ============================  =========================================  ==============================
0        Q(X)·Q(W)ᵀ                    Q(E_Y)·Q(W)                                Q(E_Y)ᵀ·Q(X)
1        Q(X H_m)·Q(W H_m)ᵀ            [Q(E_Y)·Q(W H_m)]·H_mᵀ                     [Q(E_Y)ᵀ·Q(X H_m)]·H_mᵀ
2        as 1                          H_T·[Q(H_Tᵀ E_Y)·Q(W H_m)]·H_mᵀ            as 1
=======  ============================  =========================================  ==============================

The E_Y operand of the weight-gradient GEMM (``Q(E_Y)ᵀ``, rows = output channels) is quantized with one scale
per output channel when the gradient precision is int8 (``wgrad_scale="channel"``, the default for int8; the
scales are applied in the GEMM epilogue, the algebra is unchanged). Why: the gradients w.r.t. the q/k projections
and the MLP intermediate (gate/up) have output channels 20x larger than the median, and a per-tensor int8 scale
then leaves G with 7-17 % error where fp8 has 2-3 % (tools/quant_probe.py on the pre-trained 100m preset:
gate/up G error 0.124/0.172 per tensor, 0.010/0.009 per channel). ``wgrad_scale="tensor"`` is the paper's Q.

Memory: the forward saves the rotated, quantized X in the transposed 8-bit layout the weight-gradient GEMM reads
(``[K, M]``, 1 byte/element) plus a 4-byte scale, instead of the bf16 X (2 bytes/element): M·K bytes saved per
layer (half of nn.Linear's activation memory for this layer; 3/4 for an fp32 X). Nothing of X is saved when the
weight is frozen (LoRA base). The 8-bit weight (and its transposed copy for E_X) is saved too: N·K bytes, or
nothing extra when it comes cached (frozen weight) or from ``halo_qweight`` (FSDP).
"""
from __future__ import annotations

import logging
import math
import weakref
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _C

__all__ = ["HaloLinear", "HaloLoraLinear", "QuantizedWeight", "convert", "prepare_peft", "halo_linear",
           "quantize_weight", "linear_supported", "rotation_block"]

log = logging.getLogger("halo_ext.linear")

_hq = torch.ops.halo.hadamard_quantize
_had = torch.ops.halo.hadamard

_PRECISIONS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "bf16": None}
_GRAD = {"int8": torch.int8, "e4m3": torch.float8_e4m3fn, "fp8": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_ALIGN = 16  # the sm90 8-bit GEMMs need K-major rows of 16 bytes: every reduction dim (K, N and tokens) % 16 == 0


class QuantizedWeight(NamedTuple):
    """A weight already quantized for a HALO level (what an FSDP all-gather of 8-bit shards can hand the layer).

    q: 8-bit ``[N, K]``, rotated along K (``W H_m``) for levels 1/2, unrotated for level 0;
    scale: fp32 ``[1]`` device tensor with ``W (H_m) ~= q * scale``;
    qt: optional 8-bit ``[K, N]`` contiguous transpose of q (for the input-gradient GEMM), or None (then the layer
    transposes q when it needs it)."""
    q: torch.Tensor
    scale: torch.Tensor
    qt: Optional[torch.Tensor] = None


def _check_config(level, precision, grad_precision):
    if level not in (0, 1, 2):
        raise ValueError(f"HaloLinear: level must be 0, 1 or 2, got {level!r}")
    if precision not in _PRECISIONS:
        raise ValueError(f"HaloLinear: precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    qd = _PRECISIONS[precision]
    if qd is None:
        return None, None
    if grad_precision is None:
        gd = qd
    else:
        if grad_precision not in _GRAD:
            raise ValueError(f"HaloLinear: grad_precision must be None or one of {sorted(_GRAD)}, got "
                             f"{grad_precision!r}")
        gd = _GRAD[grad_precision]
        if (qd == torch.int8) != (gd == torch.int8):
            raise ValueError(f"HaloLinear: grad_precision {grad_precision!r} does not match precision {precision!r} "
                             "(int8 pairs with int8; fp8 with e4m3 or e5m2)")
    return qd, gd


def linear_supported(in_features: int, out_features: int, level: int = 2,
                     rotation_block: Optional[int] = None) -> Optional[str]:
    """None if a HALO layer of these dims is supported, else the reason (a string)."""
    if in_features % _ALIGN or out_features % _ALIGN:
        return (f"in_features={in_features} and out_features={out_features} must be multiples of {_ALIGN} "
                "(8-bit GEMM alignment)")
    if level >= 1:
        rb = _rotation_block(in_features, rotation_block)
        if rb and (rb < 2 or in_features % rb):
            return f"rotation_block={rb} must be 0 or a divisor >= 2 of in_features={in_features}"
        if _C.hadamard_factor(rb or in_features) is None:
            return (f"in_features={in_features} (rotation block {rb or in_features}) is not a supported Hadamard size "
                    "(halo_ext.hadamard_supported)")
    return None


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------

def rotation_block(k: int) -> int:
    """The H_m HaloLinear uses by default for in_features k: 0 (full length) when k is a power of two; else the
    largest power-of-two divisor of k if it is >= 256 (block-diagonal H_m = I ⊗ H_b: still orthogonal, spreads each
    outlier over b channels, and runs at the power-of-two speed: on H100 the fused rotate+quantize with a dense
    m-factor runs at about 0.5 of its byte bound against about 0.8 for powers of two (at 14336 columns:
    bench/results/quant.json, notes/hadamard_kernels.md); else 0."""
    if k & (k - 1) == 0:
        return 0
    b = k & -k
    return b if b >= 256 else 0


def quantize_weight(weight: torch.Tensor, level: int, qdtype: torch.dtype, want_qt: bool = True,
                    block: Optional[int] = None) -> QuantizedWeight:
    """Quantize ``weight [N, K]`` as ``level`` needs (rotated along K for levels 1/2 with the H_m of block
    ``block``, default :func:`rotation_block` (K)), with the transposed copy."""
    w = weight.detach()
    if level == 0:
        q, qt, s = _hq(w, qdtype, None, 1, None, False, True, want_qt, None)  # block=1: no rotation, q+qt 1 read
        return QuantizedWeight(q, s, qt if want_qt else None)
    if block is None:
        block = rotation_block(w.shape[1])
    q, qt, s = _hq(w, qdtype, None, block, None, False, True, want_qt, None)
    return QuantizedWeight(q, s, qt if want_qt else None)


_HB_CACHE: dict = {}


def _make_token_signs(b: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0x4A10 + b)
    return (torch.randint(0, 2, (b,), generator=g) * 2 - 1).to(torch.float32)


# Made at import for every power-of-two order up to 8192 (32 KB in all): torch.compile cannot create the generator
# inside a traced backward, so a compiled HALO-2 layer must find its signs made already.
_TOKEN_SIGNS = {1 << p: _make_token_signs(1 << p) for p in range(4, 14)}


def _token_signs(b: int) -> torch.Tensor:
    """The fixed ±1 signs d of the token rotation of order b (float32, CPU): a function of b only, the same on every
    machine, rank and run (generated from a fixed seed, not drawn from the global RNG)."""
    d = _TOKEN_SIGNS.get(b)
    return _make_token_signs(b) if d is None else d


def _token_hadamard(b: int, device, dtype) -> torch.Tensor:
    """The token rotation R_b = H_b·diag(d) as a dense [b, b] matrix: orthonormal Sylvester H_b with the columns
    multiplied by fixed random signs d (:func:`_token_signs`), so ``R_b y`` flips the signs of the tokens of a
    block and then mixes them. R_b is orthogonal (its inverse is R_bᵀ = diag(d)·H_b). Why the signs: a component
    of E_Y that is the same in every token (the gradient of the residual stream has one: the mean of the softmax
    probabilities, pushed through the LM head) is summed coherently into the first row of each block by a plain
    H_b and grows by sqrt(b) there; the per-tensor scale then follows that row and every other element loses
    log2(sqrt(b)) bits (tools/quant_probe.py: the E_X error of HALO-2 int8 doubled on a random Llama). With the
    signs the sum over a block is incoherent and the rotation only spreads, as intended."""
    key = (b, device, dtype)
    h = _HB_CACHE.get(key)
    if h is None:
        hb = _had(torch.eye(b, dtype=torch.float32, device=device), None, 0, None, False)
        h = (hb * _token_signs_on(b, device)).to(dtype)
        if not torch.compiler.is_compiling():  # a traced backward may not write to a global (dynamo)
            _HB_CACHE[key] = h
    return h


_SIGNS_CACHE: dict = {}


def _token_signs_on(b: int, device) -> torch.Tensor:
    """:func:`_token_signs` on ``device``, cached (what ey_quantize takes and what ``_token_hadamard`` folds in)."""
    key = (b, device)
    d = _SIGNS_CACHE.get(key)
    if d is None:
        d = _token_signs(b).to(device)
        if not torch.compiler.is_compiling():
            _SIGNS_CACHE[key] = d
    return d


_EYQ_MAX_BLOCK = 256  # ey_quantize's largest token block (kEyMaxBlock)


def _rotate_tokens(y: torch.Tensor, r: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``(I ⊗ R_b) y`` (``transpose``: ``(I ⊗ R_bᵀ) y``, the inverse) for ``y [Mp, C]`` (Mp % b == 0): one batched
    GEMM over the blocks of b tokens, no copies of y. (What halo.linear_backward does in C++; kept for the benches'
    breakdowns.)"""
    b = r.shape[0]
    yb = y.view(-1, b, y.shape[-1])
    rr = r.t() if transpose else r
    return torch.bmm(rr.expand(yb.shape[0], b, b), yb).view(y.shape)


def _token_block(m: int, token_block: int) -> int:
    # smallest power of two >= max(m, 16), capped at token_block: small batches are not padded to a big block
    b = _ALIGN
    while b < m and b < token_block:
        b *= 2
    return b


def _rotation_block(k, rb):
    return rotation_block(k) if rb is None else rb


def _wgrad_mode(wgrad_scale: Optional[str], gdtype: Optional[torch.dtype]) -> str:
    if wgrad_scale is None:
        return "channel" if gdtype == torch.int8 else "tensor"
    if wgrad_scale not in ("tensor", "channel"):
        raise ValueError(f"HaloLinear: wgrad_scale must be 'tensor', 'channel' or None, got {wgrad_scale!r}")
    return wgrad_scale


class _XKey:
    """The tensor a layer was called with (the user's x, before reshape/padding), handed to _HaloLinearFn as a
    plain object so autograd does not treat it as an input: the key of :func:`_input_quant`'s cache."""
    __slots__ = ("x",)

    def __init__(self, x: torch.Tensor):
        self.x = x


def _xkey(x: torch.Tensor) -> Optional[_XKey]:
    # no sharing under torch.compile (traced, no Python state) nor for inference tensors (no version counter:
    # an in-place change inside inference_mode could not be seen)
    return None if torch.compiler.is_compiling() or x.is_inference() else _XKey(x)


class _InputQuantCache:
    """One entry: the last layer input's ``(Q(X H_m), Q(X H_m)ᵀ, scale)``. Sibling layers that read the same tensor
    (q/k/v of an attention block, gate/up of a SwiGLU MLP) quantize it once: a call hits when it gets the very same
    tensor object (held by a weak reference, so a freed tensor whose memory is reused can never match), unmodified
    (same ``_version``), with the same quantization parameters. The entry is dropped when that tensor is freed."""
    __slots__ = ("ref", "version", "key", "value")

    def __init__(self):
        self.clear()

    def clear(self):
        self.ref = self.version = self.key = self.value = None


_XQ_CACHE = _InputQuantCache()


def _drop_input_quant(r):
    if _XQ_CACHE.ref is r:
        _XQ_CACHE.clear()


def _input_quant_key(xkey: Optional[_XKey], x2: torch.Tensor, mp: int, qd, blk: int, want_qt: bool):
    """The cache key of the layer input's quantization (padded to mp rows; blk = 1: no rotation), or None when the
    call has no key (torch.compile, inference tensors)."""
    return None if xkey is None else (qd, blk, want_qt, mp, x2.shape, x2.dtype, x2.device)


def _input_quant_get(xkey: Optional[_XKey], key):
    """``(Q(X H_m), Q(X H_m)ᵀ, scale)`` of :class:`_InputQuantCache` when this call's input hits it, else None. Also
    saves the sibling layers' memory: they save one shared ``Q(X H_m)ᵀ`` for their weight gradients instead of one
    copy each."""
    c = _XQ_CACHE
    if key is None or c.ref is None:
        return None
    x = xkey.x
    if c.ref() is x and c.version == x._version and c.key == key:
        return c.value
    return None


def _input_quant_put(xkey: _XKey, key, value):
    x = xkey.x
    c = _XQ_CACHE
    c.ref, c.version, c.key, c.value = weakref.ref(x, _drop_input_quant), x._version, key, value


_lin_fwd = torch.ops.halo.linear_forward
_lin_bwd = torch.ops.halo.linear_backward


class _HaloLinearFn(torch.autograd.Function):
    """One autograd node per layer call. Inputs: x2 [M, K] (2-D), weight [N, K] (values unread when wq is given),
    bias or None, wq/ws/wqt (pre-quantized weight or None), cfg = (level, qdtype, gdtype, token_block, kb, wgs),
    kb = block of H_m (0 = full length), wgs = scaling of E_Y in the weight-gradient GEMM ("tensor" | "channel"),
    xkey = the caller's input tensor (an _XKey) or None: key of the shared input quantization."""

    @staticmethod
    def forward(ctx, x2, weight, bias, wq, ws, wqt, cfg, xkey=None):
        level, qd, gd, tb, kb, wgs = cfg
        m, k = x2.shape
        need_gw = ctx.needs_input_grad[1]
        need_gx = ctx.needs_input_grad[0]
        # tokens: a multiple of 16 (reduction dim of the weight-gradient GEMM); HALO-2: of the token block b too
        if level == 2:
            b = _token_block(m, tb)
            mp = -(-m // b) * b
        else:
            b = 0
            mp = -(-m // _ALIGN) * _ALIGN if need_gw else m
        # One C++ op quantizes what is missing (the weight unless pre-quantized, the input unless a sibling layer
        # quantized this very tensor already: _InputQuantCache) and runs the forward GEMM (level 0: no rotation).
        blk = 1 if level == 0 else kb
        key = _input_quant_key(xkey, x2, mp, qd, blk, need_gw)
        xq = _input_quant_get(xkey, key)
        qx_in, sx_in = (None, None) if xq is None else (xq[0], xq[2])
        # (the weight's values are not read when it comes pre-quantized: not passed, e.g. an FSDP-gathered subclass)
        y, wq2, ws2, wqt2, qx, qxt, sx = _lin_fwd(x2, weight if wq is None else None, bias, wq, ws, qx_in, sx_in,
                                                  level, qd, mp, kb, need_gx, need_gw)
        if wq is None:
            wq, ws, wqt = wq2, ws2, (wqt2 if need_gx else None)
        if xq is None:
            if key is not None:
                _input_quant_put(xkey, key, (qx, qxt, sx))
        else:
            qx, qxt, sx = xq
        ctx.cfg = (level, gd, b, m, mp, kb, wgs)
        ctx.w_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(qxt if need_gw else None, sx if need_gw else None, wq if need_gx and wqt is None
                              else None, wqt if need_gx else None, ws if need_gx else None)
        return y

    @staticmethod
    def backward(ctx, ey):
        # Unpacked first: under non-reentrant activation checkpointing this access recomputes the forward, which
        # must run with autograd (it records the tensors to save) - not under the guard below.
        saved = ctx.saved_tensors
        if torch.compiler.is_compiling():
            return _HaloLinearFn._backward(ctx, ey, saved)
        # below the Autograd dispatch key: linear_backward has no autograd formula (its results are not
        # differentiable), so the call skips the autograd fallback
        with torch._C._AutoDispatchBelowAutograd():
            return _HaloLinearFn._backward(ctx, ey, saved)

    @staticmethod
    def _backward(ctx, ey, saved):
        level, gd, b, m, mp, kb, wgs = ctx.cfg
        qxt, sx, wq, wqt, ws = saved
        need_gx, need_gw, need_gb = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if need_gx and wqt is None:
            wqt = wq.t().contiguous()
        rot = signs = None
        if level == 2 and need_gx:
            rot = _token_hadamard(b, ey.device, ey.dtype)                    # R_b, H_T = I ⊗ R_bᵀ
            if b <= _EYQ_MAX_BLOCK:
                signs = _token_signs_on(b, ey.device)
        gb_dtype = ctx.bias_dtype if need_gb else None
        # linear_backward (csrc/torch/linear.cpp), per level: the 8-bit copies of E_Y (ey_quantize / hadamard_quantize,
        # each reading E_Y twice), E_X = [Q(E_Y)·Q(W H_m)]·H_mᵀ (level 2: H_T·[Q(H_Tᵀ E_Y)·Q(W H_m)]·H_mᵀ; level 0
        # no rotations) and G = [Q(E_Y)ᵀ·Q(X H_m)]·H_mᵀ with Q(E_Y)ᵀ per channel or per tensor
        gx, gw, gb = _lin_bwd(ey, qxt, sx, wqt, ws, rot, signs, level, gd, b, mp, kb, wgs == "channel", need_gx,
                              need_gw, ctx.w_dtype if need_gw else None, gb_dtype)
        return (gx if need_gx else None, gw if need_gw else None, gb if gb_dtype is not None else None,
                None, None, None, None, None)


def _bf16_linear(x, weight, bias, wq):
    if wq is not None:
        raise RuntimeError("HaloLinear(precision='bf16') cannot use a pre-quantized (halo_qweight) weight")
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def halo_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, level: int = 2,
                qdtype: Optional[torch.dtype] = torch.int8, gdtype: Optional[torch.dtype] = None,
                token_block: int = 256, qweight: Optional[QuantizedWeight] = None,
                rotation_block: Optional[int] = None, wgrad_scale: Optional[str] = None) -> torch.Tensor:
    """Functional HALO linear ``x [..., K] @ weight[N, K]ᵀ + bias``. ``qweight`` (or ``weight.halo_qweight(level,
    precision)``) replaces the quantization of the weight; the weight's values are then never read."""
    if qdtype is None:
        return _bf16_linear(x, weight, bias, qweight)
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if qweight is None:
        wq = ws = wqt = None
    else:
        wq, ws, wqt = qweight
    gd = gdtype or qdtype
    y = _HaloLinearFn.apply(x2, weight, bias, wq, ws, wqt, (level, qdtype, gd, token_block,
                                                       _rotation_block(x.shape[-1], rotation_block),
                                                       _wgrad_mode(wgrad_scale, gd)), _xkey(x))
    return y.view(*x.shape[:-1], y.shape[-1])


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------

class HaloLinear(nn.Linear):
    """Drop-in :class:`torch.nn.Linear` whose three GEMMs run in 8 bits with HALO Hadamard rotations.

    Same parameters and state_dict keys as nn.Linear (checkpoints load both ways). ``level`` 0/1/2 (see the module
    docstring), ``precision`` "int8" | "fp8" (e4m3) | "bf16" (plain nn.Linear math), ``grad_precision`` for E_Y:
    None (= precision) or "e4m3" / "e5m2" with fp8. ``token_block``: order of the block-diagonal token Hadamard
    H_T of level 2 (with fixed random signs per token, see ``_token_hadamard``; tokens are zero-padded internally
    to a multiple of it, capped to the next power of two of the token count). ``wgrad_scale``: scaling of E_Y in the
    weight-gradient GEMM, "tensor" or "channel" (one scale per output channel); None = "channel" for int8
    gradients, "tensor" for fp8 (which keeps a relative precision per element; per channel measured no better,
    though at level 2 it was 1.01-1.17x faster for fp8 layers: notes/halo_linear.md).
    A frozen weight (``requires_grad=False``) is quantized once and cached (re-quantized when its
    ``_version``, device or dtype changes). ``cache_weight=True`` does the same for a trainable weight: its 8-bit
    copies (2 bytes per parameter) are kept between calls and re-made only after the weight changed (an optimizer
    step, a load), so with gradient accumulation the weight is quantized once per optimizer step instead of once
    per micro-batch (what TransformerEngine's ``is_first_microbatch`` does, without the flag). The cache is keyed on
    the parameter's version counter: torch.optim's in-place updates are seen, a write through ``weight.data`` is
    not (call ``invalidate_weight_cache()`` after one). Off by default for the memory. Memory: saves M·K bytes of
    activations per call vs nn.Linear (bf16)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, level: int = 2,
                 precision: str = "int8", grad_precision: Optional[str] = None, device=None, dtype=None,
                 token_block: int = 256, rotation_block: Optional[int] = None,
                 wgrad_scale: Optional[str] = None, cache_weight: bool = False):
        self._qd, self._gd = _check_config(level, precision, grad_precision)
        wgs = _wgrad_mode(wgrad_scale, self._gd)
        rotation_block = _rotation_block(in_features, rotation_block)
        if self._qd is not None:
            why = linear_supported(in_features, out_features, level, rotation_block)
            if why is not None:
                raise ValueError(f"HaloLinear(level={level}, precision={precision!r}): {why}")
        if token_block < _ALIGN or token_block & (token_block - 1):
            raise ValueError(f"HaloLinear: token_block must be a power of two >= {_ALIGN}, got {token_block}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.level, self.precision, self.grad_precision, self.token_block = level, precision, grad_precision, token_block
        self.rotation_block, self.wgrad_scale = rotation_block, wgs
        self._cfg = (level, self._qd, self._gd, token_block, rotation_block, wgs)
        self.cache_weight = bool(cache_weight)
        self._wcache = None  # (key, QuantizedWeight)

    @classmethod
    def from_linear(cls, lin: nn.Linear, level: int = 2, precision: str = "int8",
                    grad_precision: Optional[str] = None, token_block: int = 256,
                    rotation_block: Optional[int] = None, wgrad_scale: Optional[str] = None,
                    cache_weight: bool = False) -> "HaloLinear":
        """A HaloLinear sharing ``lin``'s parameters (no copy)."""
        new = cls.__new__(cls)
        new._qd, new._gd = _check_config(level, precision, grad_precision)
        wgs = _wgrad_mode(wgrad_scale, new._gd)
        rotation_block = _rotation_block(lin.in_features, rotation_block)
        if new._qd is not None:
            why = linear_supported(lin.in_features, lin.out_features, level, rotation_block)
            if why is not None:
                raise ValueError(f"HaloLinear.from_linear(level={level}, precision={precision!r}): {why}")
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.weight = lin.weight
        new.bias = lin.bias
        new.level, new.precision, new.grad_precision, new.token_block = level, precision, grad_precision, token_block
        new.rotation_block, new.wgrad_scale = rotation_block, wgs
        new._cfg = (level, new._qd, new._gd, token_block, rotation_block, wgs)
        new.cache_weight = bool(cache_weight)
        new._wcache = None
        new.train(lin.training)
        return new

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, level={self.level}, precision={self.precision}"
                + (f", grad_precision={self.grad_precision}" if self.grad_precision else "")
                + (f", wgrad_scale={self.wgrad_scale}" if self._qd is not None else "")
                + (", cache_weight=True" if self.cache_weight else ""))

    def invalidate_weight_cache(self) -> None:
        """Drop the cached 8-bit weight (needed only after writing the weight through ``.data``)."""
        self._wcache = None

    def _cached_qweight(self) -> QuantizedWeight:
        w = self.weight
        key = (w._version, w.device, w.dtype, w.data_ptr())
        c = self._wcache
        if c is None or c[0] != key:
            c = (key, quantize_weight(w, self.level, self._qd, want_qt=True, block=self.rotation_block))
            self._wcache = c
        return c[1]

    def qweight(self) -> Optional[QuantizedWeight]:
        """The QuantizedWeight this call uses: from ``weight.halo_qweight`` if present, else the cache of a frozen
        weight (or of any weight with ``cache_weight``), else None (quantized inside the autograd function)."""
        w = self.weight
        hook = getattr(w, "halo_qweight", None)
        if hook is not None and callable(hook):
            return hook(self.level, self.precision)
        # (an inference tensor has no version counter to key the cache on: quantized every call)
        if (not w.requires_grad or self.cache_weight) and not torch.compiler.is_compiling() and not w.is_inference():
            return self._cached_qweight()
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._qd is None:
            return F.linear(x, self.weight, self.bias)
        xkey = _xkey(x)  # the caller's tensor (before an autocast copy): siblings reading it share its quantization
        if torch.is_autocast_enabled(x.device.type):  # like F.linear under autocast: compute in the autocast dtype
            dt = torch.get_autocast_dtype(x.device.type)
            if x.dtype != dt:
                x = x.to(dt)
        qw = self.qweight()
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        if qw is None:
            y = _HaloLinearFn.apply(x2, self.weight, self.bias, None, None, None, self._cfg, xkey)
        else:
            y = _HaloLinearFn.apply(x2, self.weight, self.bias, qw.q, qw.scale, qw.qt, self._cfg, xkey)
        return y.view(*x.shape[:-1], self.out_features)


class HaloLoraLinear(HaloLinear):
    """LoRA on a frozen HALO base: ``y = HALO(x, W) + scaling · B(A(dropout(x)))``.

    The base weight is frozen, kept pre-rotated and pre-quantized (cached, see HaloLinear), its forward and
    input-gradient GEMMs run in 8 bits and nothing of x is saved for it; the adapters ``lora_A [r, K]``,
    ``lora_B [N, r]`` are ordinary (bf16) nn.Linear modules, ``lora_B`` zero-initialised."""

    def __init__(self, in_features: int, out_features: int, r: int = 8, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.0, bias: bool = True, level: int = 2, precision: str = "int8",
                 grad_precision: Optional[str] = None, device=None, dtype=None, token_block: int = 256):
        super().__init__(in_features, out_features, bias=bias, level=level, precision=precision,
                         grad_precision=grad_precision, device=device, dtype=dtype, token_block=token_block)
        self._init_lora(r, lora_alpha, lora_dropout, device, dtype)

    def _init_lora(self, r, lora_alpha, lora_dropout, device, dtype):
        if r <= 0:
            raise ValueError(f"HaloLoraLinear: r must be > 0, got {r}")
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.scaling = r, lora_alpha / r
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

    @classmethod
    def from_linear(cls, lin: nn.Linear, r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                    level: int = 2, precision: str = "int8", grad_precision: Optional[str] = None,
                    token_block: int = 256) -> "HaloLoraLinear":
        new = HaloLinear.from_linear.__func__(cls, lin, level=level, precision=precision,
                                              grad_precision=grad_precision, token_block=token_block)
        new._init_lora(r, lora_alpha, lora_dropout, lin.weight.device, lin.weight.dtype)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


# ----------------------------------------------------------------------------------------------------------------
# Model conversion
# ----------------------------------------------------------------------------------------------------------------

def _default_skip(name: str, mod: nn.Module) -> bool:
    return False


def _is_adapter(name: str) -> bool:
    parts = name.split(".")
    return any(p.startswith(("lora_", "lokr_", "hada_", "oft_", "ia3_")) for p in parts)


def convert(model: nn.Module, level: int = 2, precision: str = "int8", grad_precision: Optional[str] = None,
            skip: Callable[[str, nn.Module], bool] = _default_skip, token_block: int = 256,
            wgrad_scale: Optional[str] = None, cache_weight: bool = False) -> nn.Module:
    """Swap every eligible ``nn.Linear`` of ``model`` for a :class:`HaloLinear` sharing its parameters, in place.

    ``cache_weight``: see :class:`HaloLinear` (8-bit weight copies kept between calls; for gradient accumulation).
    Skipped (one ``logging`` line each on logger ``halo_ext.linear``): ``lm_head``, layers ``skip(name, module)``
    selects, layers with unsupported dims (:func:`linear_supported`). PEFT models work: the frozen ``base_layer`` of
    each peft LoRA layer is converted (8-bit base GEMMs, cached quantized weight), the adapters stay in bf16.
    Returns ``model``."""
    qd, gd = _check_config(level, precision, grad_precision)
    _wgrad_mode(wgrad_scale, gd)
    todo = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:
            continue
        if _is_adapter(name):
            continue  # peft adapter matrices (rank r): left in bf16
        if name.split(".")[-1] == "lm_head" or name.endswith("lm_head.base_layer"):
            log.info("halo_ext.convert: skipping %s (lm_head)", name)
            continue
        if skip(name, mod):
            log.info("halo_ext.convert: skipping %s (skip() said so)", name)
            continue
        if qd is not None:
            why = linear_supported(mod.in_features, mod.out_features, level)
            if why is not None:
                log.info("halo_ext.convert: skipping %s: %s", name, why)
                continue
        todo.append(name)
    for name in todo:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HaloLinear.from_linear(getattr(parent, child), level=level, precision=precision,
                                                      grad_precision=grad_precision, token_block=token_block,
                                                      wgrad_scale=wgrad_scale, cache_weight=cache_weight))
    log.info("halo_ext.convert: %d linear layers converted to HALO-%d %s", len(todo), level, precision)
    return model


def prepare_peft(model: nn.Module, level: int = 2, precision: str = "int8", grad_precision: Optional[str] = None,
                 skip: Callable[[str, nn.Module], bool] = _default_skip, token_block: int = 256,
                 wgrad_scale: Optional[str] = None) -> nn.Module:
    """For a model returned by ``peft.get_peft_model``: converts the frozen base layers of the LoRA layers (and any
    other eligible frozen or trainable nn.Linear, as :func:`convert`). Call it after ``get_peft_model``."""
    return convert(model, level=level, precision=precision, grad_precision=grad_precision, skip=skip,
                   token_block=token_block, wgrad_scale=wgrad_scale)
