"""A/B of sm90 qgemm configurations on the GEMMs of one HaloLinear call (forward, input gradient plain and with the
row Hadamard of HALO-2's token undo, weight gradient) at the LLaMA-3-8B layer shapes, int8 -> bf16.

Each configuration is forced with halo_ext._C.set_qgemm_sm90_config (it applies to every family that has the
index; -1 = the heuristic); configurations are interleaved over --rounds rounds, median of per-round medians.
Usage: python tools/gemm_config_probe.py [--configs -1,1] [--rowhad-configs 0] [--out FILE]
(Session 10 ran it with a 64x256 pingpong kernel as int8 config 2 / row-Hadamard config 1, since removed:
bench/results/gemm_config_probe.json, notes/gemm_configs.md.)"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from _common import device_facts, time_ms  # noqa: E402

import halo_ext  # noqa: E402

SHAPES = [(8192, 4096, 4096), (8192, 4096, 14336), (8192, 14336, 4096)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="-1,1")
    ap.add_argument("--rowhad-configs", default="0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/gemm_config_probe.json")
    args = ap.parse_args()
    C = halo_ext._C
    cfgs = [int(c) for c in args.configs.split(",")]
    rcfgs = [int(c) for c in args.rowhad_configs.split(",")]
    rows = []
    for M, K, N in SHAPES:
        r8 = lambda *s: torch.randint(-127, 128, s, dtype=torch.int8, device="cuda")  # noqa: E731
        x, w, ey, wt, eyt, xt = r8(M, K), r8(N, K), r8(M, N), r8(K, N), r8(N, M), r8(K, M)
        one = torch.ones(1, device="cuda") * 1e-6
        rs = (torch.randint(0, 2, (256,), device="cuda").float() * 2 - 1).repeat(M // 256) * 1e-6
        gemms = {"fwd": (x, w, one, 0), "ex": (ey, wt, one, 0), "ex_rowhad": (ey, wt, rs, 256),
                 "g": (eyt, xt, one, 0)}
        times = {}
        for _ in range(args.rounds):
            for name, (a, b, sa, rh) in gemms.items():
                for c in (rcfgs if rh else cfgs):
                    C.set_qgemm_sm90_config(c)
                    t = time_ms(lambda: halo_ext.qgemm(a, b, sa, one, torch.bfloat16, None, rh))
                    times.setdefault((name, c), []).append(t)
            C.set_qgemm_sm90_config(-1)
        for (name, c), ts in times.items():
            a, b = gemms[name][0], gemms[name][1]
            ms = statistics.median(ts)
            flops = 2 * a.shape[0] * b.shape[0] * a.shape[1]
            rows.append({"M": M, "K": K, "N": N, "gemm": name, "config": c, "ms": ms, "tops": flops / ms / 1e9,
                         "rounds_ms": ts})
            print(f"{M}x{K}->{N} {name:10s} config {c:2d}: {ms:.3f} ms  {flops / ms / 1e9:7.1f} TOPS")
    names = {"int8": C.qgemm_sm90_configs("int8")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**device_facts(), "configs": names, "rows": rows}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
