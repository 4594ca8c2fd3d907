"""Block-quantized two-shot all-reduce and reduce-scatter (EQuARX-style) over torch.distributed.

Algorithm (at most two quantizations per element, the second shared by every rank so all ranks get
bitwise-identical results): the flat tensor is split into ``world`` chunks of whole blocks of ``block`` elements;
every block of the chunks a rank sends is quantized to 8 bits with one float32 scale (``scale = max(absmax, 1e-30)
/ qmax``), codes and scales packed in one uint8 buffer per chunk (``torch.ops.halo.qcomm_pack_into``; rank r does
not quantize its own chunk r, ``skip=r``); an all-to-all sends chunk c to rank c; rank r dequantizes the ``world -
1`` incoming copies of its chunk, adds its own chunk r unquantized straight from its input (``own=``), sums in
float32 in rank order and requantizes (``qcomm_reduce_into``); an all-gather of the packed reduced chunks follows,
and every rank dequantizes all of them (its own from the requantized copy too, ``qcomm_unpack_into``, so all ranks
hold the same bits). The bytes sent are those of quantizing every chunk (the own slot of the all-to-all buffer is
sent unfilled to itself and never read).

Error bound (int8, qmax = 127, round to nearest: each quantization errs by at most scale / 2 = absmax / 254): for
every element of a block of chunk c (owned by rank c), with absmax_r the absmax of that block on rank r and
absmax_out the absmax of the reduced block (after the 1/world of AVG),

    |y_hat - y| <= (sum_{r != c} absmax_r + absmax_out) / 254     (times 1/world on the first term for AVG)

plus float32 rounding of the sum (relative 2^-24 per addition and for the post scale; :func:`error_bound` adds
world * 2^-23 * sum_r absmax_r for it). The owner's term drops out of the sum: it enters unquantized. For Gaussian
data (every rank's block absmax about a, quantization error uniform with standard deviation q = a / (127 sqrt 12)
per quantization, the reduced block's absmax about sqrt(world) a) the relative L2 error is sqrt((2 world - 1) /
world) q instead of sqrt(2) q when every contribution is quantized: x 0.87 at world 2, 0.94 at 4, 0.97 at 8.
For float8_e4m3fn (3 mantissa bits, relative spacing 2^-3 of the value's binade, so half a spacing <= 2^-4 |v|
for normal codes, and subnormal codes step by 2^-9 of qmax-scaled units) the analogue is |y_hat - y| <=
sum_{r != c} (|x_r| / 16 + absmax_r * 2^-10 / 448) + |y| / 16 + absmax_out * 2^-10 / 448, i.e. a relative error per
element rather than per block.

Paths (``path=`` or the environment variable ``HALO_AR_PATH``: ``auto`` | ``nccl`` | ``peer`` | ``fallback``):

- ``nccl``: ``all_to_all_single`` (``HALO_AR_EXCHANGE=allgather``: at two ranks an all-gather of the peer's chunk) +
  ``all_gather_into_tensor`` of uint8 buffers through the process group (NCCL, Gloo, anything). Messages larger
  than ``HALO_AR_PIECE_BYTES`` (default 128 MiB of input) are split into pieces that are software-pipelined:
  every collective is issued with ``async_op=True`` and waited by stream dependency (``work.wait()``, no host
  synchronization), so the quantize/reduce/dequantize kernels of one piece overlap the transport of others on the
  process group's communication stream. ``HALO_AR_GRAPH=1``: the pipeline is replayed as a CUDA graph.
- ``peer``: the same algorithm over peer (NVLink) memory, a ``torch.distributed._symmetric_memory`` workspace:
  the pack kernel quantizes and stores every chunk straight into its owner's buffer, device-side barrier (signal
  pads, acquire/release; no multicast), the fused dequantize-sum-requantize kernel stores the reduced chunk into
  every peer's buffer and its dequantized values into the owner's own part of the result and, in the same kernel,
  (``HALO_AR_FUSED=1``) every rank dequantizes the other ranks' reduced chunks from its local buffer tile by tile as
  their flags arrive; by default a barrier and a separate unpack kernel instead. Chosen by
  ``auto`` when every rank of the group is on this host, the tensor is on CUDA and symmetric memory works.
- ``fallback``: plain ``dist.all_reduce`` (used by ``auto`` below the per-world-size threshold
  ``FALLBACK_BYTES`` / ``HALO_AR_FALLBACK_BYTES``, where the quantization cannot pay off).
- ``hierarchical=k`` (k ranks per node, the default world group only): intra-node reduce-scatter in the input
  dtype, the quantized two-shot all-reduce among ranks of the same local index, intra-node all-gather.
"""
from __future__ import annotations

import math
import os
import socket
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

import halo_ext  # noqa: F401  (registers torch.ops.halo)

__all__ = [
    "all_reduce", "reduce_scatter", "chunk_elems", "packed_chunk_bytes", "pack", "reduce_chunks", "unpack",
    "DEFAULT_BLOCK", "DEFAULT_RS_BLOCK", "FALLBACK_BYTES", "error_bound", "reload_settings",
]

#: Default quantization block of all_reduce (elements per fp32 scale). 64: relative L2 error 0.75% on Gaussian data
#: at 2 ranks (0.87% at 256: two quantizations per element; notes/allreduce.md), payload ratio 2/(1+4/64) = 1.88x
#: vs bf16 (1.97x at 256). Since the kernels map 4-8 lanes to a block of 64 (16 or 8 elements per lane), B = 64
#: runs within a few percent of B = 256 on the peer path (bench/allreduce_bench.py sweeps 64..512).
DEFAULT_BLOCK = 64

#: Default block of reduce_scatter (one quantization per element, relerr 0.49% at 256 and 2 ranks; HQ-FSDP's
#: gradient reduce-scatter passes its own block, 256).
DEFAULT_RS_BLOCK = 256

