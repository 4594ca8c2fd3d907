"""Block-quantized two-shot all-reduce (halo_ext.distributed.all_reduce) vs NCCL bf16 all-reduce.

    torchrun --nproc_per_node=N bench/allreduce_bench.py [--sizes-mb 1 4 16 64 256 1024] [--dtypes int8 fp8]

For every size (MB of bf16 input per rank) and code dtype: the NCCL path, the peer-memory (symmetric memory) path
and the automatic choice, with the peers measured in the same run: NCCL bf16 all_reduce ("nccl_bf16_ms") and the
bare NCCL transport of the packed 8-bit payload, all_to_all_single + all_gather of the same uint8 buffers with no
compute ("nccl_transport_ms": the ceiling of the NCCL path). relerr: relative L2 error vs an fp32 reduction (NCCL
fp32 all_reduce of the same inputs); relerr_nccl_bf16: the same for NCCL's own bf16 all_reduce. Times: CUDA-event
median after warm-up (bench/_common.time_ms), max over ranks. The fallback threshold of "auto" is tuned in the
run: the smallest size from which the best quantized path beats NCCL bf16 by at least 10% at every larger size
measured (the margin covers the auto path's extra host work, which these host-bound small sizes feel; extra sizes
0.0625/0.25/8 MB are measured for that); the run sets HALO_AR_FALLBACK_BYTES to it before the
"auto" rows and records it. The "auto" rows are in place (as dist.all_reduce is), against NCCL bf16 re-measured
in the same loop (3 interleaved rounds, median each). A block sweep (128/256/512; the default is 64) runs at 16, 64, 256 and 1024 MB, a pipeline-piece
sweep (32/64/256 MiB, path "nccl:pieceXMB"; the default is 128) at 256 and 1024 MB, a kernel-trait sweep (8 elements
per lane in pack/reduce instead of 16, HALO_QCOMM_LANE_ELEMS, path "peer:lane8", blocks 64/128/256) at the same sizes. Rank 0 writes
bench/results/allreduce.json (rows merged by world, MB, dtype, path, block so 4/8-GPU runs append).
--smoke: a CPU/Gloo dry run of the script logic with tiny sizes (no GPU needed).
"""
import os

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, time_ms, write_results  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.distributed import all_reduce, chunk_elems, last_path, packed_chunk_bytes, reload_settings  # noqa: E402
from halo_ext.distributed.allreduce import DEFAULT_BLOCK, peer_path_available  # noqa: E402


def _time(fn, smoke: bool) -> float:
    if smoke:
        fn()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    return time_ms(fn, warmup=5, iters=25)


