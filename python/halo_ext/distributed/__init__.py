"""Quantized collectives for torch.distributed: block-quantized two-shot all-reduce / reduce-scatter (EQuARX-style)
over NCCL/Gloo process groups or peer (symmetric) memory, and a DDP communication hook. See allreduce.py."""
from .allreduce import (DEFAULT_BLOCK, DEFAULT_RS_BLOCK, FALLBACK_BYTES, all_reduce, chunk_elems, error_bound, last_path, pack,
                        packed_chunk_bytes, peer_path_available, reduce_chunks, reduce_scatter, reload_settings,
                        unpack)
from .ddp import QuantizedHookState, ddp_quantized_hook


def fully_shard_halo(model, **kwargs):
    """HQ-FSDP: :func:`halo_ext.fsdp.fully_shard_halo` (FSDP2 with 8-bit weight all-gather and an optional
    block-quantized gradient reduce-scatter)."""
    from ..fsdp import fully_shard_halo as _fsh

    return _fsh(model, **kwargs)


__all__ = [
    "all_reduce", "reduce_scatter", "ddp_quantized_hook", "fully_shard_halo", "QuantizedHookState", "pack", "reduce_chunks", "unpack",
    "chunk_elems", "packed_chunk_bytes", "error_bound", "last_path", "peer_path_available", "DEFAULT_BLOCK",
    "DEFAULT_RS_BLOCK", "FALLBACK_BYTES", "reload_settings",
]
