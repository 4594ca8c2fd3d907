"""Hadamard transform bandwidth vs torch.clone (and Dao's fast_hadamard_transform when importable).

Bytes: a bf16 transform reads and writes each element once: 4 B/element, the same as clone, so the bound is the
clone bandwidth measured in the same run. Writes bench/results/hadamard.json.
Usage: python bench/hadamard_bench.py [--elements 134217728] [--dtype bf16]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, time_ms, warm_up_gpu, write_results  # noqa: E402

import halo_ext  # noqa: E402

POW2 = [2 ** k for k in range(7, 16)]
NON_POW2 = [12 * 1024, 5120, 14336, 28672, 11008, 13824, 18944, 20 * 512, 28 * 64, 3584, 8960]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--elements", type=int, default=128 * 1024 * 1024)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--dims", type=int, nargs="*", default=POW2 + NON_POW2)
    ap.add_argument("--ab-env", default=None,
                    help="A/B: also time hadamard with this environment variable set to 0 (a kernel switch read at "
                         "launch, e.g. HALO_HAD_SHFL), interleaved with the default over 3 rounds; columns *_off")
    ap.add_argument("--name", default="hadamard", help="results file bench/results/<name>.json")
    args = ap.parse_args()
    if not halo_ext.cuda_available():
        sys.exit("hadamard_bench: needs a CUDA GPU and a CUDA build of halo_ext")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    try:
        from fast_hadamard_transform import hadamard_transform as dao
    except ImportError:
        dao = None
    rows = []
    warm_up_gpu()
    for dim in args.dims:
        n_rows = max(1, args.elements // dim)
        x = torch.randn(n_rows, dim, device="cuda", dtype=dtype)
        nbytes = 2 * x.numel() * x.element_size()
        try:
            # 3 interleaved rounds (clone, [off,] ours), medians: a slow stretch of the GPU during one
            # measurement (once seen: clone at 1.6 TB/s for a whole 30-call sample) does not decide a row
            clones, on, off = [], [], []
            for _ in range(3):
                clones.append(time_ms(lambda: x.clone()))
                if args.ab_env:
                    os.environ[args.ab_env] = "0"
                    off.append(time_ms(lambda: halo_ext.hadamard(x)))
                    del os.environ[args.ab_env]
                on.append(time_ms(lambda: halo_ext.hadamard(x)))
            t_clone, t_halo = statistics.median(clones), statistics.median(on)
            t_off = statistics.median(off) if off else None
        except RuntimeError as e:  # record the failure and go on with the other sizes
            print(f"dim {dim}: {e}")
            rows.append({"dim": dim, "rows": n_rows, "dtype": args.dtype, "error": str(e).splitlines()[0]})
            continue
        row = {"dim": dim, "rows": n_rows, "dtype": args.dtype, "m": halo_ext.hadamard_factor(dim)[0],
               "halo_ms": t_halo, "clone_ms": t_clone,
               "halo_TBps": nbytes / t_halo / 1e9, "clone_TBps": nbytes / t_clone / 1e9}
        row["ratio"] = row["halo_TBps"] / row["clone_TBps"]
        if args.ab_env:
            row[f"{args.ab_env}=0_TBps"] = nbytes / t_off / 1e9
            row["ratio_off"] = nbytes / t_off / 1e9 / row["clone_TBps"]
        if dao is not None and (dim & (dim - 1)) == 0:
            t_dao = time_ms(lambda: dao(x, dim ** -0.5))
            row["dao_TBps"] = nbytes / t_dao / 1e9
        rows.append(row)
        del x
        torch.cuda.empty_cache()
    print_table(rows, ["dim", "m", "rows", "halo_TBps", "clone_TBps", "ratio", "dao_TBps"] +
                (["ratio_off"] if args.ab_env else []))
    print("wrote", write_results(args.name, rows, merge_key=("dim", "dtype")))


if __name__ == "__main__":
    main()
