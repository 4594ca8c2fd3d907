"""DDP communication hook running the block-quantized all-reduce on every gradient bucket."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .allreduce import DEFAULT_BLOCK, all_reduce


@dataclass
class QuantizedHookState:
    """State of :func:`ddp_quantized_hook`: the process group (None: DDP's), code dtype, block, path override."""

    group: Optional[object] = None
    dtype: str = "int8"
    block: int = DEFAULT_BLOCK
    path: Optional[str] = None
    hierarchical: Optional[int] = None


def ddp_quantized_hook(state: Optional[QuantizedHookState], bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """``model.register_comm_hook(QuantizedHookState(), ddp_quantized_hook)``: averages the flat bucket in place
    with :func:`halo_ext.distributed.all_reduce` (op="avg"; small buckets take the plain all-reduce per the
    fallback threshold) and returns a completed Future of the bucket (the work is ordered on the current stream)."""
    st = state if state is not None else QuantizedHookState()
    buf = bucket.buffer()
    all_reduce(buf, op="avg", group=st.group, dtype=st.dtype, block=st.block, path=st.path,
               hierarchical=st.hierarchical)
    fut = torch.futures.Future(devices=[buf.device] if buf.is_cuda else None)
    fut.set_result(buf)
    return fut
