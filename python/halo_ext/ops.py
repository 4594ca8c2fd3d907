"""Python entry points of the halo ops (thin wrappers over torch.ops.halo.*, with autograd where it applies)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["hadamard", "quantize", "dequantize", "hadamard_quantize", "qgemm", "hadamard_qgemm"]


def _hadamard_setup_context(ctx, inputs, output):
    x, scale, block, signs, transpose = inputs
    ctx.scale, ctx.block, ctx.transpose = scale, block, transpose
    ctx.save_for_backward(signs if signs is not None else None)


def _hadamard_backward(ctx, grad):
    (signs,) = ctx.saved_tensors
    # y = c (x o s) H  =>  dx = c (dy H^T) o s: the same op with transpose flipped (and vice versa).
    gx = torch.ops.halo.hadamard(grad.contiguous(), ctx.scale, ctx.block, signs, not ctx.transpose)
    return gx, None, None, None, None


torch.library.register_autograd("halo::hadamard", _hadamard_backward, setup_context=_hadamard_setup_context)


def hadamard(x: torch.Tensor, scale: Optional[float] = None, block: int = 0, signs: Optional[torch.Tensor] = None,
             transpose: bool = False) -> torch.Tensor:
    """Hadamard transform along the last dim: ``scale * (x * signs) @ H_n`` (``transpose``: ``scale * (x @ H_n.T) *
    signs``, the exact inverse for the default ``scale = 1/sqrt(n)``).

    ``n`` is ``block`` (block-diagonal transform on contiguous groups of ``block`` elements) or the last dim when
    ``block == 0``. Supported ``n``: powers of two 2..32768 and ``m * 2^p`` for constructible Hadamard orders ``m``
    (see :func:`halo_ext.hadamard_supported`). Differentiable (backward = the transposed transform)."""
    return torch.ops.halo.hadamard(x, scale, block, signs, transpose)


def quantize(x: torch.Tensor, dtype: torch.dtype = torch.int8, granularity: str = "tensor",
             block: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Absmax quantization: returns ``(q, scale)`` with ``x ~= q * scale``; ``granularity`` is ``"tensor"`` (scale
    shape ``[1]``), ``"row"`` (``[..., 1]``) or ``"block"`` (``[..., dim / block]``). Round to nearest even,
    saturating; the scale stays on the device (no host sync)."""
    return torch.ops.halo.quantize(x, dtype, granularity, block)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32, granularity: str = "tensor",
               block: int = 0) -> torch.Tensor:
    """``q * scale`` for the granularity :func:`quantize` used."""
    return torch.ops.halo.dequantize(q, scale, dtype, granularity, block)


def hadamard_quantize(x: torch.Tensor, dtype: torch.dtype = torch.int8, hadamard_scale: Optional[float] = None,
                      block: int = 0, signs: Optional[torch.Tensor] = None, transpose: bool = False,
                      want_q: bool = True, want_qt: bool = False, amax: Optional[torch.Tensor] = None):
    """Fused :func:`hadamard` + per-tensor :func:`quantize`: returns ``(q, qt, scale)``; ``qt`` is the transpose of
    ``q`` viewed as ``[rows, dim]`` (empty unless ``want_qt``); ``q`` is empty unless ``want_q``. ``block=1`` means
    no rotation: a per-tensor quantize that also writes the transposed copy from the same read (bit-identical to
    :func:`quantize`; no signs, no ``hadamard_scale``). ``amax`` (float32 ``[1]``) replaces the absmax reduction."""
    return torch.ops.halo.hadamard_quantize(x, dtype, hadamard_scale, block, signs, transpose, want_q, want_qt, amax)


def qgemm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
          out_dtype: torch.dtype = torch.bfloat16, bias: Optional[torch.Tensor] = None,
          row_hadamard: int = 0) -> torch.Tensor:
    """``(scale_a * a) @ (scale_b * b).T (+ bias)`` for 8-bit ``a [M, K]`` and ``b [N, K]``.

    ``row_hadamard = b > 1`` (a power of two dividing M; no bias) mixes the rows of the product in blocks of b
    before the scales: ``diag(scale_a) (I ⊗ H_b) (a @ b.T) diag(scale_b)`` with H_b the ±1 Sylvester matrix
    (unnormalized). HALO-2 undoes its token rotation this way (signs and 1/sqrt(b) in a per-row scale_a); on
    Hopper, b = 256 with int8 or e4m3 operands and a bfloat16 output runs in the GEMM's epilogue."""
    return torch.ops.halo.qgemm(a, b, scale_a, scale_b, out_dtype, bias, row_hadamard)


def hadamard_qgemm(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype = torch.int8,
                   w_scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   out_dtype: Optional[torch.dtype] = None, block: int = 0,
                   signs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """HALO forward GEMM ``~= x @ w.T (+ bias)``: rotate x and w along K, quantize per tensor, 8-bit GEMM.
    ``w`` may be passed pre-rotated and pre-quantized (8-bit, with ``w_scale``)."""
    return torch.ops.halo.hadamard_qgemm(x, w, dtype, w_scale, bias, out_dtype, block, signs)
