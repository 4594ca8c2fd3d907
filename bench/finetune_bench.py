"""End-to-end training-step benchmark of halo-finetune's model: ~1B Llama preset (TinyLlama-1.1B shapes: hidden 2048,
22 layers, MLP 5632, GQA 32/4), seq 2048, one GPU, eager.

Variants (same weights, same batch, same optimizer): bf16 nn.Linear; HALO levels 0/1/2 x int8/fp8
(halo_ext.convert, every block linear; lm_head stays bf16); torchao float8 tensorwise training
(convert_to_float8_training + torch.compile) when torchao is importable.
A step = forward + backward + grad clipping + AdamW on fp32 master weights (as halo-finetune trains). Timing:
bench/_common.time_ms (CUDA events, median) after warm-up steps; forward+backward alone is timed too.
Writes bench/results/finetune_bench.json and updates the summary key ``speedup_halo2_int8_vs_bf16`` of
bench/results/finetune.json (other keys of that file are kept).

    python bench/finetune_bench.py                      # ~3 min on an H100
    python bench/finetune_bench.py --variants bf16,halo2-int8 --iters 3
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from halo_ext.finetune.data import UserError  # noqa: E402
from _common import RESULTS, device_facts, print_table, time_ms, write_results  # noqa: E402

DEVICE = "cuda"
ALL_VARIANTS = "bf16,halo0-int8,halo1-int8,halo2-int8,halo0-fp8,halo1-fp8,halo2-fp8,torchao-fp8"


def build(preset: str, seq: int, seed: int):
    from halo_ext.finetune.model import build_preset

    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    return build_preset(preset, seed, DEVICE, dtype, max_positions=max(4096, seq))


def make_variant(name: str, preset: str, seq: int, seed: int, base_state):
    from halo_ext.finetune.model import apply_variant, parse_variant

    model = build(preset, seq, seed)
    model.load_state_dict(base_state)
    info = {"variant": name}
    if name == "torchao-fp8":
        from torchao.float8 import convert_to_float8_training  # noqa: F401 (ImportError -> row skipped)

        def keep(mod, fqn):
            return isinstance(mod, torch.nn.Linear) and not fqn.endswith("lm_head") and \
                mod.in_features % 16 == 0 and mod.out_features % 16 == 0

        convert_to_float8_training(model, module_filter_fn=keep)
        model = torch.compile(model)
        info.update(level=None, precision="fp8-torchao", compiled=True)
        return model, info
    v = parse_variant(name)
    model, vinfo = apply_variant(model, v)
    info.update(level=v.level, precision=v.precision, halo_layers=vinfo.get("halo_layers"), compiled=False)
    return model, info


# Kernel categories of the profile (first match wins, on the lower-cased kernel name). CUTLASS kernels are halo-ext's
# 8-bit GEMMs; cuBLAS-style names are the bf16 GEMMs (block linears of the bf16 run, lm_head and the HALO-2 token
# rotation bmm in every run); halo-ext's own kernels are all in namespace halo.
_CATEGORIES = (
    ("gemm_8bit", ("cutlass",)),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm_bf16", ("gemm", "nvjet", "xmma", "cublas", "sm90_", "splitk")),
    ("halo_rotate_quantize", ("halo",)),
)


def _category(name: str) -> str:
    n = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in n for k in keys):
            return cat
    return "other"


def kernel_profile(fn) -> dict:
    """GPU kernel time (ms) of one call of fn, by category (torch.profiler, CUDA activity), and the total. The sum
    of kernel times is below the wall time when the GPU idles (host-bound gaps); both are reported."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
    out = {c: 0.0 for c, _ in _CATEGORIES}
    out["other"] = 0.0
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        if t:
            out[_category(e.key)] += t / 1e3
    out = {k: round(v, 3) for k, v in out.items()}
    out["kernels_total"] = round(sum(out.values()), 3)
    out["wall"] = round(start.elapsed_time(end), 3)
    return out


