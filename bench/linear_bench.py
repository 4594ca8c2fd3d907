"""HaloLinear forward+backward of one layer (eager) vs bf16 nn.Linear and torchao float8 (tensorwise, compiled).

Shapes are tokens x in -> out (LLaMA projections). One timed call = forward + backward (torch.autograd.grad for the
input and the weight, no bias; the same for every peer, so no gradient accumulation is timed). Levels 0/1/2 x
int8/fp8. torchao runs when importable (torchao.float8.convert_to_float8_training, tensorwise, torch.compile).
Writes bench/results/linear.json: rows {M, K, N, level, precision, halo_ms, bf16_ms, torchao_ms, speedup_vs_bf16,
torchao_speedup_vs_bf16, halo_vs_torchao, ...}.
Timing (bench/_common.py): L2 flushed before each call, median of CUDA-event samples, three ways:
  *_ms       back to back (one synchronize at the end, as triton.testing.do_bench and a training loop do): host time
             shows only where the host cannot keep up with the GPU (the headline figures);
  *_sync_ms  each call waited for before the next is queued: the host's latency to the first kernel is in every
             sample (the only method of the results of sessions 1-5);
  *_gpu_ms   each call queued behind a ~5 ms spin kernel: GPU time alone, whatever the host does.
The bf16 peer and every variant are timed in --rounds interleaved rounds and each figure is the median over them.
Every timed HALO call rotates and quantizes its input (the input-quantization cache is cleared before each call: a
training step's activation is a new tensor). Before the twelfth session it was not: the timed calls reused one x and
hit HaloLinear's sibling-input cache, so those figures left out X's rotate+quantize.
halo_cached_w_ms: the layer with cache_weight=True and an unchanged weight (back to back), i.e. the micro-steps of
gradient accumulation after the first (no weight quantization); its input is quantized each call too.
halo_shared_x_ms: the layer whose input another layer has already quantized (back to back): the second and third
of q/k/v, the second of gate/up.
--gemm-config N forces one sm90 GEMM configuration (A/B against the shape heuristic; pair it with --name).
--breakdown prints (and stores under "breakdown") the time of each step of the HALO pipeline, timed separately.
Usage: python bench/linear_bench.py [--breakdown] [--shape-set llama3-8b|1b] [--shapes 0,1] [--levels 0,2]
       [--precisions int8]
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, time_ms, write_results  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext.linear import _XQ_CACHE, _rotate_tokens, _token_block, _token_hadamard, _token_signs  # noqa: E402

SHAPES = [(8192, 4096, 4096), (8192, 4096, 14336), (8192, 14336, 4096), (4096, 4096, 4096), (2048, 8192, 8192)]
# --shape-set 1b: the block linears of bench/finetune_bench.py's ~1B preset (TinyLlama-1.1B) at its 8192 tokens/step:
# q/o 2048->2048, k/v 2048->256, gate/up 2048->5632, down 5632->2048
SHAPE_SETS = {"llama3-8b": SHAPES,
              "1b": [(8192, 2048, 2048), (8192, 2048, 256), (8192, 2048, 5632), (8192, 5632, 2048)]}
QD = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def fwd_bwd(mod, x, g, w=None, shared_x=False):
    w = mod.weight if w is None else w

    def fn():
        # Every call quantizes its input, as a training step does with its new activation. HaloLinear caches the
        # quantization of the last input tensor for sibling layers reading the same tensor (q/k/v, gate/up); the
        # timed calls reuse one x, so without this every call after the first skipped X's rotate+quantize (the
        # case of the figures of sessions 4-11, which were optimistic by that op's time). shared_x=True keeps the
        # cache: the layer as the second or third sibling reading an input another layer has quantized.
        if not shared_x:
            _XQ_CACHE.clear()
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
    # HALO-2 with token block 256 and int8/e4m3 operands: the token undo runs in the GEMM (qgemm row_hadamard with
    # the signs and 1/sqrt(b) in a per-row scale, as linear_backward calls it); otherwise GEMM, then a batched GEMM
    fused_undo = level == 2 and tb == 256 and M % tb == 0 and qd in (torch.int8, torch.float8_e4m3fn)
    z = mm(qe, qwt, se, sw, torch.bfloat16, None)
    if fused_undo:
        rs = signs.repeat(M // tb) * (se / tb ** 0.5)
        t["gemm_ex+token_undo"] = time_ms(lambda: mm(qe, qwt, rs, sw, torch.bfloat16, None, tb))
        info = {"info_gemm_ex_plain": time_ms(lambda: mm(qe, qwt, se, sw, torch.bfloat16, None)),
                "info_rot_tokens_ex(bmm)": time_ms(lambda: _rotate_tokens(z, hb, transpose=True))}
    else:
        t["gemm_ex"] = time_ms(lambda: mm(qe, qwt, se, sw, torch.bfloat16, None))
        info = {}
    if level == 2 and not fused_undo:
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
    t.update(info)  # steps the pipeline does not run, for comparison (not in the sum)
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
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median over them)")
    ap.add_argument("--rotation-block", type=int, default=None,
                    help="H_m block for levels 1/2 (default: halo_ext.rotation_block(K); 0 = full length)")
    ap.add_argument("--wgrad-scale", default=None, choices=["tensor", "channel"],
                    help="scaling of E_Y in the weight-gradient GEMM (default: HaloLinear's, per precision)")
    ap.add_argument("--name", default="linear", help="results file bench/results/<name>.json")
    ap.add_argument("--gemm-config", type=int, default=-1,
                    help="force this sm90 qgemm configuration index (halo_ext._C.qgemm_sm90_configs) on every GEMM "
                         "whose dtype family has it; -1: the shape heuristic")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("linear_bench needs a CUDA GPU")
        return
    print(halo_ext.capabilities())
    if args.gemm_config >= 0:
        halo_ext._C.set_qgemm_sm90_config(args.gemm_config)
        print("forced qgemm configuration", args.gemm_config, ":", halo_ext._C.qgemm_sm90_configs("int8"),
              halo_ext._C.qgemm_sm90_configs("e4m3"))

    def timed(fn) -> dict:  # one round of every timing mode (see the module docstring)
        return {"ms": time_ms(fn, iters=args.iters, sync_each=False),
                "sync_ms": time_ms(fn, iters=args.iters, sync_each=True),
                "gpu_ms": time_ms(fn, iters=args.iters, sync_each=True, spin_cycles=10_000_000)}

    def med(samples: list, mode: str) -> float:  # median over the rounds
        return statistics.median(t[mode] for t in samples)

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
        variants = []  # (level, precision, layer, layer with cache_weight)
        for level in levels:
            for prec in precs:
                kw = dict(level=level, precision=prec, rotation_block=args.rotation_block,
                          wgrad_scale=args.wgrad_scale)
                # cache_weight: the micro-steps of gradient accumulation (weight unchanged, its 8-bit copies reused)
                variants.append((level, prec, halo_ext.HaloLinear.from_linear(lin, **kw),
                                 halo_ext.HaloLinear.from_linear(lin, cache_weight=True, **kw)))
        # Interleaved rounds: bf16 peer, then every variant, args.rounds times; each figure is the median over the
        # rounds of per-round medians, so a slow stretch of the (shared) host or a clock dip hits one round only.
        bf16_t, halo_t, cw_t, sx_t = [], [[] for _ in variants], [[] for _ in variants], [[] for _ in variants]
        for _ in range(args.rounds):
            bf16_t.append(timed(fwd_bwd(lin, x, g)))
            for vi, (_, _, h, hc) in enumerate(variants):
                halo_t[vi].append(timed(fwd_bwd(h, x, g)))
                cw_t[vi].append({"ms": time_ms(fwd_bwd(hc, x, g), iters=args.iters, sync_each=False)})
                sx_t[vi].append({"ms": time_ms(fwd_bwd(h, x, g, shared_x=True), iters=args.iters, sync_each=False)})
        tao = None if args.no_torchao else torchao_fn(lin, x, g)
        torchao_ms = None
        if tao is not None:
            try:
                torchao_ms = time_ms(tao, warmup=10, iters=args.iters, sync_each=False)
            except Exception as e:  # noqa: BLE001  (a torchao/compile failure must not lose the HALO rows)
                print(f"torchao peer failed at {M}x{K}->{N}: {type(e).__name__}: {e}")
        bf16 = {m: med(bf16_t, m) for m in ("ms", "sync_ms", "gpu_ms")}
        shape_rows = []
        for vi, (level, prec, h, _) in enumerate(variants):
            hm = {m: med(halo_t[vi], m) for m in ("ms", "sync_ms", "gpu_ms")}
            cw = med(cw_t[vi], "ms")
            sx = med(sx_t[vi], "ms")
            shape_rows.append({
                "M": M, "K": K, "N": N, "level": level, "precision": prec,
                "rotation_block": h.rotation_block if level else None, "wgrad_scale": h.wgrad_scale,
                "gemm_config": args.gemm_config, "rounds": args.rounds,
                "halo_ms": hm["ms"], "bf16_ms": bf16["ms"], "torchao_ms": torchao_ms,
                "speedup_vs_bf16": bf16["ms"] / hm["ms"],
                "halo_sync_ms": hm["sync_ms"], "bf16_sync_ms": bf16["sync_ms"],
                "speedup_vs_bf16_sync": bf16["sync_ms"] / hm["sync_ms"],
                "halo_gpu_ms": hm["gpu_ms"], "bf16_gpu_ms": bf16["gpu_ms"],
                "speedup_vs_bf16_gpu": bf16["gpu_ms"] / hm["gpu_ms"],
                "halo_cached_w_ms": cw, "speedup_cached_w_vs_bf16": bf16["ms"] / cw,
                "halo_shared_x_ms": sx, "speedup_shared_x_vs_bf16": bf16["ms"] / sx,
                "input_quantized_each_call": True,
                "halo_ms_rounds": [t["ms"] for t in halo_t[vi]], "bf16_ms_rounds": [t["ms"] for t in bf16_t],
                "torchao_speedup_vs_bf16": bf16["ms"] / torchao_ms if torchao_ms else None,
                "halo_vs_torchao": torchao_ms / hm["ms"] if torchao_ms else None})
        print_table(shape_rows, ["M", "K", "N", "level", "precision", "halo_ms", "bf16_ms", "speedup_vs_bf16",
                                 "speedup_vs_bf16_sync", "speedup_vs_bf16_gpu", "speedup_cached_w_vs_bf16",
                                 "speedup_shared_x_vs_bf16", "torchao_speedup_vs_bf16"])
        rows += shape_rows
        del variants, tao
        if args.breakdown:
            for level in levels:
                for prec in precs:
                    b = breakdown(M, K, N, level, prec, args.rotation_block, args.wgrad_scale)
                    bd_rows.append({"M": M, "K": K, "N": N, "level": level, "precision": prec, **b})
                    print(f"  breakdown level {level} {prec} (ms): " + ", ".join(f"{k}={v:.3f}" for k, v in b.items()))
        del lin, x, g
        torch.cuda.empty_cache()
    cols = ["M", "K", "N", "level", "precision", "halo_ms", "bf16_ms", "torchao_ms", "speedup_vs_bf16",
            "speedup_vs_bf16_sync", "speedup_vs_bf16_gpu", "speedup_cached_w_vs_bf16", "speedup_shared_x_vs_bf16",
            "torchao_speedup_vs_bf16"]
    print_table(rows, cols)
    extra = {"breakdown": bd_rows} if bd_rows else None
    print("wrote", write_results(args.name, rows, merge_key=("M", "K", "N", "level", "precision", "rotation_block"),
                                     extra=extra))


if __name__ == "__main__":
    main()
