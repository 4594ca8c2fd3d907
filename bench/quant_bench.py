"""Quantization and fused Hadamard+quantize bandwidth against their byte bounds.

halo_TBps = bytes the op must move / its time; bound_TBps = torch.clone bandwidth in the same run (what moving
those bytes at copy speed gives). Minimal bytes per element for a bf16 input: read 2 + write 1 (+1 for the
transposed copy); per-block/per-row scales add 4 bytes per group. A per-tensor scale over a tensor larger than
on-chip memory needs the input twice (one reduction pass): "bytes_2pass" records that count, and
"frac_of_2pass_bound" the fraction of the two-pass bound reached. Writes bench/results/quant.json.
Tensors of at least 2^27 elements (128M; rows a multiple of 256) at dims 128..32768 and the K * 2^k sizes.
Usage: python bench/quant_bench.py [--rows 16384 --cols 8192] [--ops hadamard_quantize] [--name quant_pdl_off]
(--ops keeps the ops whose name contains one of the given strings; --name writes bench/results/<name>.json.)
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, rows_for, time_ms, warm_up_gpu, write_results  # noqa: E402

import halo_ext  # noqa: E402

from halo_ext.linear import _rotate_tokens, _token_hadamard, _token_signs  # noqa: E402

QD = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=0,
                    help="rows of every tensor (default: at least 2^27 elements, a multiple of 256 rows)")
    ap.add_argument("--cols", type=int, nargs="*",
                    default=[8192, 4096, 14336, 128, 1024, 16384, 32768, 11008, 18944, 28672])
    ap.add_argument("--ops", nargs="*", default=None, help="only ops whose name contains one of these")
    ap.add_argument("--name", default="quant", help="results file bench/results/<name>.json")
    args = ap.parse_args()
    if not halo_ext.cuda_available():
        sys.exit("quant_bench: needs a CUDA GPU and a CUDA build of halo_ext")
    out = []
    warm_up_gpu()
    for cols in args.cols:
        rows = args.rows or rows_for(cols)
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        n = x.numel()
        # clone timed 3 times spread over the ops of this size (before, between the dtypes, after); the median
        # bounds them, so one slow stretch of the GPU does not set the bound
        clones = [time_ms(lambda: x.clone())]
        signs = _token_signs(256).cuda()
        r256 = _token_hadamard(256, x.device, x.dtype)
        pending = []
        for qname, qd in QD.items():
            if pending:
                clones.append(time_ms(lambda: x.clone()))
            cases = [
                ("quantize_tensor", lambda: halo_ext.quantize(x, qd, "tensor"), 3 * n, 5 * n),
                ("quantize_row", lambda: halo_ext.quantize(x, qd, "row"), 3 * n + 4 * rows, None),
                ("quantize_block128", lambda: halo_ext.quantize(x, qd, "block", 128), 3 * n + 4 * n // 128, None),
                ("hadamard_quantize", lambda: halo_ext.hadamard_quantize(x, qd), 3 * n, 5 * n),
                ("hadamard_quantize_q_qt", lambda: halo_ext.hadamard_quantize(x, qd, want_qt=True), 4 * n, 6 * n),
                # HALO-2's E_Y [tokens, channels]: Q(R E_Y) per tensor + Q(E_Y)ᵀ per channel, fused vs composed
                ("ey_quantize", lambda: torch.ops.halo.ey_quantize(x, qd, 256, signs), 4 * n, 6 * n),
                # HALO-0/1 int8's E_Y: per-tensor Q(E_Y) + per-channel Q(E_Y)^T, one op (block 1) vs two
                ("ey_quantize_block1(q+t)", lambda: torch.ops.halo.ey_quantize(x, qd, 1, None), 4 * n, 6 * n),
                ("ey_q_then_t(hq q, ey_quantize t)", lambda: (
                    halo_ext.hadamard_quantize(x, qd, block=1),
                    torch.ops.halo.ey_quantize(x, qd, 16, None, False, True)), 4 * n, 10 * n),
                ("ey_composed(bmm+quant, t+quant_row)", lambda: (
                    halo_ext.quantize(_rotate_tokens(x, r256), qd, "tensor"),
                    halo_ext.quantize(x.t().contiguous(), qd, "row")), 4 * n, 6 * n),
            ]
            for op, fn, bytes_min, bytes_2pass in cases:
                if args.ops and not any(o in op for o in args.ops):
                    continue
                t = time_ms(fn)
                pending.append(({"op": op, "dtype": qname, "rows": rows, "cols": cols, "ms": t,
                                 "halo_TBps": bytes_min / t / 1e9}, bytes_2pass))
        clones.append(time_ms(lambda: x.clone()))
        clone_TBps = 2 * n * 2 / statistics.median(clones) / 1e9
        for row, bytes_2pass in pending:
            row["bound_TBps"] = clone_TBps
            row["frac_of_bound"] = row["halo_TBps"] / clone_TBps
            if bytes_2pass:
                row["bytes_2pass"] = bytes_2pass
                row["frac_of_2pass_bound"] = bytes_2pass / row["ms"] / 1e9 / clone_TBps
            out.append(row)
        del x
        torch.cuda.empty_cache()
    print_table(out, ["op", "dtype", "cols", "ms", "halo_TBps", "bound_TBps", "frac_of_bound", "frac_of_2pass_bound"])
    extra = {"env": {k: os.environ[k] for k in ("HALO_PDL",) if k in os.environ}}
    print("wrote", write_results(args.name, out, merge_key=("op", "dtype", "cols"), extra=extra))


if __name__ == "__main__":
    main()
