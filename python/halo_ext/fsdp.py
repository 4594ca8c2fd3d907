"""HQ-FSDP: FSDP2 (``torch.distributed.fsdp.fully_shard``) with 8-bit weight all-gather for HALO layers and an
optional block-quantized gradient reduce-scatter.

Only public FSDP2 extension points are used:

* the weights of HALO layers are wrapped in :class:`HaloShardedWeight`, a tensor subclass implementing
  ``fsdp_pre_all_gather`` / ``fsdp_post_all_gather`` (the extension torchao's float8 training uses): each rank
  rotates its row shard along K (HALO levels 1/2; level 0: no rotation), quantizes it to 8 bits with a *global*
  per-tensor scale, FSDP all-gathers the 8-bit rows, and the unsharded parameter the module sees is a
  :class:`HaloGatheredWeight` whose ``halo_qweight(level, precision)`` hands the gathered 8-bit weight straight to
  the layer's GEMMs (no bf16 unsharded copy, no requantization);
* the gradient reduce-scatter is replaced through ``FSDPModule.set_custom_reduce_scatter`` by
  :class:`QuantizedReduceScatter` (block-wise int8/fp8 with one fp32 scale per block, all-to-all, fp32 sum in fixed
  rank order: exactly one quantization per gradient element).

Global scale. The gathered weight must carry ONE per-tensor scale: the backward GEMM ``E_X = E_Y W`` reduces over
the rows of W, so per-shard (= per-row-group) scales could not be applied in that GEMM's epilogue; they would force a
requantization. So every step, a forward pre-hook on the root module (run before FSDP's own root pre-forward)
computes the rotated absmax of every HALO weight shard, and reduces all of them with ONE ``all_reduce(MAX)`` on a
stacked vector. Each shard is then quantized with ``hadamard_quantize(..., amax=global_amax)`` - bitwise the same
8-bit values and scale a single process would produce from the full weight (a Hadamard along K only mixes
elements of one row, and FSDP shards rows). The quantized shard is cached for the step, so the backward re-gather
(``reshard_after_forward=True``) all-gathers the same bytes without requantizing.

See notes/hq_fsdp.md for the design, the byte counts and the limits.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils import _pytree as pytree

from . import ops as _ops

__all__ = [
    "fully_shard_halo", "HaloShardedWeight", "HaloGatheredWeight", "QuantizedReduceScatter", "CommStats",
    "CountingAllGather", "CountingReduceScatter", "instrument_fsdp_comms", "quantized_reduce_scatter",
    "QuantizedWeight",
]

try:  # the agreed interface of the layer (issue 4); a structurally identical fallback until it lands
    from .linear import QuantizedWeight  # type: ignore
except Exception:  # pragma: no cover - depends on the layer being present
    class QuantizedWeight(NamedTuple):
        q: torch.Tensor
        scale: torch.Tensor
        qt: Optional[torch.Tensor]


_PRECISIONS = {
    "int8": torch.int8,
    "fp8": torch.float8_e4m3fn,
    "e4m3": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
_MIN_AMAX = 1e-30  # kMinAmax of the kernels (csrc/kernels/hadamard.h)


def _qdtype(precision) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        if precision not in _QMAX:
            raise ValueError(f"halo_ext.fsdp: unsupported weight dtype {precision} (int8 or float8_e4m3fn)")
        return precision
    p = str(precision).lower()
    if p not in _PRECISIONS:
        raise ValueError(f"halo_ext.fsdp: unsupported precision {precision!r}; use 'int8' or 'fp8' (e4m3)")
    return _PRECISIONS[p]


def _rotated(level) -> bool:
    lv = int(level)
    if lv not in (0, 1, 2):
        raise ValueError(f"halo_ext.fsdp: HALO level must be 0, 1 or 2, got {level!r}")
    return lv >= 1


# ----------------------------------------------------------------------------------------------------------------
# shared state and byte accounting
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CommStats:
    """Bytes this rank sends, per collective kind (link payload of the standard ring/pairwise algorithms:
    all-gather ``(W-1) * input``, reduce-scatter ``(W-1)/W * input``, all-to-all ``(W-1)/W * input``).
    ``calls`` counts collectives. ``reset()`` between steps."""
    sent: Dict[str, int] = field(default_factory=dict)
    calls: Dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: float) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + int(round(nbytes))
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def total(self) -> int:
        return sum(self.sent.values())

    def reset(self) -> None:
        self.sent.clear()
        self.calls.clear()


class _HQState:
    """Per-model state shared by all HALO weight shards of one :func:`fully_shard_halo` call."""

    def __init__(self, group, stats: Optional[CommStats]):
        self.group = group
        self.stats = stats
        self.generation = 0
        self.modules: List[nn.Module] = []  # HALO layers whose weight is wrapped


@dataclass
class _Cfg:
    """Per-parameter config and step cache, shared by every wrapper FSDP/DTensor derive from one weight (shard
    views, aliases from ``to_local()``): the amax of this step and the quantized shard."""
    level: int
    precision: Any
    state: Optional[_HQState]
    block: int = 0  # H_m block of the layer (HaloLinear.rotation_block; 0 = full K)
    amax: Optional[torch.Tensor] = None
    amax_gen: int = -1
    q: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    q_key: Any = None


# ----------------------------------------------------------------------------------------------------------------
# quantization of a (row-sharded) weight
# ----------------------------------------------------------------------------------------------------------------
def _shard_amax(w: torch.Tensor, rotate: bool, block: int = 0) -> torch.Tensor:
    """absmax of ``w H`` (rotate; H block-diagonal of order ``block``, 0 = full K) or ``w``, as a 0-d fp32 tensor
    (0 for an empty shard). No host sync."""
    if w.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=w.device)
    x = _ops.hadamard(w.detach(), block=block) if rotate else w.detach()
    return torch.linalg.vector_norm(x, ord=math.inf, dtype=torch.float32)


def _quantize_rows(w: torch.Tensor, rotate: bool, qdtype: torch.dtype, amax: torch.Tensor,
                   block: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """8-bit ``Q(w H)`` / ``Q(w)`` with the given global amax (fp32 [1]); returns ``(q, scale[1])``."""
    w = w.detach()
    if rotate:
        q, _, s = _ops.hadamard_quantize(w.contiguous(), qdtype, block=block, amax=amax)
        return q, s
    qmax = _QMAX[qdtype]
    a = amax.clamp_min(_MIN_AMAX)
    scale = a / qmax
    inv = qmax / a
    v = (w.float() * inv).clamp_(-qmax, qmax)
    if qdtype == torch.int8:
        v = v.round_()
    return v.to(qdtype), scale


# ----------------------------------------------------------------------------------------------------------------
# the sharded weight subclass (lives inside FSDP's DTensor parameter)
# ----------------------------------------------------------------------------------------------------------------
_aten = torch.ops.aten
_PRESERVE = {
    _aten.empty_like.default, _aten.new_zeros.default, _aten.new_empty.default, _aten.new_empty_strided.default,
    _aten.slice.Tensor, _aten.view.default, _aten.as_strided.default, _aten._to_copy.default,
    _aten._pin_memory.default, _aten.split.Tensor, _aten.split_with_sizes.default, _aten.clone.default,
    _aten.detach.default, _aten.alias.default, _aten.narrow.default, _aten.chunk.default,
    _aten._unsafe_view.default, _aten.zeros_like.default,
}


class HaloShardedWeight(torch.Tensor):
    """A HALO layer's weight (full before ``fully_shard``, a row shard after): behaves like the plain tensor it
    wraps (optimizers, state_dict, DCP see ordinary values); FSDP all-gathers it as 8 bits."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, cfg: _Cfg):
        return torch.Tensor._make_wrapper_subclass(
            cls, data.size(), strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            layout=data.layout, device=data.device, requires_grad=data.requires_grad)

    def __init__(self, data: torch.Tensor, cfg: _Cfg):
        self._data = data
        self._cfg = cfg

    def __repr__(self):
        return f"HaloShardedWeight(level={self._cfg.level}, precision={self._cfg.precision}, {self._data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cfg = None

        def unwrap(t):
            nonlocal cfg
            if cfg is None:
                cfg = t._cfg
            return t._data

        uargs, ukwargs = pytree.tree_map_only(HaloShardedWeight, unwrap, (args, kwargs))
        out = func(*uargs, **ukwargs)
        if func._schema.is_mutable and len(args) > 0 and isinstance(args[0], HaloShardedWeight):
            return args[0]  # in-place: the wrapper (its data changed in place)
        if func in _PRESERVE:
            return pytree.tree_map_only(torch.Tensor, lambda x: HaloShardedWeight(x, cfg), out)
        return out

    # the wrapped tensor is the only inner tensor (torch.compile / DTensor metadata)
    def __tensor_flatten__(self):
        return ["_data"], (self._cfg,)

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return HaloShardedWeight(inner["_data"], meta[0])

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __reduce_ex__(self, proto):
        # torch.save / DCP write the plain values: checkpoints load into HQ-FSDP, plain FSDP2 or unsharded models
        return self._data.__reduce_ex__(proto)

    # -- FSDP2 extension -----------------------------------------------------------------------------------------
    def _level_precision(self, module) -> Tuple[int, torch.dtype]:
        level = getattr(module, "level", self._cfg.level) if module is not None else self._cfg.level
        precision = getattr(module, "precision", self._cfg.precision) if module is not None else self._cfg.precision
        return int(level), _qdtype(precision)

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        level, qdtype = self._level_precision(module)
        rotate = _rotated(level)
        state = self._cfg.state
        gen = state.generation if state is not None else 0
        cfg = self._cfg
        block = int(getattr(module, "rotation_block", cfg.block) or 0) if module is not None else cfg.block
        key = (gen, level, qdtype, block, self._data._version, self._data.data_ptr())
        if cfg.q is None or cfg.q_key != key:
            if cfg.amax is None or cfg.amax_gen != gen:
                # No root pre-forward ran this generation (e.g. a block called directly): reduce this tensor's
                # amax alone. Decided on the generation only, so all ranks take the same branch.
                amax = _shard_amax(self._data, rotate, block).reshape(1)
                group = state.group if state is not None else mesh.get_group()
                dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
                if state is not None and state.stats is not None:
                    state.stats.add("amax_fallback_all_reduce", 4 * 2 * (mesh.size() - 1) / mesh.size())
                cfg.amax, cfg.amax_gen = amax, gen
            cfg.q = _quantize_rows(self._data, rotate, qdtype, cfg.amax, block)
            cfg.q_key = key
        q, scale = cfg.q
        world = mesh.size()
        padded_rows = -(-int(outer_size[0]) // world)
        if q.size(0) != padded_rows:  # uneven sharding: FSDP wants the padded shard size
            qp = q.new_zeros((padded_rows,) + tuple(q.shape[1:]))
            qp[: q.size(0)].copy_(q)
            q = qp
        return (q,), (scale, rotate, level, qdtype, int(outer_size[0]), block)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        (qfull,) = all_gather_outputs
        scale, rotate, level, qdtype, n_rows, block = metadata
        q = qfull[:n_rows]
        if out is not None:
            inner = out
            if not isinstance(inner, HaloGatheredWeight):  # DTensor-wrapped (not produced for 1-D FSDP)
                inner = getattr(out, "_local_tensor", out)
            if not isinstance(inner, HaloGatheredWeight):
                raise RuntimeError(f"halo_ext.fsdp: unexpected unsharded parameter type {type(out)}")
            inner._scale = scale
            inner._q = q
            inner._level, inner._qdtype, inner._rotate, inner._block = level, qdtype, rotate, block
            return None
        return HaloGatheredWeight(q, scale, level, qdtype, rotate, param_dtype, block), ()


# ----------------------------------------------------------------------------------------------------------------
# the unsharded (gathered) weight the module sees during forward/backward
# ----------------------------------------------------------------------------------------------------------------
DEQUANT_FALLBACK_OPS: Dict[str, int] = {}  # op name -> count of uses of a gathered weight outside HALO layers
_ALIAS_OPS = {_aten.detach.default, _aten.alias.default, _aten.view.default, _aten.as_strided.default,
              _aten._unsafe_view.default}


class HaloGatheredWeight(torch.Tensor):
    """The all-gathered 8-bit weight. ``halo_qweight(level, precision)`` returns it as a
    :class:`QuantizedWeight` for HALO layers; any other use sees the dequantized (un-rotated) values."""

    @staticmethod
    def __new__(cls, q, scale, level, qdtype, rotate, dtype, block=0):
        n, k = q.shape
        return torch.Tensor._make_wrapper_subclass(cls, (n, k), strides=(k, 1), dtype=dtype, device=q.device,
                                                   requires_grad=False)

    def __init__(self, q, scale, level, qdtype, rotate, dtype, block=0):
        self._q, self._scale, self._level, self._qdtype, self._rotate = q, scale, level, qdtype, rotate
        self._block = block

    def __repr__(self):
        return f"HaloGatheredWeight(shape={tuple(self.shape)}, level={self._level}, q={self._qdtype})"

    def halo_qweight(self, level, precision) -> Optional[QuantizedWeight]:
        """The gathered weight if it was quantized the way the layer asks (rotation per level, dtype), else None
        (the layer then quantizes the dequantized values itself)."""
        try:
            if _rotated(level) != self._rotate or _qdtype(precision) != self._qdtype:
                return None
        except ValueError:
            return None
        return QuantizedWeight(self._q, self._scale, None)

    def dequantize(self) -> torch.Tensor:
        w = self._q.float() * self._scale
        if self._rotate:
            w = _ops.hadamard(w, block=self._block, transpose=True)
        return w.to(self.dtype)

    def _alias(self):
        return HaloGatheredWeight(self._q, self._scale, self._level, self._qdtype, self._rotate, self.dtype,
                                  self._block)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ALIAS_OPS and isinstance(args[0], HaloGatheredWeight):
            src = args[0]
            size = args[1] if len(args) > 1 else None
            if func in (_aten.detach.default, _aten.alias.default) or (
                    size is not None and tuple(size) == tuple(src.shape)):
                return src._alias()
        if func._schema.is_mutable and len(args) > 0 and isinstance(args[0], HaloGatheredWeight):
            raise RuntimeError(f"halo_ext.fsdp: in-place {func} on an all-gathered 8-bit weight is not supported "
                               "(update the sharded parameter instead)")
        name = str(func)
        if name not in DEQUANT_FALLBACK_OPS:
            warnings.warn(f"halo_ext.fsdp: {name} on an all-gathered 8-bit weight: computing on its dequantized "
                          "values (only HALO layers consume it in 8 bits)", stacklevel=2)
        DEQUANT_FALLBACK_OPS[name] = DEQUANT_FALLBACK_OPS.get(name, 0) + 1
        uargs, ukwargs = pytree.tree_map_only(HaloGatheredWeight, lambda t: t.dequantize(), (args, kwargs))
        return func(*uargs, **ukwargs)

    __torch_function__ = torch._C._disabled_torch_function_impl


# ----------------------------------------------------------------------------------------------------------------
# block-quantized two-shot reduce-scatter
# ----------------------------------------------------------------------------------------------------------------
def _quantize_blocks(x: torch.Tensor, qdtype: torch.dtype, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax quantization of ``x [rows, nb*block]`` (fp32): ``(q [rows, nb*block], scale [rows, nb])``."""
    try:
        return _ops.quantize(x, qdtype, "block", block)
    except Exception:  # pragma: no cover - torch fallback (same rounding: RNE, saturating)
        r, n = x.shape
        xb = x.view(r, n // block, block)
        qmax = _QMAX[qdtype]
        a = xb.abs().amax(-1, keepdim=True).clamp_min(_MIN_AMAX)
        v = (xb * (qmax / a)).clamp_(-qmax, qmax)
        if qdtype == torch.int8:
            v = v.round_()
        return v.to(qdtype).view(r, n), (a / qmax).view(r, n // block)


def fused_reduce_scatter(output: torch.Tensor, input: torch.Tensor, group=None, op: str = "sum",
                         dtype="int8", block: int = 256, stats: Optional[CommStats] = None) -> None:
    """The same reduce-scatter through :func:`halo_ext.distributed.reduce_scatter` (fused pack / dequantize-sum
    kernels on CUDA, one all_to_all of the packed chunks over the process group): the default of
    :class:`QuantizedReduceScatter` on CUDA; :func:`quantized_reduce_scatter` (torch ops) elsewhere."""
    from .distributed import packed_chunk_bytes, reduce_scatter

    reduce_scatter(output, input, op=op, group=group, dtype=dtype, block=block, path="nccl")
    if stats is not None:
        world = dist.get_world_size(group)
        stats.add("reduce_scatter", packed_chunk_bytes(output.numel(), block) * (world - 1))


def quantized_reduce_scatter(output: torch.Tensor, input: torch.Tensor, group=None, op: str = "sum",
                             dtype="int8", block: int = 256, stats: Optional[CommStats] = None) -> None:
    """Reduce-scatter of the flat ``input [W * n]`` into ``output [n]`` (rank r gets elements ``[r*n, (r+1)*n)``
    summed, or averaged for ``op="avg"``), moving 8-bit blocks: each rank quantizes the W chunks of its input
    block-wise (``block`` elements, one fp32 scale per block, data and scales packed into one uint8 buffer),
    one ``all_to_all_single``, then dequantizes the W incoming chunks and sums them in fp32 in fixed rank order.
    One quantization per element: ``|err| <= sum_r absmax_r(block) / 254`` (int8; fp8 e4m3: ``2^-4`` relative
    per term). Synchronous on the current stream (FSDP calls it on its reduce-scatter stream)."""
    if op not in ("sum", "avg"):
        raise ValueError(f"quantized_reduce_scatter: op must be 'sum' or 'avg', got {op!r}")
    qdtype = _qdtype(dtype)
    world = dist.get_world_size(group)
    n = output.numel()
    if input.numel() != world * n:
        raise ValueError(f"quantized_reduce_scatter: input has {input.numel()} elements, expected {world} x {n}")
    if n == 0:
        return
    nb = -(-n // block)
    x = torch.zeros((world, nb * block), dtype=torch.float32, device=input.device)
    x[:, :n].copy_(input.view(world, n))
    q, s = _quantize_blocks(x, qdtype, block)
    qbytes, sbytes = nb * block, nb * 4
    send = torch.empty((world, qbytes + sbytes), dtype=torch.uint8, device=input.device)
    send[:, :qbytes].copy_(q.view(torch.uint8))
    send[:, qbytes:].copy_(s.float().contiguous().view(torch.uint8))
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    if stats is not None:
        stats.add("reduce_scatter", send.numel() * (world - 1) / world)
    rq = recv[:, :qbytes].contiguous().view(qdtype).view(world, nb, block)
    rs = recv[:, qbytes:].contiguous().view(torch.float32).view(world, nb, 1)
    acc = rq[0].float() * rs[0]
    for r in range(1, world):  # fixed rank order: bitwise-identical results on every rank and every run
        acc.add_(rq[r].float() * rs[r])
    acc = acc.view(-1)[:n]
    if op == "avg":
        acc.div_(world)
    output.copy_(acc.view_as(output))


# FSDP2's comm interfaces (AllGather / ReduceScatter of set_custom_all_gather / set_custom_reduce_scatter) are
# duck-typed here: ``allocate(size, *, dtype, device)`` and ``__call__``; their ABCs live in a private module.
_AllGatherBase = object
_ReduceScatterBase = object


def _op_name(op) -> str:
    if op == dist.ReduceOp.SUM:
        return "sum"
    if op == dist.ReduceOp.AVG:
        return "avg"
    raise NotImplementedError(f"halo_ext.fsdp: reduce op {op} is not supported by the quantized reduce-scatter "
                              "(SUM and AVG are; fully_shard_halo forces SUM where torch allows)")


class _AllocMixin:
    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)


class QuantizedReduceScatter(_AllocMixin, _ReduceScatterBase):
    """FSDP2 custom reduce-scatter (``FSDPModule.set_custom_reduce_scatter``): :func:`quantized_reduce_scatter`
    (or ``fn`` with the same signature, e.g. issue 5's ``halo_ext.distributed.reduce_scatter`` once merged)."""

    def __init__(self, dtype="int8", block: int = 256, stats: Optional[CommStats] = None,
                 fn: Optional[Callable] = None):
        _qdtype(dtype)
        if block <= 0:
            raise ValueError("QuantizedReduceScatter: block must be positive")
        self.dtype, self.block, self.stats, self.fn = dtype, block, stats, fn

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        fn = self.fn or (fused_reduce_scatter if input_tensor.is_cuda else quantized_reduce_scatter)
        fn(output_tensor, input_tensor, group=group, op=_op_name(op), dtype=self.dtype, block=self.block,
           stats=self.stats)
        return None


class CountingAllGather(_AllocMixin, _AllGatherBase):
    """FSDP2's default all-gather that also counts the bytes this rank sends."""

    def __init__(self, stats: CommStats):
        self.stats = stats

    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        w = dist.get_world_size(group)
        self.stats.add("all_gather", input_tensor.numel() * input_tensor.element_size() * (w - 1))
        ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # 2.13 renamed it
        return ag(output_tensor, input_tensor, group=group, async_op=async_op)


class CountingReduceScatter(_AllocMixin, _ReduceScatterBase):
    """FSDP2's default reduce-scatter that also counts the bytes this rank sends."""

    def __init__(self, stats: CommStats):
        self.stats = stats

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        w = dist.get_world_size(group)
        self.stats.add("reduce_scatter", input_tensor.numel() * input_tensor.element_size() * (w - 1) / w)
        rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return rs(output_tensor, input_tensor, op=op, group=group, async_op=async_op)


def _fsdp_modules(model: nn.Module):
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def instrument_fsdp_comms(model: nn.Module, stats: CommStats, all_gather: bool = True,
                          reduce_scatter: bool = True) -> None:
    """Count the bytes of every FSDP module's all-gather / reduce-scatter in ``stats`` (any FSDP2 model, e.g. the
    bf16 baseline). Uses ``set_custom_all_gather`` / ``set_custom_reduce_scatter``."""
    for m in _fsdp_modules(model):
        if all_gather:
            m.set_custom_all_gather(CountingAllGather(stats))
        if reduce_scatter:
            m.set_custom_reduce_scatter(CountingReduceScatter(stats))


# ----------------------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------------------
def _is_halo_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear) and hasattr(m, "level") and hasattr(m, "precision"):
        return True
    try:
        from .linear import HaloLinear  # type: ignore
        return isinstance(m, HaloLinear)
    except Exception:
        return False


def _default_blocks(model: nn.Module) -> List[nn.Module]:
    """Transformer blocks: the children of the first ``nn.ModuleList`` that holds HALO layers (HF: model.layers)."""
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and any(_is_halo_layer(x) for x in m.modules()):
            return list(m)
    return []


def _make_root_hook(state: _HQState):
    def hook(module, args):
        state.generation += 1
        entries = []
        for m in state.modules:
            p = m.weight
            with torch.no_grad():
                local = p.to_local() if hasattr(p, "to_local") else p
            if not isinstance(local, HaloShardedWeight):
                continue  # unsharded (e.g. reshard_after_forward=False between forwards): keep last amax
            level = int(getattr(m, "level", local._cfg.level))
            block = int(getattr(m, "rotation_block", local._cfg.block) or 0)
            entries.append((local, _rotated(level), block))
        if not entries:
            return None
        with torch.no_grad():
            amax = torch.stack([_shard_amax(t._data, rot, blk) for t, rot, blk in entries])
            if dist.get_world_size(state.group) > 1:
                dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=state.group)
                if state.stats is not None:  # ring all-reduce: 2 (W-1)/W of the buffer
                    w = dist.get_world_size(state.group)
                    state.stats.add("amax_all_reduce", amax.numel() * 4 * 2 * (w - 1) / w)
        for i, (t, _, _) in enumerate(entries):
            t._cfg.amax, t._cfg.amax_gen = amax[i: i + 1], state.generation
        return None
    return hook


def fully_shard_halo(model: nn.Module, *, mesh=None, mp_policy=None, reshard_after_forward: bool = True,
                     quantized_allgather: bool = True, quantized_reduce_scatter: bool = False,
                     reduce_scatter_dtype="int8", reduce_scatter_block: int = 256,
                     level: Optional[int] = None, precision: Optional[str] = None,
                     blocks: Optional[List[nn.Module]] = None, comm_stats: Optional[CommStats] = None,
                     reduce_scatter_fn: Optional[Callable] = None, **fully_shard_kwargs) -> nn.Module:
    """Shard ``model`` with FSDP2: ``fully_shard`` on every transformer block and on the root.

    * ``level``/``precision`` given: ``halo_ext.convert(model, level=..., precision=...)`` first; otherwise the
      model must already hold HALO layers (modules with ``level``/``precision`` attributes, e.g. HaloLinear).
    * ``quantized_allgather``: HALO weights are all-gathered in 8 bits (see the module docstring); other
      parameters (norms, embeddings, lm_head) are gathered by FSDP as usual (``mp_policy.param_dtype``).
    * ``quantized_reduce_scatter``: gradients are reduce-scattered by :class:`QuantizedReduceScatter`
      (``reduce_scatter_dtype`` int8/fp8, ``reduce_scatter_block`` elements per fp32 scale).
    * ``blocks``: the modules to shard individually (default: the children of the model's block ``ModuleList``).
    * ``comm_stats``: a :class:`CommStats` that counts the bytes each rank sends.

    Needs an initialized process group. Returns the model (sharded in place)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fully_shard_halo: torch.distributed is not initialized (init_process_group first)")
    if level is not None or precision is not None:
        from . import convert  # type: ignore  # issue 4's model conversion
        kw = {}
        if level is not None:
            kw["level"] = level
        if precision is not None:
            kw["precision"] = precision
        convert(model, **kw)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if mesh is None:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if mesh.ndim != 1:
        raise NotImplementedError("fully_shard_halo: only a 1-D (pure FSDP) mesh is supported")
    if isinstance(reshard_after_forward, int) and not isinstance(reshard_after_forward, bool) \
            and quantized_allgather:
        raise ValueError("fully_shard_halo: reshard_after_forward must be a bool with the 8-bit all-gather "
                         "(FSDP2 tensor-subclass extensions do not support resharding to a smaller world)")
    state = _HQState(mesh.get_group(), comm_stats)
    if quantized_allgather:
        for m in model.modules():
            if not _is_halo_layer(m):
                continue
            w = m.weight
            if isinstance(w, HaloShardedWeight) or hasattr(w, "to_local"):
                raise RuntimeError("fully_shard_halo: the model is already sharded or wrapped")
            if w.dim() != 2:
                raise ValueError(f"fully_shard_halo: HALO weight must be 2-D, got {tuple(w.shape)}")
            prec = getattr(m, "precision")
            if str(prec).lower() not in _PRECISIONS and not isinstance(prec, torch.dtype):
                continue  # e.g. HaloLinear(precision="bf16"): not an 8-bit layer, gathered by FSDP as usual
            cfg = _Cfg(int(getattr(m, "level")), prec, state, int(getattr(m, "rotation_block", 0) or 0))
            _rotated(cfg.level), _qdtype(cfg.precision)  # validate early
            m.weight = nn.Parameter(HaloShardedWeight(w.data, cfg), requires_grad=w.requires_grad)
            state.modules.append(m)
    kw = dict(mesh=mesh, reshard_after_forward=reshard_after_forward, **fully_shard_kwargs)
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    blocks = _default_blocks(model) if blocks is None else blocks
    for b in blocks:
        fully_shard(b, **kw)
    fully_shard(model, **kw)
    if quantized_allgather and state.modules:
        model.register_forward_pre_hook(_make_root_hook(state), prepend=True)
    fsdp_mods = _fsdp_modules(model)
    if quantized_reduce_scatter and not all(hasattr(m, "set_custom_reduce_scatter") for m in fsdp_mods):
        raise RuntimeError("fully_shard_halo(quantized_reduce_scatter=True) needs FSDPModule.set_custom_reduce_scatter "
                           f"(torch >= 2.8); this torch is {torch.__version__}")
    for m in fsdp_mods:
        if comm_stats is not None:
            if hasattr(m, "set_custom_all_gather"):
                m.set_custom_all_gather(CountingAllGather(comm_stats))
            else:  # pragma: no cover - older torch: all-gather bytes are not counted
                warnings.warn("fully_shard_halo: FSDPModule.set_custom_all_gather missing: all-gather bytes not counted")
        if quantized_reduce_scatter:
            if hasattr(m, "set_force_sum_reduction_for_comms"):
                m.set_force_sum_reduction_for_comms(True)  # SUM + FSDP's own divide: no PREMUL_SUM op objects
            m.set_custom_reduce_scatter(QuantizedReduceScatter(reduce_scatter_dtype, reduce_scatter_block,
                                                               comm_stats, reduce_scatter_fn))
        elif comm_stats is not None and hasattr(m, "set_custom_reduce_scatter"):
            m.set_custom_reduce_scatter(CountingReduceScatter(comm_stats))
    model._halo_fsdp_state = state  # for introspection (generation, wrapped modules)
    return model