#: Input bytes below which ``auto`` uses plain dist.all_reduce, per world size (others: the nearest smaller key).
#: World 2: measured on 2x H200 (bench/allreduce_bench.py, 2026-11-23, three runs): small peer all-reduces are
#: host-bound (~80 us of host time per call), so the crossover depends on the host: the peer path won by >= 10%
#: from 4 MB on one machine (1.27x at 4 MB) and only from 16 MB on another (0.56x / 0.67x at 4 / 8 MB, 1.54x at
#: 16). 16 MiB never loses on either. Worlds 4 and 8 are not measured (no such machine here): scaled guesses.
FALLBACK_BYTES: Dict[int, int] = {2: 16 << 20, 4: 32 << 20, 8: 64 << 20}

_QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn,
            torch.int8: torch.int8, torch.float8_e4m3fn: torch.float8_e4m3fn}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# Layout and the three ops
# ---------------------------------------------------------------------------------------------------------------

def _qdtype(dtype) -> torch.dtype:
    if dtype not in _QDTYPES:
        raise ValueError(f"halo_ext.distributed: dtype must be 'int8' or 'fp8' (float8_e4m3fn), got {dtype!r}")
    return _QDTYPES[dtype]


def _check_block(block: int) -> int:
    block = int(block)
    if block < 32 or block > 1024 or block & (block - 1):
        raise ValueError(f"halo_ext.distributed: block must be a power of two in [32, 1024], got {block}")
    return block


