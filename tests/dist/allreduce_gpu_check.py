"""GPU checks of halo_ext.distributed on NCCL (both the NCCL path and the peer-memory path), run with
    torchrun --nproc_per_node=2 tests/dist/allreduce_gpu_check.py
Asserts the properties tests/test_allreduce.py checks on Gloo (bitwise-identical results on all ranks, error within
the stated bound vs float64, sizes 0/1/odd/ragged/multi-chunk, AVG, out-of-place, fp8, pipelined pieces, fallback,
reduce_scatter, hierarchical with fake nodes, DDP hook vs plain DDP, the owner's chunk added unquantized) plus: the
CUDA pack/reduce/unpack kernels equal the CPU reference bit for bit (also with own / own_index and skip). Prints one
line per check group; exits 1 if anything failed."""
import os
import sys
import traceback

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import allreduce_checks as C  # noqa: E402
import halo_ext  # noqa: E402
from halo_ext.distributed import (chunk_elems, pack, packed_chunk_bytes, reduce_chunks,  # noqa: E402
                                  reload_settings, unpack)


def check_kernels_vs_cpu(device) -> list:
    """CUDA kernels == CPU reference, bit for bit (every block size, dtype, code type, ragged sizes), for both kernel
    traits (HALO_QCOMM_LANE_ELEMS = 8 and 16 elements per lane)."""
    saved = os.environ.get("HALO_QCOMM_LANE_ELEMS")
    fails = []
    try:
        for le in ("8", "16"):
            os.environ["HALO_QCOMM_LANE_ELEMS"] = le
            fails += [f"[lane_elems={le}] {f}" for f in _check_kernels_vs_cpu(device)]
    finally:
        if saved is None:
            os.environ.pop("HALO_QCOMM_LANE_ELEMS", None)
        else:
            os.environ["HALO_QCOMM_LANE_ELEMS"] = saved
    return fails


