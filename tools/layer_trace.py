"""Kernel timeline of one HaloLinear forward+backward (device only): where the time of a layer call goes in situ.

For each shape (tokens x in -> out) and level, runs a few warm-up calls, then profiles `--iters` calls back to back
with torch.profiler (CUDA activity only) and reports, for the last call: every kernel (name, start relative to the
call's first kernel, duration), the idle gaps between consecutive kernels, and the totals (span = first kernel start
to last kernel end; busy = sum of kernel durations; idle = span - busy). Unlike linear_bench.py --breakdown, each
step runs with whatever the previous step left in L2, as in training.
Usage: python tools/layer_trace.py [--shapes 0,1,2] [--levels 2] [--precision int8] [--out FILE.json]
"""
import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from linear_bench import SHAPES  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.linear import _XQ_CACHE  # noqa: E402


def short(name: str) -> str:
    for key in ("ey_amax", "ey_quant", "transpose", "pow2", "dense", "generic", "amax", "quant", "gemm", "Gemm",
                "memset", "elementwise", "reduce"):
        if key in name:
            return key + ": " + name[:90]
    return name[:100]


def trace(M, K, N, level, precision, iters):
    torch.manual_seed(0)
    lin = halo_ext.HaloLinear(K, N, bias=False, level=level, precision=precision).cuda().to(torch.bfloat16)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)

    def call():
        _XQ_CACHE.clear()  # a new input each call, as in training (bench/linear_bench.py: fwd_bwd)
        y = lin(x)
        torch.autograd.grad(y, (x, lin.weight), g)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    marks = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            # a tiny marker kernel separates the calls in the timeline
            marks.append(torch.empty(1, device="cuda").fill_(1.0))
            call()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0]
    ev.sort(key=lambda e: e.time_range.start)
    # the last call: the kernels after the last fill_ marker
    fills = [i for i, e in enumerate(ev) if "fill" in e.name.lower()]
    ks = ev[fills[-1] + 1:] if fills else ev
    t0 = ks[0].time_range.start
    rows, busy, prev_end = [], 0.0, None
    for e in ks:
        s, d = e.time_range.start, e.time_range.elapsed_us()
        gap = 0.0 if prev_end is None else max(0.0, s - prev_end)
        rows.append({"kernel": short(e.name), "start_us": round(s - t0, 2), "dur_us": round(d, 2),
                     "gap_before_us": round(gap, 2)})
        busy += d
        prev_end = s + d if prev_end is None else max(prev_end, s + d)
    span = prev_end - t0
    return {"M": M, "K": K, "N": N, "level": level, "precision": precision, "span_us": round(span, 1),
            "busy_us": round(busy, 1), "idle_us": round(span - busy, 1), "kernels": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="0,1,2")
    ap.add_argument("--levels", default="2")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "traces": []}
    for si in (int(s) for s in args.shapes.split(",")):
        M, K, N = SHAPES[si]
        for level in (int(v) for v in args.levels.split(",")):
            t = trace(M, K, N, level, args.precision, args.iters)
            res["traces"].append(t)
            print(f"== {M}x{K}->{N} level {level} {args.precision}: span {t['span_us']} us, busy {t['busy_us']}, "
                  f"idle {t['idle_us']}")
            for r in t["kernels"]:
                print(f"  {r['start_us']:9.1f} {r['dur_us']:8.1f} gap {r['gap_before_us']:6.1f}  {r['kernel']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
