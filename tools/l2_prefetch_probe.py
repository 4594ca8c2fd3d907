"""A/B of the L2 prefetch distance of the persistent memory-bound kernels (halo_ext._C.set_l2_prefetch_tiles):
ey_quantize, hadamard_quantize (power-of-two route, q and q + qt: its passes and the transpose) and the plain
power-of-two hadamard, at the tensor shapes of the LLaMA-3-8B layers HaloLinear's benchmarks use, bf16 input,
int8 codes. Distances are interleaved over --rounds rounds (median of per-round medians, L2 flushed before each
call); torch.clone of the same input gives the bandwidth bound each op's bytes are compared with.
Usage: python tools/l2_prefetch_probe.py [--tiles 0,1,2,3] [--out FILE]"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from _common import device_facts, time_ms  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.linear import _token_signs  # noqa: E402


def cases():
    """(name, shape, fn(x), bytes moved per call with the two-pass design)."""
    qd = torch.int8
    signs = _token_signs(256).cuda()
    out = []
    for shape in [(8192, 14336), (8192, 4096)]:  # E_Y of 8192x4096->14336 / ->4096
        n = shape[0] * shape[1]
        out.append(("ey_quantize(rot+t)", shape, lambda x: torch.ops.halo.ey_quantize(x, qd, 256, signs), 6 * n))
    for shape, block in [((14336, 4096), 0), ((8192, 4096), 0), ((8192, 14336), 2048), ((4096, 14336), 2048)]:
        n = shape[0] * shape[1]
        out.append((f"hadamard_quantize(q+qt, block {block or shape[1]})", shape,
                    lambda x, b=block: halo_ext.hadamard_quantize(x, qd, block=b, want_qt=True), 7 * n))
        out.append((f"hadamard_quantize(q, block {block or shape[1]})", shape,
                    lambda x, b=block: halo_ext.hadamard_quantize(x, qd, block=b), 5 * n))
    n = 8192 * 14336  # the full-length non-power-of-two transform (dense factor 28 x 512): issue 2's sizes
    out.append(("hadamard_quantize(q, dense 14336)", (8192, 14336),
                lambda x: halo_ext.hadamard_quantize(x, qd), 5 * n))
    for shape, block in [((8192, 4096), 0), ((8192, 14336), 2048), ((8192, 14336), 0)]:
        n = shape[0] * shape[1]
        out.append((f"hadamard(block {block or shape[1]})", shape, lambda x, b=block: halo_ext.hadamard(x, block=b),
                    4 * n))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", default="0,1,2,3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/l2_prefetch_probe.json")
    args = ap.parse_args()
    C = halo_ext._C
    dists = [int(t) for t in args.tiles.split(",")]
    before = C.l2_prefetch_tiles()
    rows = []
    for name, shape, fn, nbytes in cases():
        torch.manual_seed(0)
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        times, clone = {}, []
        for _ in range(args.rounds):
            clone.append(time_ms(lambda: x.clone()))
            for d in dists:
                C.set_l2_prefetch_tiles(d)
                times.setdefault(d, []).append(time_ms(lambda: fn(x)))
        clone_ms = statistics.median(clone)
        clone_tbps = 4 * x.numel() / clone_ms / 1e9
        base = statistics.median(times[dists[0]])
        for d in dists:
            ms = statistics.median(times[d])
            rows.append({"op": name, "shape": list(shape), "l2_prefetch_tiles": d, "ms": ms, "rounds_ms": times[d],
                         "TBps": nbytes / ms / 1e9, "clone_TBps": clone_tbps,
                         "frac_of_bound": nbytes / ms / 1e9 / clone_tbps, f"speedup_vs_{dists[0]}": base / ms})
            print(f"{name:40s} {str(shape):14s} tiles {d}: {ms:.4f} ms  {nbytes / ms / 1e9:5.2f} TB/s  "
                  f"{nbytes / ms / 1e9 / clone_tbps:.3f} of clone  x{base / ms:.3f}", flush=True)
        del x
    C.set_l2_prefetch_tiles(before)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**device_facts(), "rounds": args.rounds, "rows": rows}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
