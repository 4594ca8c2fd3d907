#!/usr/bin/env python3
"""Where hadamard_quantize's time goes, pass by pass, against the byte bound issue 2 sets (0.8 of it).

For each dim n (bf16, 2^27 elements, L2 flushed before each call, medians of 3 interleaved rounds):
  clone      torch.clone (the bandwidth bound: 4 B/element)
  hadamard   the transform alone (4 B/element)
  q          hadamard_quantize, both passes (two-pass bound: 5 B/element)
  pass2      hadamard_quantize with amax given (pass 1 skipped: 3 B/element)
  q+qt, pass2+t  the same with the transposed copy (6 and 4 B/element)
pass 1 = q - pass2, transpose = (q+qt) - q. "need" is the time 0.8 of the two-pass bound allows, and
"pass1_over_budget" how far pass 1 alone is from fitting the share of that budget its 2 B/element would get.
pass 1 reads 2 B/element and the transform moves 4: where pass 1 takes about as long as the transform, pass 1 is
bound by its arithmetic and shared-memory work, not by DRAM.

  python tools/hq_pass_probe.py [--cols 4096 8192 ...] [--ab-env VAR] [--out hq_pass_probe.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import halo_ext  # noqa: E402
from _common import rows_for, time_ms, warm_up_gpu, write_doc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cols", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 14336, 11008, 28672])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ab-env", default=None, help="also time q, pass2 and q+qt with this variable set")
    ap.add_argument("--ab-value", default="1", help="the value --ab-env gets (default 1)")
    ap.add_argument("--out", default="hq_pass_probe.json")
    args = ap.parse_args()
    if not halo_ext.cuda_available():
        sys.exit("hq_pass_probe: needs a CUDA GPU and a CUDA build of halo_ext")
    qd = torch.int8
    rows_out = []
    warm_up_gpu()
    for cols in args.cols:
        rows = rows_for(cols)
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        n = x.numel()
        _, _, s = halo_ext.hadamard_quantize(x, qd)
        amax = (s * 127.0).float().reshape(1)
        calls = {
            "clone": lambda: x.clone(),
            "hadamard": lambda: halo_ext.hadamard(x),
            "q": lambda: halo_ext.hadamard_quantize(x, qd),
            "pass2": lambda: halo_ext.hadamard_quantize(x, qd, amax=amax),
            "q+qt": lambda: halo_ext.hadamard_quantize(x, qd, want_qt=True),
            "pass2+t": lambda: halo_ext.hadamard_quantize(x, qd, want_qt=True, amax=amax),
        }
        if args.ab_env:  # the same calls with args.ab_env set, interleaved with the others
            for k in ("q", "pass2", "q+qt"):
                calls[k + "@ab"] = calls[k]
        samples = {k: [] for k in calls}
        for _ in range(args.rounds):
            for k, fn in calls.items():
                ab = k.endswith("@ab")
                if ab:
                    os.environ[args.ab_env] = args.ab_value
                try:
                    samples[k].append(time_ms(fn, warmup=3, iters=15))
                finally:
                    if ab:
                        del os.environ[args.ab_env]
        t = {k: statistics.median(v) for k, v in samples.items()}
        bw = 4 * n / t["clone"] / 1e9  # TB/s (bytes per ms / 1e9)
        need_q = 5 / 4 * t["clone"] / 0.8  # ms that 0.8 of the two-pass bound (5 B/element) allows
        need_qqt = 6 / 4 * t["clone"] / 0.8
        r = {"cols": cols, "rows": rows, "clone_TBps": bw}
        r.update({f"{k}_ms": v for k, v in t.items()})
        r["pass1_ms"] = t["q"] - t["pass2"]
        r["transpose_ms"] = t["q+qt"] - t["q"]
        r["had_frac_clone"] = t["clone"] / t["hadamard"]
        r["q_frac_2pass"] = need_q * 0.8 / t["q"]
        r["qqt_frac_2pass"] = need_qqt * 0.8 / t["q+qt"]
        r["q_need_ms"] = need_q
        if args.ab_env:
            r["q_frac_2pass@ab"] = need_q * 0.8 / t["q@ab"]
            r["qqt_frac_2pass@ab"] = need_qqt * 0.8 / t["q+qt@ab"]
            r["pass1_ms@ab"] = t["q@ab"] - t["pass2@ab"]
        # pass 1's share of the budget by bytes (2 of 5), and pass 2's (3 of 5)
        r["pass1_over_budget"] = r["pass1_ms"] / (need_q * 2 / 5)
        r["pass2_over_budget"] = t["pass2"] / (need_q * 3 / 5)
        rows_out.append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        del x
        torch.cuda.empty_cache()
    print("wrote", write_doc(args.out, rows_out))


if __name__ == "__main__":
    main()
