"""Single-GPU smoke test and host-cost probe of the CUDA-graph NCCL path (HALO_AR_GRAPH=1), on a one-rank NCCL
process group (diagnostic; the two-rank checks are in tests/dist/allreduce_gpu_check.py).

    python tools/ar_graph_probe.py

It runs the NCCL pipeline (_two_shot_pg: pack, all_to_all, reduce, all_gather, unpack; world 1) eagerly and as
replayed graphs (first call: eager + capture), checks that they agree bit for bit (1 and 3 pipeline pieces), and
prints the host time per call of each, back to back.
"""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def main():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 0)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
    from halo_ext.distributed import allreduce as A
    fails = []
    for n, piece in ((1 << 20, 1 << 30), (3 << 20, 1 << 20)):
        x = torch.randn(n, device=dev).to(torch.bfloat16)
        ref, out = torch.empty_like(x), torch.empty_like(x)
        A._two_shot_pg(x, ref, None, 1, 1.0, torch.int8, 64, piece)
        for rep in range(4):
            out.fill_(float("nan"))
            A._two_shot_pg_graph(x, out, None, 1, 1.0, torch.int8, 64, piece)
            torch.cuda.synchronize()
            if not torch.equal(out, ref):
                fails.append(f"n={n} piece={piece} call {rep}: graph differs from eager")
        print(f"n={n} pieces={-(-n // piece)}: graphs cached {len(A._GRAPHS)}, broken {A._GRAPH_BROKEN}", flush=True)

        def per_call(fn, k=200):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(k):
                fn()
            h = (time.perf_counter() - t) * 1e6 / k
            torch.cuda.synchronize()
            return h, (time.perf_counter() - t) * 1e6 / k

        eager = [per_call(lambda: A._two_shot_pg(x, out, None, 1, 1.0, torch.int8, 64, piece)) for _ in range(3)]
        graph = [per_call(lambda: A._two_shot_pg_graph(x, out, None, 1, 1.0, torch.int8, 64, piece)) for _ in range(3)]
        print(f"  eager: host {statistics.median(e[0] for e in eager):.1f} us/call, with sync "
              f"{statistics.median(e[1] for e in eager):.1f}; graph: host {statistics.median(g[0] for g in graph):.1f}"
              f" us/call, with sync {statistics.median(g[1] for g in graph):.1f}", flush=True)
    print("GRAPH PROBE " + ("PASSED" if not fails else "FAILED:\n" + "\n".join(fails)), flush=True)
    dist.destroy_process_group()
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())
