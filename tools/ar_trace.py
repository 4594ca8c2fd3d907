"""Where the time of halo_ext.distributed.all_reduce goes (diagnostic, not a benchmark).

    torchrun --nproc_per_node=2 tools/ar_trace.py [--out DIR]

For a few cases (NCCL bf16 all_reduce, path=fallback, path=nccl, path=peer at small and large sizes) rank 0 prints:
  ev_flush_ms  CUDA-event time with an L2 flush before each call (what bench/allreduce_bench.py reports)
  ev_ms        CUDA-event time, no flush (back-to-back calls, one sync each)
  host_ms      host time of one call (perf_counter around the call, no sync)
  tput_ms      20 calls back to back, one sync at the end, per call
and a kernel timeline (torch.profiler, one call) per case: kernel name, stream, start and duration in us, so
overlap of the quantize/reduce kernels with the NCCL kernels can be read off. Chrome traces go to DIR.
"""
import argparse
import gzip
import json
import os
import statistics
import sys
import time

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_k, _v)

import torch
import torch.distributed as dist

from halo_ext.distributed import all_reduce, reload_settings


def ev_time(fn, flush, iters=15):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def host_time(fn, iters=15):
    ts = []
    for _ in range(iters):
        torch.cuda.synchronize()
        dist.barrier()
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(ts)


def tput(fn, n=20):
    fn()
    torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / n


def _with_env(key, value, fn):
    """fn() with os.environ[key] = value (halo_ext's all-reduce settings re-read before and after)."""
    old = os.environ.get(key)
    os.environ[key] = value
    reload_settings()
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(key)
        else:
            os.environ[key] = old
        reload_settings()


def timeline(fn, path):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    with open(path) as f:
        tr = json.load(f)
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        g.write(f.read())
    os.remove(path)
    ev = [e for e in tr.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy",
                                                                                          "gpu_memset")]
    cpu = [e for e in tr.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    if not ev:
        return [], []
    t0 = min([e["ts"] for e in ev] + [e["ts"] for e in cpu])
    rows = [(e["name"][:60], e.get("tid"), e["ts"] - t0, e["dur"]) for e in sorted(ev, key=lambda e: e["ts"])]
    # host side: the halo ops, c10d collectives and waits, with their start (same clock) and duration
    keep = ("halo::", "c10d", "nccl:", "record_param_comms", "aten::empty", "cudaStreamWaitEvent", "cudaEventRecord")
    host = [(e["name"][:60], "cpu", e["ts"] - t0, e["dur"]) for e in sorted(cpu, key=lambda e: e["ts"])
            if e["name"].startswith(keep) or e["dur"] >= 20]
    return rows, host


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--sizes-mb", type=float, nargs="*", default=[1, 4, 8, 64, 256])
    ap.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default: all)")
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=dev)
    rank = dist.get_rank()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    summary = []
    for mb in args.sizes_mb:
        n = int(mb * (1 << 20)) // 2
        x = torch.randn(n, device=dev).to(torch.bfloat16)
        buf = x.clone()
        buf2 = x.clone()
        out = torch.empty_like(x)
        cases = {
            "nccl_bf16": lambda: dist.all_reduce(buf),
            "copy+nccl_bf16": lambda: (out.copy_(x), dist.all_reduce(out)),
            "halo_fallback": lambda: all_reduce(x, out=out, path="fallback"),
            "halo_nccl": lambda: all_reduce(x, out=out, path="nccl"),
            "halo_nccl_graph": lambda: _with_env("HALO_AR_GRAPH", "1", lambda: all_reduce(x, out=out, path="nccl")),
            "halo_peer": lambda: all_reduce(x, out=out, path="peer"),
            "halo_peer_inplace": lambda: all_reduce(buf2, path="peer"),
            "halo_peer_fused": lambda: _with_env("HALO_AR_FUSED", "1", lambda: all_reduce(x, out=out, path="peer")),
            "halo_auto_inplace": lambda: all_reduce(buf2),
            "halo_peer_b256": lambda: all_reduce(x, out=out, path="peer", block=256),
            "halo_peer_lane8": lambda: _with_env("HALO_QCOMM_LANE_ELEMS", "8",
                                                 lambda: all_reduce(x, out=out, path="peer")),
        }
        for name, fn in cases.items():
            if args.cases and name not in args.cases:
                continue
            try:
                r = {"MB": mb, "case": name, "ev_flush_ms": ev_time(fn, flush), "ev_ms": ev_time(fn, None),
                     "host_ms": host_time(fn), "tput_ms": tput(fn)}
                rows, host = timeline(fn, os.path.join(args.out, f"trace_r{rank}_{name}_{mb:g}MB.json"))
            except Exception as e:  # keep going
                r, rows, host = {"MB": mb, "case": name, "error": repr(e)}, [], []
            summary.append(r)
            if rank == 0:
                print(json.dumps(r), flush=True)
                for k in rows[:60]:
                    print(f"    {k[0]:<60} stream {k[1]!s:>6} start {k[2]:9.1f} us  dur {k[3]:8.1f} us")
                if len(rows) > 60:
                    print(f"    ... {len(rows) - 60} more kernels")
                for k in host[:40]:
                    print(f"    host {k[0]:<55} start {k[2]:9.1f} us  dur {k[3]:8.1f} us")
        del x, buf, buf2, out
    if rank == 0:
        with open(os.path.join(args.out, "ar_trace.json"), "w") as f:
            json.dump(summary, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