def _blocks(chunk: int, block: int) -> int:
    return 0 if chunk <= 0 else (-(-chunk // block) + 3) // 4 * 4


def packed_chunk_bytes(chunk: int, block: int = DEFAULT_BLOCK) -> int:
    """Bytes of one packed chunk of ``chunk`` elements: nb*(block codes + 4 scale bytes), nb a multiple of 4."""
    return _blocks(chunk, block) * (block + 4)


def chunk_elems(n: int, world: int, block: int = DEFAULT_BLOCK) -> int:
    """Elements per rank chunk for an all-reduce of n elements: whole 4-block groups, world * chunk >= n."""
    if n <= 0:
        return 0
    nb = -(-(-(-n // block)) // world)
    return (nb + 3) // 4 * 4 * block


def pack(x: torch.Tensor, world: int, chunk: int, block: int = DEFAULT_BLOCK, dtype="int8",
         out: Optional[torch.Tensor] = None, skip: int = -1) -> torch.Tensor:
    """Packs the ``world`` chunks of flat x (chunk c = x[c*chunk:(c+1)*chunk]) into uint8 [world, chunk_bytes];
    row ``skip`` (the caller's own chunk, -1 = none) is neither quantized nor written (uninitialized if out is new)."""
    cb = packed_chunk_bytes(chunk, block)
    if out is None:
        out = torch.empty((world, cb), dtype=torch.uint8, device=x.device)
    torch.ops.halo.qcomm_pack_into(x.reshape(-1), out.view(-1), world, chunk, block, _qdtype(dtype), int(skip))
    return out


def reduce_chunks(chunks: List[torch.Tensor], out: torch.Tensor, block: int = DEFAULT_BLOCK, dtype="int8",
                  post_scale: float = 1.0, own: Optional[torch.Tensor] = None, own_index: int = -1) -> torch.Tensor:
    """Dequantizes packed chunks, sums in fp32 in list order (times post_scale) into out: a packed uint8 chunk
    (requantized) or a float tensor of at most nb*block elements (the sums themselves). ``own``: the owner's flat
    float input slice (at most nb*block elements, zeros past its end), added unquantized at position ``own_index``
    of the list instead of dequantizing ``chunks[own_index]`` (not read)."""
    if own is not None:
        own = own.reshape(-1)
    torch.ops.halo.qcomm_reduce_into(chunks, out.view(-1), block, _qdtype(dtype), float(post_scale), own,
                                     int(own_index))
    return out


def unpack(chunks: List[torch.Tensor], out: torch.Tensor, chunk: int, block: int = DEFAULT_BLOCK,
           dtype="int8") -> torch.Tensor:
    """Dequantizes packed chunks (chunk elements each) into the flat float tensor out."""
    torch.ops.halo.qcomm_unpack_into(chunks, out.view(-1), chunk, block, _qdtype(dtype))
    return out


def error_bound(xs: List[torch.Tensor], y: torch.Tensor, world: int, block: int = DEFAULT_BLOCK,
                avg: bool = False, chunk: Optional[int] = None, requantized: bool = True) -> torch.Tensor:
    """Per-element int8 bound (sum_{r != c} absmax_r [/world for AVG] + absmax_out) / 254 of the module docstring
    (c: the chunk of the element, i.e. its owner rank, whose own contribution is not quantized) plus the float32
    rounding of the sum, in float64, for flat tensors laid out as the collective chunks them: x_r rank r's input,
    y the exact result, ``chunk`` elements per rank chunk (default chunk_elems(n, world, block), the all-reduce's;
    the reduce-scatter's is output.numel()), blocks of ``block`` elements from each chunk's start.
    ``requantized=False``: no second quantization (the reduce-scatter's float output), no absmax_out term."""
    n = y.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    if chunk is None:
        chunk = chunk_elems(n, world, block)
    nbc = -(-chunk // block)

    def blockmax(t):
        flat = torch.zeros(world * chunk, dtype=torch.float64)
        flat[:n] = t.reshape(-1).double().abs().cpu()
        pad = torch.zeros(world, nbc * block, dtype=torch.float64)
        pad[:, :chunk] = flat.view(world, chunk)
        m = pad.view(world, nbc, block).amax(2, keepdim=True).expand(-1, -1, block).reshape(world, -1)
        return m[:, :chunk].reshape(-1)[:n]

    maxes = torch.stack([blockmax(x) for x in xs])
    owner = torch.arange(n) // chunk
    s_all = maxes.sum(0)
    s = s_all - maxes.gather(0, owner.view(1, -1)).view(-1)  # the owner's contribution is exact
    if avg:
        s, s_all = s / world, s_all / world
    fp32 = world * 2.0 ** -23 * s_all  # float32 rounding of the ordered sum and of the post scale
    if not requantized:
        return s / 254 * (1 + 1e-5) + fp32 + 1e-30
    # the reduced block's absmax is at most the exact one plus the first quantization's error (and rounding)
    out_max = blockmax(y) + s / 254 + fp32
    return (s + out_max) / 254 * (1 + 1e-5) + fp32 + 1e-30


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------

_ENV_KEYS = ("HALO_AR_PATH", "HALO_AR_FALLBACK_BYTES", "HALO_AR_PIECE_BYTES", "HALO_AR_FUSED", "HALO_AR_GRAPH",
             "HALO_AR_EXCHANGE")
_SETTINGS: Optional[Dict[str, Optional[str]]] = None


def reload_settings() -> None:
    """Re-reads the environment variables HALO_AR_PATH, HALO_AR_FALLBACK_BYTES, HALO_AR_PIECE_BYTES, HALO_AR_FUSED
    (1: the peer path runs reduce and unpack as one kernel with per-tile flags instead of two kernels with a barrier
    between), HALO_AR_GRAPH (1: the NCCL path on CUDA replays a CUDA graph of its kernels and collectives, see
    _two_shot_pg_graph) and HALO_AR_EXCHANGE (allgather: the NCCL path's all-to-all at two ranks as an all-gather,
    see _exchange). They are read once, at the first call (an os.environ lookup costs microseconds, and small
    all-reduces are host-bound): call this after changing them, or the FALLBACK_BYTES table, inside a running
    process."""
    global _SETTINGS
    _SETTINGS = {k: os.environ.get(k) for k in _ENV_KEYS}
    _FALLBACK_CACHE.clear()


def _setting(key: str) -> Optional[str]:
    if _SETTINGS is None:
        reload_settings()
    return _SETTINGS[key]


def _env_path(path: Optional[str]) -> str:
    return (path or _setting("HALO_AR_PATH") or "auto").lower()


_FALLBACK_CACHE: Dict[int, int] = {}  # world size -> threshold; cleared by reload_settings


def _fallback_bytes(world: int) -> int:
    v = _FALLBACK_CACHE.get(world)
    if v is None:
        env = _setting("HALO_AR_FALLBACK_BYTES")
        if env is not None:
            v = int(env)
        else:
            keys = [k for k in sorted(FALLBACK_BYTES) if k <= world]
            v = FALLBACK_BYTES[keys[-1]] if keys else FALLBACK_BYTES[min(FALLBACK_BYTES)]
        _FALLBACK_CACHE[world] = v
    return v


def _piece_bytes(total_bytes: int = 0) -> int:
    """Input bytes per pipeline piece: HALO_AR_PIECE_BYTES, else 128 MiB. Smaller pieces would expose less compute
    (the first pack and the last unpack), but every piece costs ~0.1-0.2 ms of host time (two asynchronous c10d
    collectives and three kernel launches; measured on 2x H200, tools/ar_trace.py), which made 8 pieces of 32 MiB
    host-bound at 256 MB (1.6 ms vs 0.89 ms for 2 pieces of 128 MiB)."""
    env = _setting("HALO_AR_PIECE_BYTES")
    if env is not None:
        return max(1, int(env))
    return 128 << 20


def _group_key(group) -> str:
    g = group if group is not None else dist.group.WORLD
    name = getattr(g, "group_name", None)
    return name if name else str(id(g))


def _all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    """all_gather of a flat tensor into a flat output (all_gather_single where it exists, torch >= 2.13)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


class _Done:
    """Handle of an async_op call. CUDA: the work ran on a side stream; wait() makes the caller's current stream
    wait for it (an event, no host sync). CPU: the work is done."""

    def __init__(self, result: torch.Tensor, event=None, stream=None):
        self._result = result
        self._event = event
        self._stream = stream

    def wait(self, timeout=None) -> bool:
        if self._event is not None:
            torch.cuda.current_stream(self._result.device).wait_event(self._event)
        return True

    def is_completed(self) -> bool:
        return self._event is None or self._event.query()

    def get_future(self) -> torch.futures.Future:
        """A CUDA-aware future: set on the side stream, so a consumer's fut.wait() / then() orders its stream after
        the work (no host sync, no wait on the caller's stream now)."""
        fut = torch.futures.Future(devices=[self._result.device] if self._result.is_cuda else None)
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                fut.set_result(self._result)
        else:
            fut.set_result(self._result)
        return fut

    def result(self):
        return [self._result]


_SIDE_STREAMS: Dict[int, "torch.cuda.Stream"] = {}


def _side_stream(device: torch.device):
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SIDE_STREAMS:
        _SIDE_STREAMS[idx] = torch.cuda.Stream(device=idx)
    return _SIDE_STREAMS[idx]


def _run_async(fn, tensors, result: torch.Tensor) -> "_Done":
    """Runs fn() on a side stream ordered after the current stream's work so far; returns a handle."""
    if not result.is_cuda:
        fn()
        return _Done(result)
    cur = torch.cuda.current_stream(result.device)
    side = _side_stream(result.device)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        fn()
        ev = torch.cuda.Event()
        ev.record(side)
    for t in tensors:  # caller-owned memory used on the side stream
        t.record_stream(side)
    return _Done(result, ev, side)


# ---------------------------------------------------------------------------------------------------------------
# NCCL / process-group path
# ---------------------------------------------------------------------------------------------------------------

def _exchange(recv: torch.Tensor, send: torch.Tensor, group, world: int, rank: int, async_op: bool = False):
    """The all-to-all of packed chunks ([world, cb] uint8): recv[s] = rank s's send[rank] for s != rank (recv[rank]
    is not used). At two ranks that is also one all-gather of the peer's chunk (the same bytes on the wire; an
    all-gather costs less host time than c10d's all_to_all, which issues a send and a receive per rank, itself
    included), used with HALO_AR_EXCHANGE=allgather: opt-in until timed on two GPUs (NCCL picked its LL protocol for
    the uint8 all-gather of 33 MB pieces, slower on the GPU than the all-to-all's send/receive)."""
    if world == 2 and _setting("HALO_AR_EXCHANGE") == "allgather":
        return _all_gather_flat(recv.view(-1), send[1 - rank], group, async_op=async_op)
    return dist.all_to_all_single(recv, send, group=group, async_op=async_op)


def _two_shot_pg(x: torch.Tensor, out: torch.Tensor, group, world: int, post_scale: float, qd, block: int,
                 piece_elems: int) -> None:
    """x, out: flat contiguous (may alias: out is written only in phase 3, after every reduce has read x).
    Pipelined over pieces of piece_elems elements. This rank's own chunk is not quantized: the pack skips it (its
    slot of the all-to-all buffer is sent to itself unfilled, recv[rank] never read) and the reduce adds it from x."""
    n = x.numel()
    rank = dist.get_rank(group)
    unit = world * block * 4
    piece = max(unit, piece_elems // unit * unit)
    starts = list(range(0, n, piece))
    staged = []
    for s in starts:  # phase 1: pack + all-to-all, all pieces
        m = min(piece, n - s)
        chunk = chunk_elems(m, world, block)
        send = pack(x[s:s + m], world, chunk, block, qd, skip=rank)
        recv = torch.empty_like(send)
        w = _exchange(recv, send, group, world, rank, async_op=True)
        staged.append((s, m, chunk, send, recv, w))
    gathered = []
    for s, m, chunk, send, recv, w in staged:  # phase 2: reduce own chunk + all-gather
        w.wait()
        red = torch.empty(recv.shape[1], dtype=torch.uint8, device=x.device)
        lo, hi = s + min(rank * chunk, m), s + min((rank + 1) * chunk, m)  # own chunk (ragged or empty at the end)
        reduce_chunks(list(recv.unbind(0)), red, block, qd, post_scale, own=x[lo:hi], own_index=rank)
        allg = torch.empty_like(recv)
        w2 = _all_gather_flat(allg.view(-1), red, group, async_op=True)
        gathered.append((s, m, chunk, allg, w2, red, send))
    for s, m, chunk, allg, w2, red, send in gathered:  # phase 3: dequantize everything
        w2.wait()
        unpack(list(allg.unbind(0)), out[s:s + m], chunk, block, qd)


_GRAPHS: "OrderedDict[tuple, torch.cuda.CUDAGraph]" = OrderedDict()
_GRAPH_MAX = 4  # cached graphs (each keeps its pipeline buffers, ~3.1 bytes per input element of 16-bit inputs)
_GRAPH_BROKEN: Dict[str, str] = {}


def _two_shot_pg_graph(x: torch.Tensor, out: torch.Tensor, group, world: int, post_scale: float, qd, block: int,
                       piece_elems: int) -> None:
    """_two_shot_pg as a replayed CUDA graph (HALO_AR_GRAPH=1): the pipeline's host cost (two c10d collectives and
    three ops a piece, ~0.4 ms a call on the 2x H200 host) becomes one graph launch. Keyed by the input and output
    addresses and everything else the kernels and collectives bake in; a miss runs the pipeline eagerly (this call's
    result) and then captures it for the next call with the same key (DDP buckets and benchmark buffers keep their
    addresses). The NCCL operations of a replay pair with the peers' eager or replayed ones in issue order, so ranks
    may hit and miss independently. Falls back to the eager pipeline for good if the capture fails."""
    gk = _group_key(group)
    if gk in _GRAPH_BROKEN or torch.cuda.is_current_stream_capturing():
        _two_shot_pg(x, out, group, world, post_scale, qd, block, piece_elems)
        return
    key = (gk, x.device.index, x.data_ptr(), out.data_ptr(), x.numel(), x.dtype, out.dtype, qd, block, post_scale,
           piece_elems)
    g = _GRAPHS.get(key)
    if g is not None:
        _GRAPHS.move_to_end(key)
        g.replay()
        return
    _two_shot_pg(x, out, group, world, post_scale, qd, block, piece_elems)  # this call's result (and NCCL warm-up)
    try:
        g = torch.cuda.CUDAGraph()
        # thread-local capture mode: the process group's watchdog thread keeps querying its events meanwhile
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            _two_shot_pg(x, out, group, world, post_scale, qd, block, piece_elems)
    except Exception as e:  # capture unsupported here: keep the eager pipeline
        _GRAPH_BROKEN[gk] = repr(e)
        warnings.warn(f"halo_ext.distributed: CUDA graph capture of the NCCL path failed ({e!r}); running it eagerly")
        return
    _GRAPHS[key] = g
    while len(_GRAPHS) > _GRAPH_MAX:
        _GRAPHS.popitem(last=False)


# ---------------------------------------------------------------------------------------------------------------
# Peer-memory (symmetric memory) path
# ---------------------------------------------------------------------------------------------------------------

_SAME_HOST: Dict[str, bool] = {}
_PEER_WS: Dict[Tuple[str, int], "_PeerWorkspace"] = {}
_PEER_BROKEN: Dict[str, str] = {}
_PEER_RETIRED: List["_PeerWorkspace"] = []  # outgrown workspaces stay mapped: kernels may still be using them


def _all_on_this_host(group) -> bool:
    key = _group_key(group)
    if key not in _SAME_HOST:
        names: List[Optional[str]] = [None] * dist.get_world_size(group)
        dist.all_gather_object(names, socket.gethostname(), group=group)  # once per group (host sync)
        _SAME_HOST[key] = len(set(names)) == 1
    return _SAME_HOST[key]


#: Elements per flag tile of the fused reduce + unpack kernel (kQCommFlagTileElems in csrc/kernels/qcomm.h; the op
#: checks that the flag arrays hold enough tiles).
_FLAG_TILE_ELEMS = 8192


def _flag_tiles(chunk: int, block: int) -> int:
    return -(-_blocks(chunk, block) * block // _FLAG_TILE_ELEMS)


class _PeerWorkspace:
    """A symmetric-memory uint8 buffer rendezvoused over the group, with views of every peer's copy: nbytes of chunk
    slots, then world rows of flag_tiles int32 flags (zeroed here; row s is set by rank s, one flag per tile of its
    reduced chunk, to the call's epoch)."""

    def __init__(self, group, nbytes: int, device: torch.device, flag_tiles: int = 0):
        import torch.distributed._symmetric_memory as symm_mem

        g = group if group is not None else dist.group.WORLD
        world = dist.get_world_size(g)
        self.nbytes = nbytes
        self.flag_tiles = flag_tiles
        total = nbytes + world * flag_tiles * 4
        self.buf = symm_mem.empty(total, dtype=torch.uint8, device=device)
        if flag_tiles:
            # finished before any peer can store a flag here (those follow a barrier this rank joins later, maybe on
            # another stream): a host sync, once per workspace
            self.buf[nbytes:].zero_()
            torch.cuda.current_stream(device).synchronize()
        try:
            self.hdl = symm_mem.rendezvous(self.buf, g)
        except Exception:  # older releases: the group must be registered first (a no-op, deprecated, later)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                symm_mem.enable_symm_mem_for_group(g.group_name)
            self.hdl = symm_mem.rendezvous(self.buf, g.group_name)
        self.world = self.hdl.world_size
        self.rank = self.hdl.rank
        self.peers = [self.buf if p == self.rank else self.hdl.get_buffer(p, (total,), torch.uint8)
                      for p in range(self.world)]
        self.epoch = 0  # the last fused call's flag value, the same on every rank
        self._setup_slots()

    def _setup_slots(self):
        self._views: Dict[Tuple[str, int], tuple] = {}
        # G slots (all_reduce's reduced chunks) live in the upper half, at a fixed offset, A slots (incoming packed
        # chunks) from 0: an A write of one call never lands on G bytes a peer may still be unpacking from the last
        self.g_off = self.nbytes // 2 // 16 * 16
        # stream on which the last use (an all_reduce) ended after every peer's last read of its A slots (a barrier,
        # or the fused kernel, whose waits for every peer's last reduced tile follow that peer's last A reads): the
        # next all_reduce skips its leading barrier (None: first use, or after a reduce_scatter, whose reduce reads
        # the A slots after its last barrier)
        self.a_free_stream: Optional[int] = None
        if self.flag_tiles:
            w, r, f0, ft = self.world, self.rank, self.nbytes, self.flag_tiles
            self.flags = self.buf[f0:f0 + w * ft * 4].view(torch.int32).view(w, ft)
            # row r of every other rank's flags: where this rank signals its reduced tiles
            self.peer_flags = [p[f0 + r * ft * 4:f0 + (r + 1) * ft * 4].view(torch.int32)
                               for i, p in enumerate(self.peers) if i != r]

    def next_epoch(self) -> int:
        self.epoch = self.epoch + 1 if self.epoch < 0xFFFFFFFF else 1
        return self.epoch

    def barrier(self):
        self.hdl.barrier(channel=0)

    def views(self, kind: str, cb: int) -> tuple:
        """Cached chunk views for packed chunks of cb bytes (host overhead per call: a dict lookup):
        (scatter targets peers[c][A slot rank], own A slots, broadcast targets peers[p][G slot rank] of the other
        ranks p, own G slots of the ranks before / after this one, all own G slots)."""
        key = (kind, cb)
        v = self._views.get(key)
        if v is None:
            w, r, g0 = self.world, self.rank, self.g_off
            assert kind != "ar" or w * cb <= g0, "workspace too small for the all_reduce slots"
            g = [p[g0 + r * cb:g0 + (r + 1) * cb] for i, p in enumerate(self.peers) if i != r]
            own_g = list(self.buf[g0:g0 + w * cb].view(w, cb).unbind(0)) if kind == "ar" else []
            v = ([p[r * cb:(r + 1) * cb] for p in self.peers], list(self.buf[:w * cb].view(w, cb).unbind(0)), g,
                 own_g[:r], own_g[r + 1:], own_g)
            if len(self._views) > 64:  # many distinct sizes: keep the cache bounded
                self._views.clear()
            self._views[key] = v
        return v


def _current_stream_id(x: torch.Tensor) -> int:
    """The raw current CUDA stream of x's device (0 for CPU tensors), without building a Stream object."""
    if not x.is_cuda:
        return 0
    try:
        return torch._C._cuda_getCurrentRawStream(x.device.index)
    except Exception:  # private helper missing in some release
        return torch.cuda.current_stream(x.device).cuda_stream


def _peer_workspace(group, nbytes: int, device: torch.device, flag_tiles: int = 0) -> "_PeerWorkspace":
    key = (_group_key(group), device.index if device.index is not None else torch.cuda.current_device())
    ws = _PEER_WS.get(key)
    if ws is None or ws.nbytes < nbytes or ws.flag_tiles < flag_tiles:
        # every rank sees the same sizes, so all grow together (collective)
        grow = max(nbytes, 2 * ws.nbytes if ws is not None else 0, 1 << 20)
        grow = (grow + 4095) // 4096 * 4096
        tiles = max(flag_tiles, 2 * ws.flag_tiles if ws is not None else 0, 1024) if flag_tiles else (
            ws.flag_tiles if ws is not None else 0)
        if ws is not None:
            _PEER_RETIRED.append(ws)
        ws = _PeerWorkspace(group, grow, device, tiles)
        _PEER_WS[key] = ws
    return ws


def peer_path_available(tensor: torch.Tensor, group=None) -> bool:
    """Whether the peer-memory path can run for this tensor and group (CUDA, one host, symmetric memory works)."""
    if not tensor.is_cuda:
        return False
    world = dist.get_world_size(group)
    if world > 32 or _group_key(group) in _PEER_BROKEN:
        return False
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
    except Exception:
        return False
    return _all_on_this_host(group)


def _two_shot_peer(x: torch.Tensor, out: torch.Tensor, group, world: int, post_scale: float, qd, block: int) -> None:
    """Push model over peer memory. Workspace of every rank: A = world slots of incoming chunks (slot s: the chunk
    rank s quantized for this rank), G = world slots of reduced chunks (slot s: rank s's reduced chunk). The pack
    kernel stores chunk c != rank straight into rank c's A[rank] (NVLink stores; the own chunk is not quantized and
    A[rank] stays unused), the reduce kernel reads its A locally plus its own chunk from x (unquantized), stores
    the requantized chunk into every other rank's G[rank] and writes its dequantized values (what every other rank
    unpacks from its G[rank], bit for bit) straight into its own part of out; the unpack kernel reads the other
    G slots locally."""
    n = x.numel()
    chunk = chunk_elems(n, world, block)
    cb = packed_chunk_bytes(chunk, block)
    fused = _setting("HALO_AR_FUSED") == "1"  # opt-in until measured on a multi-GPU machine (notes/allreduce.md)
    ws = _peer_workspace(group, 2 * world * cb, x.device, _flag_tiles(chunk, block) if fused else 0)
    rank = ws.rank
    scatter_to, a_slots, bcast_to, g_before, g_after, g_all = ws.views("ar", cb)
    stream = _current_stream_id(x)
    # Leading barrier: every peer is done reading its A slots (last reduce). Not needed after an all_reduce on this
    # workspace (see a_free_stream). The condition depends only on the sequence of collectives, the same on every
    # rank, so all ranks issue the same number of barriers. If that all_reduce ran on another stream, this stream
    # first waits for it (local order only). G writes (the reduce below) need no extra barrier: they follow the
    # barrier after the pack, which each peer passes only after its previous unpack (stream order).
    if ws.a_free_stream is None:
        ws.barrier()
    elif ws.a_free_stream != stream:
        torch.cuda.current_stream(x.device).wait_stream(torch.cuda.ExternalStream(ws.a_free_stream, device=x.device))
    ws.a_free_stream = None
    torch.ops.halo.qcomm_pack_scatter(x, scatter_to, chunk, block, qd, rank)
    ws.barrier()  # all chunks arrived
    lo, hi = min(rank * chunk, n), min((rank + 1) * chunk, n)  # own part: ragged or empty at the end
    if fused:
        # reduce + broadcast + unpack in one kernel: each reduced tile is flagged in the peers, which dequantize it
        # as soon as it arrived (no barrier, the unpack overlaps the reduce)
        torch.ops.halo.qcomm_reduce_broadcast_unpack(a_slots, bcast_to, g_all, ws.flags, ws.peer_flags,
                                                     ws.next_epoch(), out, chunk, block, qd, float(post_scale),
                                                     x[lo:hi], rank)
        ws.a_free_stream = stream
        return
    torch.ops.halo.qcomm_reduce_broadcast(a_slots, bcast_to, block, qd, float(post_scale), x[lo:hi], rank,
                                          out[lo:hi])
    ws.barrier()  # all reduced chunks arrived (and every rank's reduce has read its A slots)
    ws.a_free_stream = stream
    if lo > 0:
        torch.ops.halo.qcomm_unpack_into(g_before, out[:lo], chunk, block, qd)
    if hi < n:
        torch.ops.halo.qcomm_unpack_into(g_after, out[hi:], chunk, block, qd)


def _reduce_scatter_peer(x: torch.Tensor, out: torch.Tensor, group, world: int, post_scale: float, qd,
                         block: int) -> None:
    chunk = out.numel()
    cb = packed_chunk_bytes(chunk, block)
    ws = _peer_workspace(group, world * cb, x.device)
    rank = ws.rank
    scatter_to, a_slots = ws.views("rs", cb)[:2]
    ws.barrier()
    ws.a_free_stream = None  # the reduce below reads the A slots after the last barrier
    torch.ops.halo.qcomm_pack_scatter(x, scatter_to, chunk, block, qd, rank)  # the own slice stays unquantized
    ws.barrier()
    reduce_chunks(a_slots, out, block, qd, post_scale, own=x[rank * chunk:(rank + 1) * chunk], own_index=rank)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------

def _parse_op(op) -> bool:
    """True for AVG, False for SUM."""
    if op in ("sum", dist.ReduceOp.SUM):
        return False
    if op in ("avg", "mean", dist.ReduceOp.AVG):
        return True
    raise ValueError(f"halo_ext.distributed: op must be 'sum' or 'avg', got {op!r}")


def _plain_all_reduce(buf: torch.Tensor, group, world: int, avg: bool) -> None:
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    if avg:
        buf.div_(world)


def _choose_path(path: Optional[str], tensor: torch.Tensor, group, world: int) -> str:
    path = _env_path(path)
    if path not in ("auto", "nccl", "peer", "fallback"):
        raise ValueError(f"halo_ext.distributed: path must be auto, nccl, peer or fallback, got {path!r}")
    if path == "peer":
        if not tensor.is_cuda:
            raise ValueError("halo_ext.distributed: path='peer' needs a CUDA tensor")
        return "peer"
    if path != "auto":
        return path
    if tensor.numel() * tensor.element_size() < _fallback_bytes(world):
        return "fallback"
    return "peer" if peer_path_available(tensor, group) else "nccl"


_HIER_GROUPS: Dict[Tuple[int, int], Tuple[object, object]] = {}


def _hier_groups(k: int):
    """(intra, inter) groups of this rank for k ranks per node (consecutive ranks form a node)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    key = (world, k)
    if key not in _HIER_GROUPS:
        intra = inter = None
        for node in range(world // k):  # every rank creates every group, in the same order
            g = dist.new_group(list(range(node * k, (node + 1) * k)))
            if rank // k == node:
                intra = g
        for local in range(k):
            g = dist.new_group(list(range(local, world, k)))
            if rank % k == local:
                inter = g
        _HIER_GROUPS[key] = (intra, inter)
    return _HIER_GROUPS[key]


def _reduce_scatter_plain(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    """dist.reduce_scatter_tensor (SUM), emulated with all_reduce where the backend lacks it (Gloo)."""
    if inp.is_cuda:
        dist.reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=group)
        return
    tmp = inp.clone()
    dist.all_reduce(tmp, group=group)
    r = dist.get_rank(group)
    out.copy_(tmp[r * out.numel():(r + 1) * out.numel()])


def _all_reduce_hier(x: torch.Tensor, out: torch.Tensor, k: int, avg: bool, qd, block: int, path: Optional[str]):
    world = dist.get_world_size()
    intra, inter = _hier_groups(k)
    n = x.numel()
    s = -(-n // k)
    xp = torch.zeros(s * k, dtype=x.dtype, device=x.device)
    xp[:n] = x
    part = torch.empty(s, dtype=x.dtype, device=x.device)
    _reduce_scatter_plain(part, xp, intra)
    nodes = world // k
    # quantized two-shot among ranks of the same local index (post scale 1/world for AVG)
    inter_path = _env_path(path)
    if inter_path in ("auto", "peer"):
        inter_path = "nccl"  # ranks of one local index sit on different nodes
    if inter_path == "fallback" or nodes == 1:
        _plain_all_reduce(part, inter, nodes, False)
        if avg:
            part.div_(world)
    else:
        _two_shot_pg(part, part, inter, nodes, 1.0 / world if avg else 1.0, qd, block,
                     max(1, _piece_bytes(part.numel() * part.element_size()) // part.element_size()))
    full = torch.empty(s * k, dtype=x.dtype, device=x.device)
    _all_gather_flat(full, part, intra)
    out.copy_(full[:n])


def all_reduce(tensor: torch.Tensor, op="sum", group=None, dtype="int8", block: int = DEFAULT_BLOCK,
               async_op: bool = False, out: Optional[torch.Tensor] = None, path: Optional[str] = None,
               hierarchical: Optional[int] = None):
    """Block-quantized two-shot all-reduce of ``tensor`` over ``group`` (see the module docstring).

    Args:
        tensor: float32/float16/bfloat16, any shape and size (0 and 1 element included), CPU (Gloo) or CUDA (NCCL).
        op: "sum" or "avg" (or dist.ReduceOp.SUM / AVG).
        dtype: "int8" (default) or "fp8" (float8_e4m3fn) codes.
        block: elements per fp32 scale, a power of two in [32, 1024] (default DEFAULT_BLOCK = 64).
        async_op: return a handle with wait()/get_future(); the work is already ordered on the current stream.
        out: out-of-place result (same shape and dtype as tensor); default in place.
        path: "auto" | "nccl" | "peer" | "fallback" (default: env HALO_AR_PATH or auto).
        hierarchical: k ranks per node: intra-node reduce-scatter, quantized all-reduce across nodes, intra-node
            all-gather (default world group only; world divisible by k).

    Error (int8): per element of a block of chunk c, |y_hat - y| <= (sum_{r != c} absmax_r + absmax_out) / 254,
    absmax_r the block's absmax on rank r (divided by world for AVG; the owner c adds its chunk unquantized) and
    absmax_out that of the reduced block (:func:`error_bound`); float8_e4m3fn: a relative 2^-4 per quantization
    (see the module docstring). All ranks get bitwise-identical results.

    Returns: the result tensor (``out`` or ``tensor``), or a handle when async_op.
    """
    if (out is None and path is None and not async_op and not hierarchical and isinstance(tensor, torch.Tensor)
            and tensor.dtype in _FLOATS and _env_path(None) == "auto" and tensor.is_contiguous()):
        # below the fallback threshold the call is host-bound: go to the plain all-reduce with as little Python in
        # front of it as possible (same checks and result as the general code below)
        nbytes = tensor.numel() * tensor.element_size()
        world = dist.get_world_size(group)
        if nbytes < _fallback_bytes(world):
            avg = _parse_op(op)
            _qdtype(dtype)
            _check_block(block)
            if nbytes > 0 and world > 1:
                _plain_all_reduce(tensor, group, world, avg)
            return tensor
    if async_op and isinstance(tensor, torch.Tensor) and tensor.is_cuda:
        res = out if out is not None else tensor
        return _run_async(lambda: all_reduce(tensor, op, group, dtype, block, False, out, path, hierarchical),
                          [tensor] + ([out] if out is not None else []), res)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("halo_ext.distributed.all_reduce: tensor must be a torch.Tensor")
    if tensor.dtype not in _FLOATS:
        raise TypeError(f"halo_ext.distributed.all_reduce: tensor must be float32, float16 or bfloat16, got "
                        f"{tensor.dtype}")
    avg = _parse_op(op)
    qd = _qdtype(dtype)
    block = _check_block(block)
    if out is None:
        out = tensor
    elif out.shape != tensor.shape or out.dtype != tensor.dtype or out.device != tensor.device:
        raise ValueError("halo_ext.distributed.all_reduce: out must have the shape, dtype and device of tensor")
    world = dist.get_world_size(group)
    if tensor.numel() == 0 or world == 1:
        if out is not tensor:
            out.copy_(tensor)
        return _Done(out) if async_op else out
    x = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    dst = out.view(-1) if out.is_contiguous() else torch.empty(out.numel(), dtype=out.dtype, device=out.device)
    if hierarchical:
        k = int(hierarchical)
        if group not in (None, dist.group.WORLD) or k < 1 or dist.get_world_size() % k:
            raise ValueError("halo_ext.distributed.all_reduce: hierarchical=k needs the default group and a world "
                             "size divisible by k")
        _all_reduce_hier(x, dst, k, avg, qd, block, path)
    else:
        p = _choose_path(path, tensor, group, world)
        if p == "peer":
            try:
                _two_shot_peer(x, dst, group, world, 1.0 / world if avg else 1.0, qd, block)
            except Exception as e:  # symmetric memory unusable: remember and use the process-group path
                if _env_path(path) == "peer":
                    raise
                _PEER_BROKEN[_group_key(group)] = repr(e)
                warnings.warn(f"halo_ext.distributed: peer path unavailable ({e!r}); using the NCCL path")
                p = "nccl"
        if p == "fallback":
            if dst.data_ptr() != x.data_ptr():
                dst.copy_(x)
            _plain_all_reduce(dst, group, world, avg)
        elif p == "nccl":
            piece = max(1, _piece_bytes(x.numel() * x.element_size()) // x.element_size())
            if x.is_cuda and _setting("HALO_AR_GRAPH") == "1":
                _two_shot_pg_graph(x, dst, group, world, 1.0 / world if avg else 1.0, qd, block, piece)
            else:
                _two_shot_pg(x, dst, group, world, 1.0 / world if avg else 1.0, qd, block, piece)
    if not out.is_contiguous():
        out.copy_(dst.view(out.shape))
    return _Done(out) if async_op else out


def last_path(tensor: torch.Tensor, group=None, path: Optional[str] = None) -> str:
    """Which path ``all_reduce`` picks for this tensor/group (for benchmarks and logs)."""
    world = dist.get_world_size(group)
    if tensor.numel() == 0 or world == 1:
        return "identity"
    return _choose_path(path, tensor, group, world)


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, op="sum", group=None, dtype="int8",
                   block: int = DEFAULT_RS_BLOCK, async_op: bool = False, path: Optional[str] = None):
    """Block-quantized reduce-scatter (the first half of the two-shot all-reduce), like
    ``dist.reduce_scatter_tensor``: ``input`` is flat-viewable with world * output.numel() elements; rank r gets
    the sum (or mean) of every rank's slice input[r*S:(r+1)*S], S = output.numel().

    One quantization per element of the other ranks' slices: each rank quantizes its input per block of
    ``block`` elements of each other rank's slice (slices are padded to whole blocks internally; its own slice is
    not quantized), the owner dequantizes the world - 1 incoming slices, adds its own slice unquantized, accumulates
    in float32 in rank order and writes the sums straight into ``output`` (any of float32/float16/bfloat16,
    independent of input's dtype; use a float32 output to keep the fp32 accumulation). Error (int8): |y_hat - y| <=
    sum_{r != rank} absmax_r / 254 per block (divided by world for AVG; ``error_bound(..., chunk=S,
    requantized=False)``). Paths as in all_reduce ("fallback" = dist.reduce_scatter_tensor).
    """
    if async_op and input.is_cuda:
        return _run_async(lambda: reduce_scatter(output, input, op, group, dtype, block, False, path),
                          [output, input], output)
    if input.dtype not in _FLOATS or output.dtype not in _FLOATS:
        raise TypeError("halo_ext.distributed.reduce_scatter: input and output must be float32, float16 or bfloat16")
    avg = _parse_op(op)
    qd = _qdtype(dtype)
    block = _check_block(block)
    world = dist.get_world_size(group)
    S = output.numel()
    if input.numel() != world * S:
        raise ValueError(f"halo_ext.distributed.reduce_scatter: input has {input.numel()} elements, expected "
                         f"world * output.numel() = {world * S}")
    if input.device != output.device:
        raise ValueError("halo_ext.distributed.reduce_scatter: input and output must be on the same device")
    dst = output.view(-1) if output.is_contiguous() else torch.empty(S, dtype=output.dtype, device=output.device)
    x = input.reshape(-1) if input.is_contiguous() else input.contiguous().view(-1)
    if S == 0:
        return _Done(output) if async_op else output
    if world == 1:
        dst.copy_(x)
    else:
        p = _choose_path(path, input, group, world)
        post = 1.0 / world if avg else 1.0
        if p == "peer":
            try:
                _reduce_scatter_peer(x, dst, group, world, post, qd, block)
            except Exception as e:
                if _env_path(path) == "peer":
                    raise
                _PEER_BROKEN[_group_key(group)] = repr(e)
                warnings.warn(f"halo_ext.distributed: peer path unavailable ({e!r}); using the NCCL path")
                p = "nccl"
        if p == "fallback":
            tmp = torch.empty(S, dtype=x.dtype, device=x.device)
            _reduce_scatter_plain(tmp, x, group)
            if avg:
                tmp.div_(world)
            dst.copy_(tmp)
        elif p == "nccl":
            rank = dist.get_rank(group)
            send = pack(x, world, S, block, qd, skip=rank)  # own slot unfilled: sent to itself, never read
            recv = torch.empty_like(send)
            _exchange(recv, send, group, world, rank)
            reduce_chunks(list(recv.unbind(0)), dst, block, qd, post, own=x[rank * S:(rank + 1) * S], own_index=rank)
    if not output.is_contiguous():
        output.copy_(dst.view(output.shape))
    return _Done(output) if async_op else output
