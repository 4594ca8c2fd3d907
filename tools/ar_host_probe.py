"""Host cost of the small-message all-reduce paths (diagnostic, not a benchmark).

    torchrun --nproc_per_node=2 tools/ar_host_probe.py [--mb 0.0625] [--no-ext]

For one small bf16 tensor, rank 0 prints microseconds per call, back to back (one sync at the end, 3 interleaved
rounds, median) of: dist.all_reduce as the bench's peer calls it, the same call with the arguments halo_ext passes,
halo_ext's auto all_reduce (below the fallback threshold: the plain NCCL call), and halo_ext's all_reduce with the
NCCL call replaced by a no-op (its own Python only), plus a few of the helpers it calls. --no-ext loads
python/halo_ext/distributed/allreduce.py without the compiled extension (a stub halo_ext), so no build is needed.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time
import types

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from _common import time_ms  # noqa: E402


def load_allreduce(no_ext: bool):
    if not no_ext:
        import halo_ext.distributed.allreduce as A
        return A
    sys.modules.setdefault("halo_ext", types.ModuleType("halo_ext"))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "halo_ext", "distributed",
                        "allreduce.py")
    spec = importlib.util.spec_from_file_location("_halo_allreduce_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def per_call_us(fn, n: int, sync: bool) -> float:
    for _ in range(20):
        fn()
    if sync:
        torch.cuda.synchronize()
        dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e6 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=0.0625)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--no-ext", action="store_true")
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=dev)
    rank = dist.get_rank()
    A = load_allreduce(args.no_ext)
    x = torch.randn(int(args.mb * (1 << 20)) // 2, device=dev).to(torch.bfloat16)
    real_plain = A._plain_all_reduce

    def halo_python_only():
        A._plain_all_reduce = lambda buf, group, world, avg: None
        try:
            A.all_reduce(x)
        finally:
            A._plain_all_reduce = real_plain

    world = dist.get_world_size()
    send = torch.zeros(world * 4096, dtype=torch.uint8, device=dev)
    recv, gath, mine = torch.empty_like(send), torch.empty_like(send), torch.zeros(4096, dtype=torch.uint8, device=dev)

    def a2a_ag(async_op: bool):
        w = dist.all_to_all_single(recv, send, async_op=async_op)
        if async_op:
            w.wait()
        w = dist.all_gather_into_tensor(gath, mine, async_op=async_op)
        if async_op:
            w.wait()

    collectives = {
        "dist.all_reduce(x)": lambda: dist.all_reduce(x),
        "dist.all_reduce(x, op=SUM, group=None)": lambda: dist.all_reduce(x, op=dist.ReduceOp.SUM, group=None),
        "halo _plain_all_reduce": lambda: A._plain_all_reduce(x, None, 2, False),
        "halo all_reduce (auto)": lambda: A.all_reduce(x),
        "all_to_all_single + all_gather, sync": lambda: a2a_ag(False),
        "all_to_all_single + all_gather, async+wait": lambda: a2a_ag(True),
    }
    local_only = {
        "halo all_reduce, NCCL call stubbed": halo_python_only,
        "dist.get_world_size()": lambda: dist.get_world_size(None),
        "A._fallback_bytes(2)": lambda: A._fallback_bytes(2),
        "A._parse_op('sum')": lambda: A._parse_op("sum"),
        "empty python lambda": lambda: None,
    }
    res = {k: [] for k in list(collectives) + list(local_only)}
    ev = {k: [] for k in ("dist.all_reduce(x)", "halo all_reduce (auto)")}
    for _ in range(3):
        for k, fn in collectives.items():
            res[k].append(per_call_us(fn, args.calls, True))
        for k, fn in local_only.items():
            res[k].append(per_call_us(fn, args.calls * 10, False))
        for k in ev:  # the bench's method: L2 flush, events, one sync per call (bench/_common.time_ms), median
            for spin in (0, 2_000_000):
                ev[k].append((spin, time_ms(collectives[k], warmup=5, iters=25, spin_cycles=spin) * 1e3))
    dist.barrier()
    lines = [f"rank {rank}: {x.numel() * 2} bytes bf16, world {dist.get_world_size()}, torch {torch.__version__}, "
             f"python {sys.version.split()[0]}, ext {'stub' if args.no_ext else 'built'}"]
    for k, v in res.items():
        lines.append(f"  {k:<42} {statistics.median(v):8.2f} us/call  rounds {[round(t, 2) for t in v]}")
    for k, v in ev.items():
        for spin in (0, 2_000_000):
            t = [round(u, 1) for s, u in v if s == spin]
            lines.append(f"  time_ms {'flush' if not spin else 'flush+spin'} {k:<30} us, rounds {t}")
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, "\n".join(lines))
    if rank == 0:
        print("\n".join(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
