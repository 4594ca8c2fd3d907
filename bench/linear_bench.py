"""HaloLinear forward+backward of one layer (eager) vs bf16 nn.Linear and torchao float8 (tensorwise, compiled).

Shapes are tokens x in -> out (LLaMA projections). One timed call = forward + backward (torch.autograd.grad for the
input and the weight, no bias; the same for every peer, so no gradient accumulation is timed). Levels 0/1/2 x
int8/fp8. torchao runs when importable (torchao.float8.convert_to_float8_training, tensorwise, torch.compile).
Writes bench/results/linear.json: rows {M, K, N, level, precision, halo_ms, bf16_ms, torchao_ms, speedup_vs_bf16,
torchao_speedup_vs_bf16, halo_vs_torchao}.
--breakdown prints (and stores under "breakdown") the time of each step of the HALO pipeline, timed separately.
Usage: python bench/linear_bench.py [--breakdown] [--shape-set llama3-8b|1b] [--shapes 0,1] [--levels 0,2]
       [--precisions int8]
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, time_ms, write_results  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.linear import _rotate_tokens, _token_block, _token_hadamard, _token_signs  # noqa: E402

SHAPES = [(8192, 4096, 4096), (8192, 4096, 14336), (8192, 14336, 4096), (4096, 4096, 4096), (2048, 8192, 8192)]
# --shape-set 1b: the block linears of bench/finetune_bench.py's ~1B preset (TinyLlama-1.1B) at its 8192 tokens/step:
# q/o 2048->2048, k/v 2048->256, gate/up 2048->5632, down 5632->2048
SHAPE_SETS = {"llama3-8b": SHAPES,
              "1b": [(8192, 2048, 2048), (8192, 2048, 256), (8192, 2048, 5632), (8192, 5632, 2048)]}
QD = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def fwd_bwd(mod, x, g, w=None):
    w = mod.weight if w is None else w

    def fn():
        y = mod(x)
        return torch.autograd.grad(y, (x, w), g)
    return fn


def torchao_fn(lin, x, g):
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception as e:  # noqa: BLE001
        print(f"torchao not available ({type(e).__name__}: {e}); skipping the torchao peer")
        return None
    m = nn.Sequential(nn.Linear(lin.in_features, lin.out_features, bias=False, device="cuda", dtype=torch.bfloat16))
    m[0].weight.data.copy_(lin.weight.data)
    convert_to_float8_training(m, config=Float8LinearConfig())  # tensorwise scaling (the default recipe)
    w = m[0].weight
    return fwd_bwd(torch.compile(m), x, g, w)


def breakdown(M, K, N, level, prec, rb=None, wgs=None):
    """Each step of HaloLinear's pipeline (bf16 in, as linear.py runs it), timed separately, in ms."""
    qd = QD[prec]
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
    ey = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    hq, q8, mm, had = (torch.ops.halo.hadamard_quantize, torch.ops.halo.quantize, torch.ops.halo.qgemm,
                       torch.ops.halo.hadamard)
    kb = halo_ext.rotation_block(K) if rb is None else rb
    t = {}
    if level == 0:  # block=1: per-tensor quantize, q and its transpose from one read (no rotation)
        t["quant_w(q+qt)"] = time_ms(lambda: hq(w, qd, None, 1, None, False, True, True, None))
        t["quant_x(q+qt)"] = time_ms(lambda: hq(x, qd, None, 1, None, False, True, True, None))
        qx, qxt, sx = hq(x, qd, None, 1, None, False, True, True, None)
        qw, qwt, sw = hq(w, qd, None, 1, None, False, True, True, None)
    else:
        t["had_quant_w(q+qt)"] = time_ms(lambda: hq(w, qd, None, kb, None, False, True, True, None))
        t["had_quant_x(q+qt)"] = time_ms(lambda: hq(x, qd, None, kb, None, False, True, True, None))
        qx, qxt, sx = hq(x, qd, None, kb, None, False, True, True, None)
        qw, qwt, sw = hq(w, qd, None, kb, None, False, True, True, None)
    t["gemm_fwd"] = time_ms(lambda: mm(qx, qw, sx, sw, torch.bfloat16, None))
    qe, qet, se = hq(ey, qd, None, 1, None, False, True, True, None)
    # E_Y of the weight-gradient GEMM: per output channel for int8 (HaloLinear's default), per tensor for fp8
    per_channel = prec == "int8" if wgs is None else wgs == "channel"
    eyq = torch.ops.halo.ey_quantize
    if level == 2:
        tb = _token_block(M, 256)
        hb = _token_hadamard(tb, ey.device, torch.bfloat16)
        signs = _token_signs(tb).cuda()
        # one op: the token-rotated Q(H_Tᵀ E_Y) (input gradient) [+ Q(E_Y)ᵀ per channel (weight gradient)]
        t["ey_quantize(rot" + ("+t)" if per_channel else ")")] = time_ms(
            lambda: eyq(ey, qd, tb, signs, True, per_channel))
        if not per_channel:
            t["quant_ey(qt)"] = time_ms(lambda: hq(ey, qd, None, 1, None, False, False, True, None))
    elif per_channel:  # block 1: per-tensor Q(E_Y) and per-channel Q(E_Y)ᵀ from one op
        t["ey_quantize(q+t)"] = time_ms(lambda: eyq(ey, qd, 1, None, True, True))
    else:
        t["quant_ey(q+qt)"] = time_ms(lambda: hq(ey, qd, None, 1, None, False, True, True, None))
    t["gemm_ex"] = time_ms(lambda: mm(qe, qwt, se, sw, torch.bfloat16, None))
    z = mm(qe, qwt, se, sw, torch.bfloat16, None)
    if level == 2:
        t["rot_tokens_ex(bmm)"] = time_ms(lambda: _rotate_tokens(z, hb, transpose=True))
    if level >= 1:
        t["had_undo_ex"] = time_ms(lambda: had(z, None, kb, None, True))
    if per_channel:
        _, _, qet, set_ = eyq(ey, qd, 16, None, False, True)
    else:
        set_ = se
    t["gemm_g"] = time_ms(lambda: mm(qet, qxt, set_, sx, torch.bfloat16, None))
    if level >= 1:
        gg = mm(qet, qxt, set_, sx, torch.bfloat16, None)
        t["had_undo_g"] = time_ms(lambda: had(gg, None, kb, None, True))
    t["sum"] = sum(t.values())
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--shape-set", default="llama3-8b", choices=sorted(SHAPE_SETS))
    ap.add_argument("--shapes", default=None, help="indices into the shape set (default: all)")
    ap.add_argument("--levels", default="0,1,2")
    ap.add_argument("--precisions", default="int8,fp8")
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rotation-block", type=int, default=None,
                    help="H_m block for levels 1/2 (default: halo_ext.rotation_block(K); 0 = full length)")
    ap.add_argument("--wgrad-scale", default=None, choices=["tensor", "channel"],
                    help="scaling of E_Y in the weight-gradient GEMM (default: HaloLinear's, per precision)")
    ap.add_argument("--name", default="linear", help="results file bench/results/<name>.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("linear_bench needs a CUDA GPU")
        return
    print(halo_ext.capabilities())
    levels = [int(v) for v in args.levels.split(",")]
    precs = args.precisions.split(",")
    rows, bd_rows = [], []
    shapes = SHAPE_SETS[args.shape_set]
    idx = range(len(shapes)) if args.shapes is None else [int(v) for v in args.shapes.split(",")]
    for si in idx:
        M, K, N = shapes[si]
        torch.manual_seed(0)
        lin = nn.Linear(K, N, bias=False, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        bf16_ms = time_ms(fwd_bwd(lin, x, g), iters=args.iters)
        tao = None if args.no_torchao else torchao_fn(lin, x, g)
        torchao_ms = None
        if tao is not None:
            try:
                torchao_ms = time_ms(tao, warmup=10, iters=args.iters)
            except Exception as e:  # noqa: BLE001  (a torchao/compile failure must not lose the HALO rows)
                print(f"torchao peer failed at {M}x{K}->{N}: {type(e).__name__}: {e}")
        for level in levels:
            for prec in precs:
                h = halo_ext.HaloLinear.from_linear(lin, level=level, precision=prec,
                                                    rotation_block=args.rotation_block,
                                                    wgrad_scale=args.wgrad_scale)
                halo_ms = time_ms(fwd_bwd(h, x, g), iters=args.iters)
                rows.append({"M": M, "K": K, "N": N, "level": level, "precision": prec,
                             "rotation_block": h.rotation_block if level else None,
                             "wgrad_scale": h.wgrad_scale, "halo_ms": halo_ms,
                             "bf16_ms": bf16_ms, "torchao_ms": torchao_ms, "speedup_vs_bf16": bf16_ms / halo_ms,
                             "torchao_speedup_vs_bf16": bf16_ms / torchao_ms if torchao_ms else None,
                             "halo_vs_torchao": torchao_ms / halo_ms if torchao_ms else None})
                print_table(rows[-1:], list(rows[-1]))
                if args.breakdown:
                    b = breakdown(M, K, N, level, prec, args.rotation_block, args.wgrad_scale)
                    bd_rows.append({"M": M, "K": K, "N": N, "level": level, "precision": prec, **b})
                    print("  breakdown (ms): " + ", ".join(f"{k}={v:.3f}" for k, v in b.items()))
                del h
        del lin, x, g, tao
        torch.cuda.empty_cache()
    cols = ["M", "K", "N", "level", "precision", "halo_ms", "bf16_ms", "torchao_ms", "speedup_vs_bf16",
            "torchao_speedup_vs_bf16"]
    print_table(rows, cols)
    extra = {"breakdown": bd_rows} if bd_rows else None
    print("wrote", write_results(args.name, rows, merge_key=("M", "K", "N", "level", "precision", "rotation_block"),
                                     extra=extra))


if __name__ == "__main__":
    main()
