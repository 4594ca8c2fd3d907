"""Command line of halo-finetune (also ``python -m halo_ext.finetune``)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from .data import UserError
from .model import PRESET_DEFAULTS, PRESETS

EPILOG = """
default job (no downloads): a Llama-architecture preset (random init) is pre-trained in bf16 on the Python standard
library's code, then fine-tuned on the natural-language text of the standard library (docstrings and comments), with
eval on held-out files. Examples:
  halo-finetune --compare                                  # bf16 vs HALO-2 int8 (tiny on CPU, 100m on a GPU)
  halo-finetune --preset 100m --compare --variants bf16,halo2-int8,halo0-fp8,halo0-int8 --steps 1000 \\
      --results bench/results/finetune.json                # the accuracy run
  halo-finetune --model ./my-llama --data train.jsonl --lora 16 --level 2 --precision int8
  torchrun --nproc_per_node=2 -m halo_ext.finetune --preset 100m          # DDP + quantized all-reduce
  torchrun --nproc_per_node=2 -m halo_ext.finetune --preset 100m --fsdp   # HQ-FSDP
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="halo-finetune", description="Fine-tune a causal LM with HALO (Hadamard-rotated "
                                "8-bit GEMMs) and compare it with bf16.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--preset", default=None, help=f"random-init Llama preset: {'|'.join(PRESETS)} "
                   "(default: tiny on CPU, 100m on a GPU)")
    g.add_argument("--model", default=None, metavar="PATH", help="local Hugging Face checkpoint directory")
    g.add_argument("--data", default=None, metavar="FILE", help="text file, or jsonl with a \"text\" field "
                   "(default: the embedded standard-library corpus)")
    g = p.add_argument_group("HALO")
    g.add_argument("--level", type=int, default=2, help="HALO level 0|1|2 (default 2)")
    g.add_argument("--precision", default="int8", help="int8|fp8|bf16 (default int8)")
    g.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank (0: full fine-tuning)")
    g.add_argument("--compare", action="store_true", help="also run bf16 with the same seed and data order")
    g.add_argument("--variants", default=None, help="comma list, e.g. bf16,halo2-int8,halo0-fp8 (implies --compare); "
                   "a -pt suffix (halo2-int8-pt) quantizes E_Y per tensor in the weight gradient")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="fine-tuning steps")
    g.add_argument("--batch", type=int, default=None, help="sequences per step (per GPU)")
    g.add_argument("--seq", type=int, default=None, help="tokens per sequence")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (warm-up 5%%, cosine to 10%%)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--pretrain-steps", type=int, default=None, help="bf16 pre-training steps of a preset (0: none)")
    g.add_argument("--pretrain-lr", type=float, default=None)
    g.add_argument("--eval-every", type=int, default=None)
    g.add_argument("--eval-batches", type=int, default=None, help="held-out eval size in batches")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--device", default="auto", help="cpu|cuda (default: cuda if available)")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: HQ-FSDP instead of DDP")
    g.add_argument("--allreduce", default="int8", help="DDP gradient all-reduce: int8|fp8 (halo quantized hook) "
                   "or bf16 (plain)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="halo_finetune_out", metavar="DIR")
    g.add_argument("--results", default=None, metavar="JSON", help="also write the bench results layout here "
                   "(e.g. bench/results/finetune.json)")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (<out>/ckpt-<variant>.pt)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/ckpt-<variant>.pt")
    g.add_argument("--stop-after", type=int, default=None, help="stop after this step with a checkpoint")
    g.add_argument("--save-final", action="store_true", help="save_pretrained each fine-tuned model")
    g.add_argument("--no-cache", action="store_true", help="re-run pre-training even if cached in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    return p


def apply_defaults(args) -> None:
    import torch

    if args.preset is None:
        if args.device == "cpu" or (args.device in (None, "auto") and not torch.cuda.is_available()):
            args.preset = "tiny"
        else:
            args.preset = "100m"
    if args.model is None and args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    if args.variants:
        args.compare = True
    dflt = dict(PRESET_DEFAULTS[args.preset if args.model is None else "model"])
    if args.model is not None and args.lora:
        dflt["lr"] = 2e-4
    for k in ("steps", "batch", "seq", "lr", "pretrain_steps", "pretrain_lr", "eval_every", "eval_batches"):
        if getattr(args, k) is None:
            setattr(args, k, dflt[k])
    if args.model is not None:
        args.pretrain_steps = 0
        args.preset = None
    if args.lora < 0:
        raise UserError("--lora must be >= 0")
    if args.allreduce not in ("int8", "fp8", "bf16"):
        raise UserError(f"--allreduce must be int8, fp8 or bf16, got {args.allreduce!r}")
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError("--stop-after must be >= 1")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="halo-finetune: %(levelname)s: %(message)s")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        apply_defaults(args)
        from .job import run_job

        report = run_job(args)
    except UserError as e:
        print(f"halo-finetune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halo-finetune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"halo-finetune: error: {type(e).__name__}: {msg} (run with -v for the traceback)", file=sys.stderr)
        return 1
    if "report_path" in report:
        print(f"halo-finetune: report: {report['report_path']}")
        if report.get("plot_path"):
            print(f"halo-finetune: plot: {report['plot_path']}")
        if report.get("results_path"):
            print(f"halo-finetune: results: {report['results_path']}")
        lv = report.get("levels") or {}
        if lv.get("note"):
            print(f"halo-finetune: {lv['note']}")
        for r in report["variants"]:
            rd = r.get("eval_loss_rel_diff")
            print(f"  {r['variant']:>12}: eval loss {_f(r.get('final_eval_loss'))}  train loss "
                  f"{_f(r.get('final_train_loss'))}  tokens/s {_f(r.get('tokens_per_s'), 0)}"
                  + (f"  rel diff vs bf16 {100 * rd:.2f}%" if rd is not None else ""))
    _finish_dist()
    return 0


def _finish_dist() -> None:
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


def _f(x, nd: int = 4) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:,.{nd}f}"


if __name__ == "__main__":
    sys.exit(main())
