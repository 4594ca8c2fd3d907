"""8-bit GEMM throughput: halo.qgemm (CUTLASS sm90a) vs torch peers in the same run, and hadamard_qgemm end to end.

Peers: bf16 torch.mm; int8: torch._int_mm; fp8: torch._scaled_mm tensorwise and rowwise (use_fast_accum matched
to the halo configuration it is compared with). Shapes are M(tokens) x K x N, incl. the LLaMA-3-8B MLP backward.
Writes bench/results/gemm.json (rows of other dtypes from earlier runs are kept).
Usage: python bench/gemm_bench.py --dtype {fp8,int8,bf16}
"""
import argparse
import os
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


def bench_shape(M, K, N, dtype, rows):
    dev = "cuda"
    xb = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    wb = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / K ** 0.5
    t_bf16 = time_ms(lambda: torch.mm(xb, wb.t()))
    base = {"M": M, "K": K, "N": N, "dtype": dtype}
    if dtype == "bf16":
        rows.append({**base, "op": "torch.mm", "halo_tflops": None, "peer": "bf16 torch.mm",
                     "peer_tflops": tflops(M, K, N, t_bf16)})
        return
    qd = torch.int8 if dtype == "int8" else torch.float8_e4m3fn
    a, sa = halo_ext.quantize(xb, qd)
    b, sb = halo_ext.quantize(wb, qd)
    t_halo = time_ms(lambda: halo_ext.qgemm(a, b, sa, sb, torch.bfloat16))
    halo_tf = tflops(M, K, N, t_halo)
    rows.append({**base, "op": "qgemm", "halo_tflops": halo_tf, "peer": "bf16 torch.mm",
                 "peer_tflops": tflops(M, K, N, t_bf16)})
    if dtype == "int8":
        t_int = time_ms(lambda: torch._int_mm(a, b.t()))
        rows.append({**base, "op": "qgemm", "halo_tflops": halo_tf, "peer": "torch._int_mm",
                     "peer_tflops": tflops(M, K, N, t_int)})
    else:
        for fast in (True, False):
            t_st = time_ms(lambda: torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16, use_fast_accum=fast))
            rows.append({**base, "op": "qgemm", "halo_tflops": halo_tf,
                         "peer": f"torch._scaled_mm tensorwise fast_accum={fast}", "peer_tflops": tflops(M, K, N, t_st)})
        ra = torch.rand(M, 1, device=dev) + 0.5
        rb = torch.rand(1, N, device=dev) + 0.5
        t_rw = time_ms(lambda: torch._scaled_mm(a, b.t(), ra, rb, out_dtype=torch.bfloat16, use_fast_accum=True))
        t_halo_rw = time_ms(lambda: halo_ext.qgemm(a, b, ra.reshape(-1), rb.reshape(-1), torch.bfloat16))
        rows.append({**base, "op": "qgemm rowwise", "halo_tflops": tflops(M, K, N, t_halo_rw),
                     "peer": "torch._scaled_mm rowwise fast_accum=True", "peer_tflops": tflops(M, K, N, t_rw)})
    # End to end: rotate + quantize x, GEMM against a pre-rotated, pre-quantized weight; vs bf16 x @ w.T.
    qw, _, sw = halo_ext.hadamard_quantize(wb, qd)
    t_hq = time_ms(lambda: halo_ext.hadamard_qgemm(xb, qw, qd, w_scale=sw))
    rows.append({**base, "op": "hadamard_qgemm (w pre-quantized)", "halo_tflops": tflops(M, K, N, t_hq),
                 "peer": "bf16 torch.mm", "peer_tflops": tflops(M, K, N, t_bf16)})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="fp8", choices=["fp8", "int8", "bf16"])
    ap.add_argument("--shapes", default=None, help="M,K,N;M,K,N;... (default: the LLaMA shape list)")
    args = ap.parse_args()
    if not halo_ext.cuda_available():
        sys.exit("gemm_bench: needs a CUDA GPU and a CUDA build of halo_ext")
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes.split(";")] if args.shapes else SHAPES
    rows = []
    for M, K, N in dict.fromkeys(shapes):
        bench_shape(M, K, N, args.dtype, rows)
        torch.cuda.empty_cache()
    for r in rows:
        r["ratio"] = r["halo_tflops"] / r["peer_tflops"] if r["halo_tflops"] else None
    print_table(rows, ["M", "K", "N", "dtype", "op", "halo_tflops", "peer", "peer_tflops", "ratio"])
    print("wrote", write_results("gemm", rows, merge_key=("dtype",),
                                 extra={"qgemm_backend": halo_ext.capabilities().get("qgemm_backend")}))


if __name__ == "__main__":
    main()
