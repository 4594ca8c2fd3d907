"""Fake (meta) implementations of every torch.ops.halo op, so the ops trace under torch.compile / FakeTensor.

They reproduce the output shapes, dtypes and devices of the C++ implementations (csrc/torch/common.cpp);
argument validation stays in C++ and runs on real tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import register_fake


@register_fake("halo::hadamard")
def _hadamard_fake(x, scale=None, block=0, signs=None, transpose=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@register_fake("halo::quantize")
def _quantize_fake(x, dtype, granularity="tensor", block=0):
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    if granularity == "tensor":
        sshape = (1,)
    elif granularity == "row":
        sshape = (*x.shape[:-1], 1)
    else:
        torch._check(block > 0 and x.shape[-1] % block == 0, lambda: "halo.quantize: bad block")
        sshape = (*x.shape[:-1], x.shape[-1] // block)
    return q, torch.empty(sshape, dtype=torch.float32, device=x.device)


@register_fake("halo::dequantize")
def _dequantize_fake(q, scale, dtype=None, granularity="tensor", block=0):
    return torch.empty(q.shape, dtype=dtype or torch.float32, device=q.device)


@register_fake("halo::hadamard_quantize")
def _hadamard_quantize_fake(x, dtype, hadamard_scale=None, block=0, signs=None, transpose=False, want_q=True,
                            want_qt=False, amax=None):
    cols = x.shape[-1]
    rows = x.numel() // cols if cols else 0
    q = torch.empty(x.shape if want_q else (0,), dtype=dtype, device=x.device)
    qt = torch.empty((cols, rows) if want_qt else (0,), dtype=dtype, device=x.device)
    return q, qt, torch.empty((1,), dtype=torch.float32, device=x.device)


@register_fake("halo::ey_quantize")
def _ey_quantize_fake(ey, dtype, block, signs=None, want_rot=True, want_t=True):
    torch._check(ey.dim() == 2, lambda: "halo.ey_quantize: ey must be 2-D")
    rows, cols = ey.shape
    q_rot = torch.empty((rows, cols) if want_rot else (0,), dtype=dtype, device=ey.device)
    qt = torch.empty((cols, rows) if want_t else (0,), dtype=dtype, device=ey.device)
    f32 = dict(dtype=torch.float32, device=ey.device)
    return q_rot, torch.empty((1,), **f32), qt, torch.empty((cols if want_t else 0,), **f32)


@register_fake("halo::qgemm")
def _qgemm_fake(a, b, scale_a, scale_b, out_dtype=None, bias=None, row_hadamard=0):
    torch._check(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1], lambda: "halo.qgemm: bad shapes")
    torch._check(row_hadamard <= 1 or a.shape[0] % row_hadamard == 0,
                 lambda: "halo.qgemm: row_hadamard must divide the rows of a")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype or torch.bfloat16)


@register_fake("halo::hadamard_qgemm")
def _hadamard_qgemm_fake(x, w, dtype, w_scale=None, bias=None, out_dtype: Optional[torch.dtype] = None, block=0,
                         signs=None):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype or x.dtype)


@register_fake("halo::linear_forward")
def _linear_forward_fake(x2, weight, bias, wq, ws, qx, sx, level, qdtype, padded_tokens, rotation_block, want_wqt,
                         want_xqt):
    w = weight if wq is None else wq
    torch._check(x2.dim() == 2 and w.dim() == 2, lambda: "halo.linear_forward: x2 and weight must be 2-D")
    (m, k), n = x2.shape, w.shape[0]
    dev = x2.device
    f32 = dict(dtype=torch.float32, device=dev)
    y = torch.empty((m, n), dtype=x2.dtype, device=dev)
    if wq is None:
        w_out = (torch.empty((n, k), dtype=qdtype, device=dev), torch.empty((1,), **f32),
                 torch.empty((k, n) if want_wqt else (0,), dtype=qdtype, device=dev))
    else:
        w_out = (wq.new_empty((0,)), ws.new_empty((0,)), wq.new_empty((0,)))
    if qx is None:
        x_out = (torch.empty((padded_tokens, k), dtype=qdtype, device=dev),
                 torch.empty((k, padded_tokens) if want_xqt else (0,), dtype=qdtype, device=dev),
                 torch.empty((1,), **f32))
    else:
        x_out = (qx.new_empty((0,)), qx.new_empty((0,)), sx.new_empty((0,)))
    return (y, *w_out, *x_out)


@register_fake("halo::linear_backward")
def _linear_backward_fake(ey, qxt, sx, wqt, ws, token_rot, token_signs, level, gdtype, token_block, padded_tokens,
                          rotation_block, wgrad_per_channel, need_gx, need_gw, gw_dtype=None, gb_dtype=None):
    torch._check(ey.dim() == 2, lambda: "halo.linear_backward: grad_output must be 2-D")
    m, n = ey.shape
    dev = ey.device
    gx = torch.empty((m, wqt.shape[0]) if need_gx else (0,), dtype=ey.dtype, device=dev)
    gw = torch.empty((n, qxt.shape[0]), dtype=gw_dtype or ey.dtype, device=dev) if need_gw else ey.new_empty((0,))
    gb = torch.empty((n,), dtype=gb_dtype, device=dev) if gb_dtype is not None else ey.new_empty((0,))
    return gx, gw, gb


@register_fake("halo::qcomm_pack_into")
def _qcomm_pack_into_fake(x, out, world, chunk, block, dtype, skip=-1):
    return None


@register_fake("halo::qcomm_reduce_into")
def _qcomm_reduce_into_fake(chunks, out, block, dtype, post_scale=1.0, own=None, own_index=-1):
    return None


@register_fake("halo::qcomm_unpack_into")
def _qcomm_unpack_into_fake(chunks, out, chunk, block, dtype):
    return None


@register_fake("halo::qcomm_pack_scatter")
def _qcomm_pack_scatter_fake(x, outs, chunk, block, dtype, skip=-1):
    return None


@register_fake("halo::qcomm_reduce_broadcast")
def _qcomm_reduce_broadcast_fake(chunks, outs, block, dtype, post_scale=1.0, own=None, own_index=-1, deq=None):
    return None


@register_fake("halo::qcomm_reduce_broadcast_unpack")
def _qcomm_reduce_broadcast_unpack_fake(chunks, outs, gathered, flags, peer_flags, epoch, out, chunk, block, dtype,
                                        post_scale, own, rank):
    return None
