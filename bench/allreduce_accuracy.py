"""Accuracy of the block-quantized two-shot all-reduce, old (every contribution quantized) vs new (the owner's own
chunk added unquantized), on the CPU: the ranks are emulated in one process with the same ops the collectives run
(torch.ops.halo.qcomm_pack_into / qcomm_reduce_into / qcomm_unpack_into; the CUDA kernels are bit-identical), so
no GPU or process group is needed.

    PYTHONPATH=python python bench/allreduce_accuracy.py [--n 1048576] [--worlds 2 4 8] [--blocks 64 128 256 512]

Inputs: Gaussian N(0, 1) per rank, rounded to --dtype (default bfloat16), n elements per rank. relerr = ||y_hat -
y||_2 / ||y||_2 against the exact float64 sum of the (rounded) inputs; "bf16 out" rounds the result to bfloat16
as all_reduce does for bf16 tensors, "fp32 out" keeps float32 (the quantization error alone). "theory" is the
Gaussian model of the allreduce.py docstring: sqrt(2) q (old) and sqrt((2W - 1) / W) q (new), q = mean block
absmax / (qmax sqrt 12) of the inputs. Writes bench/results/allreduce_accuracy.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_results  # noqa: E402

import halo_ext  # noqa: E402,F401
from halo_ext.distributed import chunk_elems, pack, packed_chunk_bytes, reduce_chunks, unpack  # noqa: E402


def emulate(xs, block: int, qd: str, own: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """The all-reduce result every rank gets (they are bitwise identical), computed with the ops."""
    world, n = len(xs), xs[0].numel()
    chunk = chunk_elems(n, world, block)
    cb = packed_chunk_bytes(chunk, block)
    packs = []
    for r, x in enumerate(xs):
        buf = torch.full((world, cb), 0xFF, dtype=torch.uint8)  # own slot: garbage (NaN scales) that must not be read
        packs.append(pack(x, world, chunk, block, qd, out=buf, skip=r if own else -1))
    reduced = []
    for c in range(world):
        red = torch.empty(cb, dtype=torch.uint8)
        mine = xs[c][min(c * chunk, n):min((c + 1) * chunk, n)]
        reduce_chunks([p[c] for p in packs], red, block, qd, own=mine if own else None, own_index=c if own else -1)
        reduced.append(red)
    out = torch.empty(n, dtype=out_dtype)
    unpack(reduced, out, chunk, block, qd)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--qdtypes", nargs="+", default=["int8"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    rows = []
    for world in args.worlds:
        g = torch.Generator().manual_seed(1234 + world)
        xs = [torch.randn(args.n, generator=g).to(dt) for _ in range(world)]
        y = sum(x.double() for x in xs)
        for qd in args.qdtypes:
            qmax = 127.0 if qd == "int8" else 448.0
            for block in args.blocks:
                nbk = args.n // block
                amax = torch.stack([x[:nbk * block].float().abs().view(nbk, block).amax(1) for x in xs]).mean()
                q = float(amax) / (qmax * math.sqrt(12)) if qd == "int8" else None  # model: int8 only
                row = {"world": world, "qdtype": qd, "block": block, "payload_ratio_vs_bf16": 2 / (1 + 4 / block)}
                for tag, own in (("old", False), ("new", True)):
                    for od, oname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                        yh = emulate(xs, block, qd, own, od)
                        row[f"{tag}_{oname}"] = float((yh.double() - y).norm() / y.norm())
                row["theory_old"] = math.sqrt(2) * q if q is not None else None
                row["theory_new"] = math.sqrt((2 * world - 1) / world) * q if q is not None else None
                rows.append(row)
                print(f"world={world} {qd} B={block}: old {row['old_bf16']:.4%} -> new {row['new_bf16']:.4%} "
                      f"(bf16 out)", flush=True)
    cols = ["world", "qdtype", "block", "payload_ratio_vs_bf16", "old_fp32", "new_fp32", "old_bf16", "new_bf16",
            "theory_old", "theory_new"]
    print_table([{k: (f"{v:.4%}" if k.startswith(("old", "new", "theory")) and v is not None else v)
                  for k, v in r.items()}
                 for r in rows], cols)
    if not args.no_write:
        print(write_results("allreduce_accuracy", rows, extra={"n_per_rank": args.n, "input_dtype": args.dtype,
                                                               "inputs": "Gaussian N(0,1) per rank, CPU emulation"}))


if __name__ == "__main__":
    main()
