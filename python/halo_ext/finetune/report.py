"""The JSON report, the bench/results/finetune.json layout and the loss-curve plot of halo-finetune."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from typing import Dict, List, Optional

import torch

TIE_REL = 0.002  # levels "tie" when every HALO variant's eval loss is within 0.2% of every other's


def clean(x):
    """JSON-safe: NaN/inf -> None, tuples -> lists, tensors/numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return clean(x.item())
    return x


def environment(device: torch.device) -> Dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    try:
        import halo_ext

        env["halo_ext"] = halo_ext.__version__
        env["halo_cuda_built"] = halo_ext.cuda_built()
    except Exception:  # noqa: BLE001
        env["halo_ext"] = None
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001
        pass
    if device.type == "cpu":
        env["cpu_threads"] = torch.get_num_threads()
    return env


def rel_diffs(rows: List[Dict]) -> Dict[str, Optional[float]]:
    base = next((r for r in rows if r["variant"] == "bf16"), None)
    out = {}
    for r in rows:
        if base is None or r["variant"] == "bf16":
            continue
        b, h = base.get("final_eval_loss"), r.get("final_eval_loss")
        out[r["variant"]] = abs(h - b) / b if (b and h is not None and math.isfinite(h) and math.isfinite(b)) \
            else None
    return out


def tie_note(rows: List[Dict], outliers: Optional[Dict]) -> Dict:
    halo = [r for r in rows if r["variant"] != "bf16" and r.get("final_eval_loss") is not None]
    levels = {r.get("level") for r in halo}
    if len(halo) < 2 or len(levels) < 2:
        return {}
    losses = [r["final_eval_loss"] for r in halo]
    spread = (max(losses) - min(losses)) / min(losses)
    tie = spread <= TIE_REL
    note = (f"all HALO levels tie (eval losses within {100 * spread:.2f}% of each other): the model has no strong "
            "activation outliers, so the Hadamard rotations have nothing to fix at this scale"
            if tie else f"HALO variants differ by up to {100 * spread:.2f}% in eval loss")
    if outliers:
        note += f"; activation outlier ratio (max |x| / rms over linear inputs) = {outliers.get('max_ratio'):.1f}"
    return {"all_levels_tie": tie, "halo_eval_loss_spread": spread, "note": note}


def write_report(out_dir: str, report: Dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.json")
    with open(path, "w") as f:
        json.dump(clean(report), f, indent=1)
    return path


def results_rows(report: Dict) -> List[Dict]:
    cfg = report["config"]
    rows = []
    for r in report["variants"]:
        rows.append({k: r.get(k) for k in ("variant", "level", "precision", "final_train_loss", "final_eval_loss",
                                           "eval_loss_rel_diff", "tokens_per_s", "peak_mem_gb", "train_seconds",
                                           "halo_layers")}
                    | {"preset": cfg.get("preset"), "steps": cfg.get("steps"), "batch": cfg.get("batch"),
                       "seq": cfg.get("seq")})
    return rows


def write_results(path: str, report: Dict) -> str:
    """bench/results/finetune.json: {device, torch, date, config, corpus, rows, eval_loss_rel_diff_halo2_int8,
    speedup_halo2_int8_vs_bf16 (kept from the file: bench/finetune_bench.py writes it), note}."""
    old = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = {}
    env = report["environment"]
    doc = {"device": env.get("device"), "torch": env.get("torch"), "halo_ext": env.get("halo_ext"),
           "date": env.get("date"), "config": report["config"], "corpus": report.get("corpus"),
           "model": report.get("model"), "pretrain": {k: v for k, v in (report.get("pretrain") or {}).items()
                                                      if k not in ("train_curve", "eval_curve")},
           "rows": results_rows(report)}
    rd = report.get("eval_loss_rel_diff", {})
    doc["eval_loss_rel_diff_halo2_int8"] = rd.get("halo2-int8")
    for k, v in rd.items():
        doc[f"eval_loss_rel_diff_{k.replace('-', '_')}"] = v
    doc["speedup_halo2_int8_vs_bf16"] = old.get("speedup_halo2_int8_vs_bf16")
    for k, v in old.items():  # the benchmark's keys (bench/finetune_bench.py writes them)
        if k.startswith(("speedup", "fwdbwd_speedup")) and k not in doc:
            doc[k] = v
    if report.get("levels"):
        doc["levels"] = report["levels"]
    if report.get("activation_outliers"):
        doc["activation_outliers"] = report["activation_outliers"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(doc), f, indent=1)
    return path


def plot(out_dir: str, report: Dict) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    pre = report.get("pretrain") or {}
    for r in report["variants"]:
        tc, ec = r.get("train_curve") or [], r.get("eval_curve") or []
        lab = r["variant"]
        if tc:
            line, = axes[0].plot([p[0] for p in tc], [p[1] for p in tc], label=lab, lw=1.2)
            if ec:
                axes[1].plot([p[0] for p in ec], [p[1] for p in ec], "o-", color=line.get_color(), label=lab)
    axes[0].set_title("fine-tuning: train loss")
    axes[1].set_title("fine-tuning: held-out eval loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    cfg = report["config"]
    title = f"halo-finetune: {cfg.get('model') or cfg.get('preset')} on {report.get('data_name')}, " \
            f"batch {cfg.get('batch')} x seq {cfg.get('seq')}"
    if pre.get("steps"):
        title += f" (after {pre['steps']} pre-training steps)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
