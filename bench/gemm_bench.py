"""8-bit GEMM throughput: halo.qgemm (CUTLASS sm90a) vs torch peers in the same run, and hadamard_qgemm end to end.

Peers: bf16 torch.mm; int8: torch._int_mm; fp8: torch._scaled_mm tensorwise and rowwise (use_fast_accum matched
to the halo configuration it is compared with). Shapes are M(tokens) x K x N, incl. the LLaMA-3-8B MLP backward.
Every call is timed in 5 interleaved rounds (the order rotated by one each round), back to back (headline
`ratio`, as triton's do_bench times) and waiting for each call (`ratio_sync`, the only method before the seventh
session); see bench_shape. --ab-config N also times qgemm with sm90 configuration N forced, against the heuristic.
Writes bench/results/gemm.json (rows of other dtypes from earlier runs are kept; --name for another file).
Usage: python bench/gemm_bench.py --dtype {fp8,int8,bf16} [--ab-config N --name gemm_ab]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, time_ms, write_results  # noqa: E402

import halo_ext  # noqa: E402

SHAPES = [  # (M, K, N)
    (4096, 4096, 4096), (8192, 4096, 4096), (8192, 4096, 14336), (8192, 14336, 4096), (16384, 8192, 8192),
    (1024, 4096, 4096), (2048, 4096, 4096),
    # LLaMA-3-8B MLP backward at 8192 tokens: input grads (E_Y W) and weight grads (E_Y^T X, K = tokens)
    (8192, 14336, 4096), (8192, 4096, 14336), (14336, 8192, 4096), (4096, 8192, 14336),
]


def tflops(M, K, N, ms):
    return 2 * M * K * N / ms / 1e9


def timers(M, K, N, dtype, ab_config=-1):
    """(name, fn) of every call timed at one shape: the bf16 peer first, then ours and the other peers; with
    ab_config >= 0 also ours with that sm90 configuration forced ("qgemm_cfg")."""
    dev = "cuda"
    xb = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    wb = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / K ** 0.5
    t = [("bf16", lambda: torch.mm(xb, wb.t()))]
    if dtype == "bf16":
        return t
    qd = torch.int8 if dtype == "int8" else torch.float8_e4m3fn
    a, sa = halo_ext.quantize(xb, qd)
    b, sb = halo_ext.quantize(wb, qd)
    t.append(("qgemm", lambda: halo_ext.qgemm(a, b, sa, sb, torch.bfloat16)))
    if ab_config >= 0:
        def forced():
            halo_ext._C.set_qgemm_sm90_config(ab_config)
            try:
                return halo_ext.qgemm(a, b, sa, sb, torch.bfloat16)
            finally:
                halo_ext._C.set_qgemm_sm90_config(-1)
        t.append(("qgemm_cfg", forced))
    if dtype == "int8":
        t.append(("int_mm", lambda: torch._int_mm(a, b.t())))
    else:
        for fast in (True, False):
            t.append((f"scaled_mm_fast{fast}",
                      lambda fast=fast: torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16,
                                                         use_fast_accum=fast)))
        ra = torch.rand(M, 1, device=dev) + 0.5
        rb = torch.rand(1, N, device=dev) + 0.5
        t.append(("scaled_mm_rowwise", lambda: torch._scaled_mm(a, b.t(), ra, rb, out_dtype=torch.bfloat16,
                                                                use_fast_accum=True)))
        t.append(("qgemm_rowwise", lambda: halo_ext.qgemm(a, b, ra.reshape(-1), rb.reshape(-1), torch.bfloat16)))
    # End to end: rotate + quantize x, GEMM against a pre-rotated, pre-quantized weight; vs bf16 x @ w.T.
    qw, _, sw = halo_ext.hadamard_quantize(wb, qd)
    t.append(("hadamard_qgemm", lambda: halo_ext.hadamard_qgemm(xb, qw, qd, w_scale=sw)))
    return t


# (our op, its timer, peer label, peer timer) per dtype
PAIRS = {
    "int8": [("qgemm", "qgemm", "bf16 torch.mm", "bf16"), ("qgemm", "qgemm", "torch._int_mm", "int_mm"),
             ("hadamard_qgemm (w pre-quantized)", "hadamard_qgemm", "bf16 torch.mm", "bf16")],
    "fp8": [("qgemm", "qgemm", "bf16 torch.mm", "bf16"),
            ("qgemm", "qgemm", "torch._scaled_mm tensorwise fast_accum=True", "scaled_mm_fastTrue"),
            ("qgemm", "qgemm", "torch._scaled_mm tensorwise fast_accum=False", "scaled_mm_fastFalse"),
            ("qgemm rowwise", "qgemm_rowwise", "torch._scaled_mm rowwise fast_accum=True", "scaled_mm_rowwise"),
            ("hadamard_qgemm (w pre-quantized)", "hadamard_qgemm", "bf16 torch.mm", "bf16")],
}


def bench_shape(M, K, N, dtype, rows, rounds, ab_config=-1):
    """Times every call of the shape in `rounds` interleaved rounds, two ways each (bench/_common.time_ms): back to
    back (headline: calls queued without waiting, as do_bench and a training loop run them) and waiting for each
    call (the host's latency to the first kernel inside every sample). Figures are medians over the rounds, so one
    slow stretch of the GPU's clocks or of the host does not decide a row."""
    ts = timers(M, K, N, dtype, ab_config)
    samples = {name: {"b2b": [], "sync": []} for name, _ in ts}
    for r in range(rounds):
        # The order rotates by one each round: on H100 a call timed right after bf16 torch.mm ran up to ~10 % slower
        # than the same call a slot later (power management catching up), so a fixed order biased every ratio.
        k = r % len(ts)
        for name, fn in ts[k:] + ts[:k]:
            samples[name]["b2b"].append(time_ms(fn, sync_each=False))
            samples[name]["sync"].append(time_ms(fn, sync_each=True))
    med = {name: {m: statistics.median(v) for m, v in d.items()} for name, d in samples.items()}
    base = {"M": M, "K": K, "N": N, "dtype": dtype, "rounds": rounds}
    if dtype == "bf16":
        rows.append({**base, "op": "torch.mm", "halo_tflops": None, "peer": "bf16 torch.mm",
                     "peer_tflops": tflops(M, K, N, med["bf16"]["b2b"]),
                     "peer_tflops_sync": tflops(M, K, N, med["bf16"]["sync"])})
        return
    pairs = list(PAIRS[dtype])
    if ab_config >= 0:  # the forced configuration against the heuristic's and the peers
        pairs += [(f"qgemm config {ab_config}", "qgemm_cfg", "halo qgemm (heuristic)", "qgemm")]
        pairs += [(f"qgemm config {ab_config}", "qgemm_cfg", peer, theirs) for op, ours, peer, theirs in PAIRS[dtype]
                  if op == "qgemm"]
    for op, ours, peer, theirs in pairs:
        rows.append({**base, "op": op, "halo_tflops": tflops(M, K, N, med[ours]["b2b"]), "peer": peer,
                     "peer_tflops": tflops(M, K, N, med[theirs]["b2b"]),
                     "halo_tflops_sync": tflops(M, K, N, med[ours]["sync"]),
                     "peer_tflops_sync": tflops(M, K, N, med[theirs]["sync"])})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="fp8", choices=["fp8", "int8", "bf16"])
    ap.add_argument("--shapes", default=None, help="M,K,N;M,K,N;... (default: the LLaMA shape list)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved timing rounds, the order of the calls rotated each round (median over them)")
    ap.add_argument("--ab-config", type=int, default=-1,
                    help="also time qgemm with this sm90 configuration index forced (A/B against the heuristic)")
    ap.add_argument("--name", default="gemm", help="results file bench/results/<name>.json")
    args = ap.parse_args()
    if not halo_ext.cuda_available():
        sys.exit("gemm_bench: needs a CUDA GPU and a CUDA build of halo_ext")
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes.split(";")] if args.shapes else SHAPES
    rows = []
    for M, K, N in dict.fromkeys(shapes):
        bench_shape(M, K, N, args.dtype, rows, args.rounds, args.ab_config)
        torch.cuda.empty_cache()
    for r in rows:
        r["ratio"] = r["halo_tflops"] / r["peer_tflops"] if r["halo_tflops"] else None
        r["ratio_sync"] = r["halo_tflops_sync"] / r["peer_tflops_sync"] if r["halo_tflops"] else None
    print_table(rows, ["M", "K", "N", "dtype", "op", "halo_tflops", "peer", "peer_tflops", "ratio", "ratio_sync"])
    print("wrote", write_results(args.name, rows, merge_key=("dtype",),
                                 extra={"qgemm_backend": halo_ext.capabilities().get("qgemm_backend")}))


if __name__ == "__main__":
    main()