def _cpu_time_ms(fn, warmup: int = 1, iters: int = 3, flush_l2: bool = False) -> float:
    import statistics

    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def amdahl_bound(base_row):
    """Upper bounds on the forward+backward speedup from faster GEMMs alone, from the bf16 run's kernel profile:
    kernel time T, bf16 GEMM time G -> T / (T - G + G / s) for GEMMs s times faster (None without a profile)."""
    prof = (base_row or {}).get("fwdbwd_profile_ms")
    if not prof or not prof.get("kernels_total"):
        return None
    t, g = prof["kernels_total"], prof["gemm_bf16"]
    return {"gemm_share": g / t, "speedup_if_gemms_2x": t / (t - g / 2), "speedup_if_gemms_3x": t / (t - 2 * g / 3),
            "wall_over_kernels": prof["wall"] / t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--variants", default=ALL_VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="finetune_bench", help="results file bench/results/<name>.json")
    ap.add_argument("--summary", default=os.path.join(RESULTS, "finetune.json"),
                    help="file whose speedup_halo2_int8_vs_bf16 key is updated ('' to skip)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only smoke-tests this script (wall-clock timing)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the per-variant kernel-time breakdown of one forward+backward (torch.profiler)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("finetune_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    global DEVICE
    DEVICE = args.device
    import halo_ext
    from halo_ext.finetune.data import BatchSampler, stdlib_corpora
    from halo_ext.finetune.model import param_count
    from halo_ext.finetune.train import MasterAdamW, lm_loss

    torch.backends.cuda.matmul.allow_tf32 = True
    t_all = time.time()
    code = stdlib_corpora()["code"]
    window = BatchSampler(code.train, args.batch, args.seq, args.seed).get(0).to(DEVICE)
    timer = time_ms if DEVICE == "cuda" else _cpu_time_ms
    tokens = args.batch * args.seq
    base = build(args.preset, args.seq, args.seed)
    n_params = param_count(base)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    print(f"finetune_bench: preset {args.preset} ({n_params / 1e9:.2f} B params), batch {args.batch} x seq {args.seq}"
          f" = {tokens} tokens/step, {device_facts()['device']}, halo_ext {halo_ext.__version__}", flush=True)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        row = {"variant": name, "preset": args.preset, "batch": args.batch, "seq": args.seq}
        t0 = time.time()
        model = opt = None
        try:
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model, info = make_variant(name, args.preset, args.seq, args.seed, base_state)
            row.update(info)
            model.train()
            opt = MasterAdamW(model.parameters(), lr=1e-5)

            def fwdbwd():
                loss = lm_loss(model, window)
                loss.backward()
                return loss

            def step():
                loss = fwdbwd()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
                opt.step()
                opt.zero_grad()
                return loss

            step_ms = timer(step, warmup=args.warmup, iters=args.iters, flush_l2=False)
            loss = float(step().detach())
            fb_ms = timer(lambda: (fwdbwd(), opt.zero_grad()), warmup=1, iters=args.iters, flush_l2=False)
            row.update(step_ms=step_ms, fwdbwd_ms=fb_ms, tokens_per_s=tokens / step_ms * 1e3,
                       fwdbwd_tokens_per_s=tokens / fb_ms * 1e3, loss=loss,
                       peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None)
            if DEVICE == "cuda" and not args.no_profile:
                row["fwdbwd_profile_ms"] = kernel_profile(lambda: (fwdbwd(), opt.zero_grad()))
        except ImportError as e:
            row["error"] = f"skipped: {e}"
        except UserError as e:
            row["error"] = f"skipped: {e}"
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc()
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"  {name}: " + (f"{row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, "
                               f"peak {row['peak_mem_gb']} GB, loss {row['loss']:.3f}" if "step_ms" in row
                               else row.get("error", "?")) + f" ({row['wall_s']} s)", flush=True)
        del model, opt
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    base_row = next((r for r in rows if r["variant"] == "bf16" and "tokens_per_s" in r), None)
    for r in rows:
        if base_row and "tokens_per_s" in r:
            r["speedup_vs_bf16"] = r["tokens_per_s"] / base_row["tokens_per_s"]
            r["fwdbwd_speedup_vs_bf16"] = r["fwdbwd_tokens_per_s"] / base_row["fwdbwd_tokens_per_s"]
    print_table(rows, ["variant", "step_ms", "fwdbwd_ms", "tokens_per_s", "speedup_vs_bf16",
                       "fwdbwd_speedup_vs_bf16", "peak_mem_gb"])
    amdahl = amdahl_bound(base_row)
    if amdahl:
        print("finetune_bench: bf16 forward+backward kernel time by category (ms): " +
              ", ".join(f"{k} {v}" for k, v in base_row["fwdbwd_profile_ms"].items()))
        print(f"finetune_bench: bf16 GEMMs are {amdahl['gemm_share']:.1%} of its kernel time; with every bf16 GEMM "
              f"(lm_head included) 2x faster and nothing else changed, forward+backward would be at most "
              f"{amdahl['speedup_if_gemms_2x']:.2f}x faster (3x: {amdahl['speedup_if_gemms_3x']:.2f}x)")
    h2 = next((r for r in rows if r["variant"] == "halo2-int8" and "speedup_vs_bf16" in r), None)
    speedup = h2["speedup_vs_bf16"] if h2 else None
    cfg = {"preset": args.preset, "params": n_params, "batch": args.batch, "seq": args.seq, "warmup": args.warmup,
           "iters": args.iters, "mode": "eager (torchao-fp8: torch.compile)",
           "step": "forward + backward + clip + AdamW(fp32 master weights)", "halo_ext": halo_ext.__version__}
    path = write_results(args.name, rows, extra={"config": cfg, "speedup_halo2_int8_vs_bf16": speedup,
                                                 "amdahl_bf16_fwdbwd": amdahl,
                                                 "wall_s": round(time.time() - t_all, 1)})
    print(f"finetune_bench: wrote {path}")
    if args.summary:
        doc = {}
        if os.path.exists(args.summary):
            try:
                with open(args.summary) as f:
                    doc = json.load(f)
            except (OSError, json.JSONDecodeError):
                doc = {}
        doc["speedup_halo2_int8_vs_bf16"] = speedup
        doc["speedup_source"] = (f"bench/finetune_bench.py: preset {args.preset}, batch {args.batch} x seq {args.seq},"
                                 f" full training step tokens/s, {device_facts()['device']}, {device_facts()['date']}")
        if h2:
            doc["fwdbwd_speedup_halo2_int8_vs_bf16"] = h2["fwdbwd_speedup_vs_bf16"]
        os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
        with open(args.summary, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"finetune_bench: speedup_halo2_int8_vs_bf16 = {speedup} -> {args.summary}")
    return 0 if base_row else 1


if __name__ == "__main__":
    sys.exit(main())
