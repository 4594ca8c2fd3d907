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
    with :func:`halo_ext.distributed.all_reduce` (op="avg", async_op=True: on CUDA it runs on a side stream so it
    overlaps the rest of the backward pass; small buckets take the plain all-reduce per the fallback threshold) and
    returns a Future of the bucket."""
    st = state if state is not None else QuantizedHookState()
    buf = bucket.buffer()
    h = all_reduce(buf, op="avg", group=st.group, dtype=st.dtype, block=st.block, path=st.path,
                   hierarchical=st.hierarchical, async_op=True)
    # CUDA: the reduction runs on a side stream (overlapping the rest of the backward pass); the future's value is
    # ready for DDP's stream once wait() has made it wait on that work
    return h.get_future()
