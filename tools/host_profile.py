"""Where the host time of one HaloLinear forward+backward goes (device only).

For a layer shape, measures the host time per call (N calls back to back, one synchronize) of bf16 nn.Linear and
HaloLinear levels 0/2, then profiles HALO-2 calls with torch.profiler (CPU + CUDA activity) and prints the ops and
CUDA runtime/driver calls by self CPU time per call (the profiler adds its own cost per op: read the shares, not the
totals). The input quantization cache is cleared before each call, as in bench/linear_bench.py.
Usage: python tools/host_profile.py [M K N] [--precision int8] [--n 50]
"""
import argparse
import time

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import halo_ext
from halo_ext.linear import _XQ_CACHE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", nargs="*", type=int, default=[8192, 4096, 4096])
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    M, K, N = args.shape
    torch.manual_seed(0)
    lin = nn.Linear(K, N, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    mods = {"nn.Linear bf16": lin}
    for level in (0, 2):
        mods[f"HALO-{level} {args.precision}"] = halo_ext.HaloLinear.from_linear(lin, level=level,
                                                                                 precision=args.precision)

    def call(mod):
        _XQ_CACHE.clear()
        y = mod(x)
        torch.autograd.grad(y, (x, mod.weight), g)

    for name, mod in mods.items():
        for _ in range(10):
            call(mod)
        torch.cuda.synchronize()
        # host time per call: the host issues calls until it waits on the GPU; with a small N relative to the
        # GPU time the queue does not fill, so this is the host's own cost per call
        t0 = time.perf_counter()
        for _ in range(args.n):
            call(mod)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"{name}: host {1e6 * (t1 - t0) / args.n:.1f} us/call issued, {1e6 * (t2 - t0) / args.n:.1f} us/call "
              f"to completion")
    mod = mods[f"HALO-2 {args.precision}"]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.n):
            call(mod)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=70))


if __name__ == "__main__":
    main()