def _max_over_ranks(v: float, device) -> float:
    t = torch.tensor([v], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _relerr(y: torch.Tensor, ref: torch.Tensor) -> float:
    d = (y.float() - ref).double().norm()
    return float(d / ref.double().norm().clamp_min(1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=float, nargs="*", default=[1, 4, 16, 64, 256, 1024])
    ap.add_argument("--small-mb", type=float, nargs="*", default=[0.0625, 0.25, 8],
                    help="extra sizes for the threshold")
    ap.add_argument("--dtypes", nargs="*", default=["int8", "fp8"])
    ap.add_argument("--sweep-blocks", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--sweep-mb", type=float, nargs="*", default=[16, 64, 256, 1024])
    ap.add_argument("--sweep-lane-elems", type=int, nargs="*", default=[8],
                    help="kernel trait HALO_QCOMM_LANE_ELEMS (pack/reduce elements per lane; default 16) swept for the "
                         "peer path (blocks 64/128/256) at the --sweep-mb sizes (rows path 'peer:laneN')")
    ap.add_argument("--sweep-piece-mb", type=float, nargs="*", default=[32, 64, 256],
                    help="pipeline piece sizes (HALO_AR_PIECE_BYTES) swept for the NCCL path at 256 and 1024 MB")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    smoke = args.smoke
    if smoke:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
        args.sizes_mb, args.small_mb, args.sweep_mb = [0.03125, 0.125], [0.0078125], [0.125]
    else:
        if not halo_ext.cuda_available():
            sys.exit("allreduce_bench: needs CUDA GPUs and a CUDA build of halo_ext (or --smoke)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    peer_ok = (not smoke) and peer_path_available(torch.empty(1, device=device))
    if rank == 0:
        print(f"world={world} peer_path_available={peer_ok} torch={torch.__version__} "
              f"nccl={torch.cuda.nccl.version() if not smoke else '-'}", flush=True)

    def measure(fn) -> float:
        try:
            return _max_over_ranks(_time(fn, smoke), device)
        except Exception:  # keep the run going; every rank meets the same failure
            if rank == 0:
                traceback.print_exc()
            return float("nan")

    all_sizes = sorted(set(args.small_mb) | set(args.sizes_mb))
    rows, per_size = [], {}
    for mb in all_sizes:
        n = int(mb * (1 << 20) // 2)
        g = torch.Generator(device=device).manual_seed(1234 + rank)
        x = torch.randn(n, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
        ref = x.float()
        dist.all_reduce(ref)  # fp32 reference sum
        y = x.clone()
        dist.all_reduce(y)
        err_bf16 = _relerr(y, ref)
        buf = x.clone()
        t_bf16 = measure(lambda: dist.all_reduce(buf))
        # transport ceiling: the packed int8 payload through all_to_all_single + all_gather, no compute
        cb = packed_chunk_bytes(chunk_elems(n, world, DEFAULT_BLOCK), DEFAULT_BLOCK)
        send = torch.zeros(world * cb, dtype=torch.uint8, device=device)
        recv, gath, mine = torch.empty_like(send), torch.empty_like(send), torch.zeros(cb, dtype=torch.uint8,
                                                                                      device=device)
        ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

        def transport():
            dist.all_to_all_single(recv, send)
            ag(gath, mine)

        t_tr = measure(transport)
        t_tr_ag = None
        if world == 2:  # the transport the NCCL path runs at two ranks: two all-gathers (the exchange is one)
            t_tr_ag = measure(lambda: (ag(recv, send[:cb]), ag(gath, mine)))
        del send, recv, gath, mine
        per_size[mb] = {}
        for qd in args.dtypes:
            paths = ["nccl"] + (["peer"] if peer_ok else [])
            for path in paths:
                for block in [DEFAULT_BLOCK] + (args.sweep_blocks if mb in args.sweep_mb and qd == "int8" else []):
                    out = torch.empty_like(x)
                    try:
                        all_reduce(x, group=None, dtype=qd, block=block, out=out, path=path)
                        err = _relerr(out, ref)
                    except Exception:
                        if rank == 0:
                            traceback.print_exc()
                        err = float("nan")
                    t = measure(lambda: all_reduce(x, dtype=qd, block=block, out=out, path=path))
                    if block == DEFAULT_BLOCK:
                        per_size[mb][(qd, path)] = t
                    rows.append({"world": world, "MB": mb, "dtype": qd, "path": path, "block": block, "halo_ms": t,
                                 "nccl_bf16_ms": t_bf16, "nccl_transport_ms": t_tr, "relerr": err,
                                 "relerr_nccl_bf16": err_bf16, "speedup_vs_bf16": t_bf16 / t if t == t else None,
                                 "frac_of_transport_ceiling": (t_tr / t) if path == "nccl" and t == t else None,
                                 "nccl_transport_2ag_ms": t_tr_ag})
        def env_row(key, value, path, label, block=DEFAULT_BLOCK, ceiling=False):
            """An A/B row: all_reduce(path=path) with os.environ[key] = value (halo_ext's settings re-read around
            it); ceiling: an NCCL-path row, with its fraction of the transport ceiling."""
            os.environ[key] = value
            reload_settings()
            try:
                out = torch.empty_like(x)
                all_reduce(x, block=block, out=out, path=path)
                err = _relerr(out, ref)
                t = measure(lambda: all_reduce(x, block=block, out=out, path=path))
            finally:
                del os.environ[key]
                reload_settings()
            row = {"world": world, "MB": mb, "dtype": "int8", "path": label, "block": block, "halo_ms": t,
                   "nccl_bf16_ms": t_bf16, "nccl_transport_ms": t_tr, "relerr": err, "relerr_nccl_bf16": err_bf16,
                   "speedup_vs_bf16": t_bf16 / t if t == t else None,
                   "frac_of_transport_ceiling": t_tr / t if ceiling and t == t else None}
            if ceiling:
                row["nccl_transport_2ag_ms"] = t_tr_ag
            rows.append(row)

        if peer_ok and mb in args.sweep_mb:
            for le in args.sweep_lane_elems:
                for block in sorted({DEFAULT_BLOCK, 64, 128, 256}):
                    env_row("HALO_QCOMM_LANE_ELEMS", str(le), "peer", f"peer:lane{le}", block)
        if not smoke:  # the NCCL path as a replayed CUDA graph (HALO_AR_GRAPH=1)
            env_row("HALO_AR_GRAPH", "1", "nccl", "nccl:graph", ceiling=True)
        if world == 2 and mb in args.sweep_mb:  # A/B: the all-to-all of the NCCL path as one all-gather
            env_row("HALO_AR_EXCHANGE", "allgather", "nccl", "nccl:allgather-exchange", ceiling=True)
        if peer_ok and mb in args.sweep_mb:  # A/B: reduce + unpack fused (per-tile flags) or two kernels + barrier
            env_row("HALO_AR_FUSED", "1", "peer", "peer:fused")
            env_row("HALO_AR_FUSED", "0", "peer", "peer:unfused")
        if mb in (256, 1024) or smoke:
            for pmb in args.sweep_piece_mb:
                os.environ["HALO_AR_PIECE_BYTES"] = str(int(pmb * (1 << 20)))
                reload_settings()
                try:
                    out = torch.empty_like(x)
                    t = measure(lambda: all_reduce(x, out=out, path="nccl"))
                finally:
                    del os.environ["HALO_AR_PIECE_BYTES"]
                    reload_settings()
                rows.append({"world": world, "MB": mb, "dtype": "int8", "path": f"nccl:piece{pmb:g}MB",
                             "block": DEFAULT_BLOCK, "halo_ms": t, "nccl_bf16_ms": t_bf16, "nccl_transport_ms": t_tr,
                             "relerr": None, "relerr_nccl_bf16": err_bf16,
                             "speedup_vs_bf16": t_bf16 / t if t == t else None,
                             "frac_of_transport_ceiling": t_tr / t if t == t else None})
        per_size[mb]["bf16"] = t_bf16
        del x, ref, y, buf
        if not smoke:
            torch.cuda.empty_cache()
        if rank == 0:
            print(f"  {mb} MB done", flush=True)

    # fallback threshold for this world size: smallest size from which a quantized path wins by >= 10% at every
    # larger size
    thr_mb = None
    for mb in reversed(all_sizes):
        best = min(v for k, v in per_size[mb].items() if k != "bf16" and k[0] == "int8" and v == v)
        if best < 0.9 * per_size[mb]["bf16"]:
            thr_mb = mb
        else:
            break
    thr_bytes = int(thr_mb * (1 << 20)) if thr_mb is not None else 1 << 62
    t = torch.tensor([thr_bytes], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    thr_bytes = int(t)
    os.environ["HALO_AR_FALLBACK_BYTES"] = str(thr_bytes)
    reload_settings()
    for mb in all_sizes:
        n = int(mb * (1 << 20) // 2)
        g = torch.Generator(device=device).manual_seed(1234 + rank)
        x = torch.randn(n, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
        ref = x.float()
        dist.all_reduce(ref)
        chosen = last_path(x)
        out = torch.empty_like(x)
        all_reduce(x, out=out)
        err = _relerr(out, ref)
        # in place, like the peer (dist.all_reduce is in place): an out-of-place fallback would pay a copy the peer
        # does not; the peer is re-measured right here, interleaved, so drift over the run cancels
        buf_q, buf_b = x.clone(), x.clone()
        tb, tt = [], []
        for _ in range(3):
            tb.append(measure(lambda: dist.all_reduce(buf_b)))
            tt.append(measure(lambda: all_reduce(buf_q)))
        tb, tt = statistics.median(tb), statistics.median(tt)
        base = next(r for r in rows if r["MB"] == mb)
        rows.append({"world": world, "MB": mb, "dtype": "int8", "path": f"auto:{chosen}", "block": DEFAULT_BLOCK,
                     "halo_ms": tt, "nccl_bf16_ms": tb, "nccl_transport_ms": base["nccl_transport_ms"],
                     "relerr": err, "relerr_nccl_bf16": base["relerr_nccl_bf16"],
                     "speedup_vs_bf16": tb / tt if tt == tt else None, "inplace": True,
                     "frac_of_transport_ceiling": None})
        del x, ref, out, buf_q, buf_b
    if rank == 0:
        cols = ["world", "MB", "dtype", "path", "block", "halo_ms", "nccl_bf16_ms", "nccl_transport_ms",
                "speedup_vs_bf16", "frac_of_transport_ceiling", "relerr", "relerr_nccl_bf16"]
        print_table(rows, cols)
        print(f"measured fallback threshold for world={world}: {thr_bytes} bytes "
              f"(set FALLBACK_BYTES[{world}] in python/halo_ext/distributed/allreduce.py)", flush=True)
        if not smoke:
            extra = {"nccl": ".".join(map(str, torch.cuda.nccl.version())) if isinstance(
                torch.cuda.nccl.version(), tuple) else str(torch.cuda.nccl.version()),
                f"fallback_bytes_world{world}": thr_bytes, "peer_path_available": peer_ok,
                "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                        "NVSHMEM_DISABLE_NVLS")}}
            path = write_results("allreduce", rows, merge_key=("world", "MB", "dtype", "path", "block"), extra=extra)
            print(f"wrote {path}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