def _check_kernels_vs_cpu(device) -> list:
    fails = []
    g = torch.Generator().manual_seed(3)
    for block in (32, 64, 128, 256, 512, 1024):
        for xdt in (torch.float32, torch.bfloat16, torch.float16):
            for qd in ("int8", "fp8"):
                for n, world in ((1, 2), (1000, 3), (block * 37 + 5, 4), (65536, 2)):
                    xs = [(torch.randn(n, generator=g) * (1 + r)).to(xdt) for r in range(world)]
                    chunk = chunk_elems(n, world, block)
                    cb = packed_chunk_bytes(chunk, block)
                    tag = f"[kernels B={block} {xdt} {qd} n={n} w={world}]"
                    pc = [pack(x, world, chunk, block, qd) for x in xs]
                    pg = [pack(x.to(device), world, chunk, block, qd) for x in xs]
                    if not all(torch.equal(a, b.cpu()) for a, b in zip(pc, pg)):
                        fails.append(f"{tag} pack differs from the CPU reference")
                        continue
                    for r in range(world):
                        rc = torch.empty(cb, dtype=torch.uint8)
                        rg = torch.empty(cb, dtype=torch.uint8, device=device)
                        reduce_chunks([p[r] for p in pc], rc, block, qd, 0.5)
                        reduce_chunks([p[r] for p in pg], rg, block, qd, 0.5)
                        if not torch.equal(rc, rg.cpu()):
                            fails.append(f"{tag} reduce (packed) differs from the CPU reference")
                        fc = torch.empty(min(chunk, 777), dtype=xdt)
                        fg = torch.empty(min(chunk, 777), dtype=xdt, device=device)
                        reduce_chunks([p[r] for p in pc], fc, block, qd)
                        reduce_chunks([p[r] for p in pg], fg, block, qd)
                        if not torch.equal(fc, fg.cpu()):
                            fails.append(f"{tag} reduce (float out) differs from the CPU reference")
                    # own contribution: chunk r of rank r unquantized (ragged / empty at the end; a misaligned copy
                    # takes the element path), pack with skip leaves the own row untouched
                    for r in range(world):
                        lo, hi = min(r * chunk, n), min((r + 1) * chunk, n)
                        owns = [(xs[r][lo:hi], xs[r].to(device)[lo:hi])]
                        if r == world - 1 and hi > lo:
                            mis = torch.empty(hi - lo + 1, dtype=xdt, device=device)[1:]
                            mis.copy_(owns[0][1])
                            owns.append((owns[0][0], mis))
                        chunks_c = [p[r] for p in pc]
                        chunks_g = [p[r] for p in pg]
                        chunks_g[r] = torch.full_like(chunks_g[r], 0xFF)  # must not be read
                        for oc, og in owns:
                            rc = torch.empty(cb, dtype=torch.uint8)
                            rg = torch.empty(cb, dtype=torch.uint8, device=device)
                            reduce_chunks(chunks_c, rc, block, qd, 0.5, own=oc, own_index=r)
                            reduce_chunks(chunks_g, rg, block, qd, 0.5, own=og, own_index=r)
                            if not torch.equal(rc, rg.cpu()):
                                fails.append(f"{tag} reduce with own (packed) differs from the CPU reference")
                            fc = torch.empty(min(chunk, 777), dtype=xdt)
                            fg = torch.empty(min(chunk, 777), dtype=xdt, device=device)
                            reduce_chunks(chunks_c, fc, block, qd, own=oc, own_index=r)
                            reduce_chunks(chunks_g, fg, block, qd, own=og, own_index=r)
                            if not torch.equal(fc, fg.cpu()):
                                fails.append(f"{tag} reduce with own (float out) differs from the CPU reference")
                        bo = [torch.zeros(cb, dtype=torch.uint8, device=device) for _ in range(2)]
                        torch.ops.halo.qcomm_reduce_broadcast(chunks_g, bo, block, _QD[qd], 0.5, owns[0][1], r)
                        rc = torch.empty(cb, dtype=torch.uint8)
                        reduce_chunks(chunks_c, rc, block, qd, 0.5, own=owns[0][0], own_index=r)
                        if not all(torch.equal(rc, o.cpu()) for o in bo):
                            fails.append(f"{tag} reduce_broadcast with own differs from the CPU reference")
                        # deq: the owner's dequantized result written by the reduce kernel == CPU unpack of rc
                        m = owns[0][1].numel()
                        dq = torch.full((m,), float("nan"), dtype=xdt, device=device)
                        torch.ops.halo.qcomm_reduce_broadcast(chunks_g, bo[:1], block, _QD[qd], 0.5, owns[0][1], r,
                                                              dq)
                        dc = torch.empty(m, dtype=xdt)
                        unpack([rc], dc, cb // (block + 4) * block, block, qd)
                        if not torch.equal(dq.cpu(), dc):
                            fails.append(f"{tag} reduce_broadcast deq differs from the CPU unpack")
                    skip = world - 1
                    sg = torch.full((world, cb), 0xA5, dtype=torch.uint8, device=device)
                    pack(xs[0].to(device), world, chunk, block, qd, out=sg, skip=skip)
                    sg = sg.cpu()
                    if not (all(torch.equal(sg[c], pc[0][c]) for c in range(world) if c != skip)
                            and bool((sg[skip] == 0xA5).all())):
                        fails.append(f"{tag} pack with skip wrong")
                    so = [torch.full((cb,), 0x5A, dtype=torch.uint8, device=device) for _ in range(world)]
                    torch.ops.halo.qcomm_pack_scatter(xs[0].to(device), so, chunk, block, _QD[qd], skip)
                    if not (all(torch.equal(so[c].cpu(), pc[0][c]) for c in range(world) if c != skip)
                            and bool((so[skip] == 0x5A).all())):
                        fails.append(f"{tag} pack_scatter with skip wrong")
                    uc = torch.empty(n, dtype=xdt)
                    ug = torch.empty(n, dtype=xdt, device=device)
                    unpack(list(pc[0].unbind(0)), uc, chunk, block, qd)
                    unpack(list(pg[0].unbind(0)), ug, chunk, block, qd)
                    if not torch.equal(uc, ug.cpu()):
                        fails.append(f"{tag} unpack differs from the CPU reference")
    # an empty float output (an empty own part at the end of a ragged tensor): nothing to store, no error
    p = pack(torch.randn(500, device=device), 2, 256, 64)
    reduce_chunks([p[0], p[1]], torch.empty(0, device=device), 64)
    # bad own: on another device than the chunks
    p = pack(torch.randn(500, device=device), 2, 256, 64)
    try:
        reduce_chunks([p[0], p[1]], torch.empty(p.shape[1], dtype=torch.uint8, device=device), 64,
                      own=torch.randn(256), own_index=0)
        fails.append("own on the CPU with CUDA chunks did not raise")
    except ValueError as e:
        if "device" not in str(e):
            fails.append(f"own on the wrong device: unclear error {e}")
    torch.cuda.synchronize()
    return fails


_QD = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def check_peer_streams(device) -> list:
    """Peer all_reduces back to back (no leading barrier) alternating between a side stream and the current one,
    large enough that a missing stream order would race: the same bits as the NCCL path every time."""
    fails = []
    rank, world = dist.get_rank(), dist.get_world_size()
    side = torch.cuda.Stream(device)
    for i in range(6):
        g = torch.Generator(device=device).manual_seed(77 * i + rank)
        x = torch.randn(3 << 20, generator=g, device=device).to(torch.bfloat16)
        ref = C.all_reduce(x.clone(), path="nccl")
        y = x.clone()
        if i % 2:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                C.all_reduce(y, path="peer")
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            C.all_reduce(y, path="peer")
        if not torch.equal(y, ref):
            fails.append(f"[peer streams] call {i} differs from the NCCL path")
    torch.cuda.synchronize(device)
    return fails


def check_peer_back_to_back(device) -> list:
    """Peer all_reduces queued back to back with no host sync (sizes from a few tiles to 64 MB, blocks 32..1024,
    int8 and fp8, sum and avg; fused: every call advances the flag epoch while the previous kernels may still run):
    each equals the NCCL path bit for bit."""
    fails = []
    rank = dist.get_rank()
    cases = [(1, 64, "int8", "sum"), (8192 * 3 + 17, 64, "int8", "sum"), (1 << 20, 32, "fp8", "avg"),
             (32 << 20, 64, "int8", "sum"), (5 << 20, 1024, "int8", "avg"), (777777, 256, "fp8", "sum"),
             (32 << 20, 128, "int8", "avg"), (3, 512, "int8", "sum")]
    xs, refs = [], []
    for i, (n, block, qd, op) in enumerate(cases):
        g = torch.Generator(device=device).manual_seed(1000 + 31 * i + rank)
        x = torch.randn(n, generator=g, device=device).to(torch.bfloat16)
        refs.append(C.all_reduce(x.clone(), op=op, dtype=qd, block=block, path="nccl"))
        xs.append(x)
    torch.cuda.synchronize(device)
    for rep in range(3):
        ys = [x.clone() for x in xs]
        for y, (n, block, qd, op) in zip(ys, cases):
            C.all_reduce(y, op=op, dtype=qd, block=block, path="peer")
        torch.cuda.synchronize(device)
        for i, (y, r) in enumerate(zip(ys, refs)):
            if not torch.equal(y, r):
                fails.append(f"[peer back to back] rep {rep} case {cases[i]} differs from the NCCL path")
    return fails


def check_nccl_graph(device) -> list:
    """The NCCL path replayed as a CUDA graph (HALO_AR_GRAPH=1) equals the eager NCCL path bit for bit: first call
    (eager + capture), replays, a second output buffer (a new key), several pipeline pieces in one graph."""
    fails = []
    rank = dist.get_rank()
    cases = [((1 << 20) + 3, 64, "int8", "sum", None), (3 << 20, 256, "fp8", "avg", None),
             (6 << 20, 64, "int8", "sum", str(4 << 20))]  # 12 MB of bf16 in 4 MiB pieces: 3 pieces
    for i, (n, block, qd, op, piece) in enumerate(cases):
        g = torch.Generator(device=device).manual_seed(500 + 7 * i + rank)
        x = torch.randn(n, generator=g, device=device).to(torch.bfloat16)
        if piece:
            os.environ["HALO_AR_PIECE_BYTES"] = piece
        reload_settings()
        try:
            ref = C.all_reduce(x.clone(), op=op, dtype=qd, block=block, path="nccl")
            os.environ["HALO_AR_GRAPH"] = "1"
            reload_settings()
            outs = [torch.empty_like(x), torch.empty_like(x)]
            for rep in range(5):
                out = outs[0] if rep != 3 else outs[1]
                out.fill_(float("nan"))
                C.all_reduce(x, op=op, dtype=qd, block=block, out=out, path="nccl")
                torch.cuda.synchronize(device)
                if not torch.equal(out, ref):
                    fails.append(f"[nccl graph] case {i} call {rep} differs from the eager NCCL path")
        finally:
            for k in ("HALO_AR_GRAPH", "HALO_AR_PIECE_BYTES"):
                os.environ.pop(k, None)
            reload_settings()
    from halo_ext.distributed import allreduce as A
    if A._GRAPH_BROKEN:
        fails.append(f"[nccl graph] capture failed, eager fallback: {A._GRAPH_BROKEN}")
    return fails


def _fused(fn):
    """fn() with the peer path's reduce and unpack as one kernel with per-tile flags (HALO_AR_FUSED=1)."""
    def run():
        os.environ["HALO_AR_FUSED"] = "1"
        reload_settings()
        try:
            return fn()
        finally:
            del os.environ["HALO_AR_FUSED"]
            reload_settings()
    return run


def main() -> int:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = [
        ("kernels vs CPU reference", lambda: check_kernels_vs_cpu(device) if rank == 0 else []),
        ("all_reduce nccl+peer", lambda: C.check_all_reduce(device, paths=("nccl", "peer"))),
        ("peer path across streams", lambda: check_peer_streams(device)),
        ("peer path back to back", lambda: check_peer_back_to_back(device)),
        ("all_reduce peer, fused", _fused(lambda: C.check_all_reduce(device, paths=("peer",)))),
        ("peer path across streams, fused", _fused(lambda: check_peer_streams(device))),
        ("peer path back to back, fused", _fused(lambda: check_peer_back_to_back(device))),
        ("NCCL path as a CUDA graph", lambda: check_nccl_graph(device)),
        ("auto fast path (below the threshold)", lambda: C.check_auto_fast_path(device)),
        ("reduce_scatter nccl+peer", lambda: C.check_reduce_scatter(device, paths=("nccl", "peer"))),
        ("hierarchical (fake nodes)", lambda: C.check_hierarchical(device, world // 2 if world >= 4 else 1)),
        ("DDP hook", lambda: C.check_ddp(device)),
    ]
    total = 0
    for name, fn in groups:
        try:
            fails = fn()
        except Exception as e:
            fails = [f"raised {e!r}\n{traceback.format_exc()}"]
        torch.cuda.synchronize()
        flag = torch.tensor([len(fails)], device=device)
        dist.all_reduce(flag)
        total += int(flag)
        if rank == 0 or fails:
            print(f"[rank {rank}] {name}: {'PASS' if not fails else 'FAIL'} (failures on all ranks: {int(flag)})",
                  flush=True)
            for f in fails[:20]:
                print(f"[rank {rank}]   {f}", flush=True)
    if rank == 0:
        print("ALL GPU CHECKS PASSED" if total == 0 else f"GPU CHECKS FAILED: {total} failures", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
