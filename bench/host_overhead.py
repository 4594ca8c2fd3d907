"""Host (CPU) time per call of halo-ext's ops and of one HaloLinear forward+backward, vs torch peers in the same run.

Why: at the ~1B preset's shapes a HALO layer measured 0.87 ms end to end for 0.39 ms of GPU work (notes/halo_linear.md,
"Layers of a ~1B model"): the layer is bound by the host. This script measures that directly: N back-to-back calls at
small shapes (the GPU finishes each call before the host has issued the next one), timed on the host with one
synchronize at the end; `host_us` = wall time / N. `gpu_us` = CUDA-event time of one call queued behind a spin
kernel (so no host gaps inside it), so host_us > gpu_us means the call is host-bound at that shape.

    python bench/host_overhead.py            # writes bench/results/host_overhead.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_results  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.linear import _XQ_CACHE  # noqa: E402


def host_us(fn, n: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def gpu_us(fn, n: int = 20) -> float:
    """GPU time of one call without host gaps: a ~5 ms spin kernel runs first, so the host has issued the whole call
    before the GPU reaches the start event."""
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(10_000_000)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not halo_ext.cuda_available():
        sys.exit("host_overhead: needs a CUDA GPU and a CUDA build of halo_ext")
    M, D = args.tokens, args.dim
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(D, D, device="cuda", dtype=torch.bfloat16)
    q8, _, s8 = halo_ext.hadamard_quantize(x, torch.int8)
    w8, _, sw = halo_ext.hadamard_quantize(w, torch.int8)
    signs = torch.ones(256, device="cuda")
    ey = torch.randn(max(M, 256), D, device="cuda", dtype=torch.bfloat16)
    ops = {
        "torch.clone (peer)": lambda: x.clone(),
        "torch.mm bf16 (peer)": lambda: torch.mm(x, w.t()),
        "halo.hadamard": lambda: halo_ext.hadamard(x),
        "halo.hadamard_quantize q+qt": lambda: halo_ext.hadamard_quantize(x, torch.int8, want_qt=True),
        "halo.ey_quantize rot+t": lambda: torch.ops.halo.ey_quantize(ey, torch.int8, 256, signs),
        "halo.qgemm int8": lambda: halo_ext.qgemm(q8, w8, s8, sw, torch.bfloat16),
    }
    rows = []
    for name, fn in ops.items():
        rows.append({"what": name, "shape": f"{M}x{D}", "host_us": host_us(fn, args.n), "gpu_us": gpu_us(fn)})
    xr = torch.randn(M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    lin = nn.Linear(D, D, bias=False, device="cuda", dtype=torch.bfloat16)
    layers = {"nn.Linear bf16 (peer)": lin}
    for level in (0, 2):
        for prec in ("int8", "fp8"):
            layers[f"HaloLinear L{level} {prec}"] = halo_ext.HaloLinear.from_linear(lin, level=level, precision=prec)
    for name, mod in layers.items():
        def fb(mod=mod):
            _XQ_CACHE.clear()  # a new input each call, as in training (see bench/linear_bench.py: fwd_bwd)
            y = mod(xr)
            return torch.autograd.grad(y, (xr, mod.weight), g)
        rows.append({"what": name + " fwd+bwd", "shape": f"{M}x{D}->{D}", "host_us": host_us(fb, args.n),
                     "gpu_us": gpu_us(fb)})
    for r in rows:
        r["host_bound"] = r["host_us"] > r["gpu_us"]
    print_table(rows, ["what", "shape", "host_us", "gpu_us", "host_bound"])
    print("wrote", write_results("host_overhead", rows, extra={"n": args.n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
