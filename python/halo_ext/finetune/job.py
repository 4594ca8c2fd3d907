"""The halo-finetune job: data, (pre-training of a preset), then fine-tuning of every variant with the same seed and
data order, then the report, the results file and the plot."""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from . import data as D
from . import model as M
from . import report as R
from .train import (Dist, MasterAdamW, PhaseResult, evaluate, init_distributed, run_phase, unwrap, wrap_parallel)

log = logging.getLogger("halo_ext.finetune")


def _say(d: Dist, msg: str) -> None:
    if d.main:
        print(f"halo-finetune: {msg}", flush=True)


def resolve_device(name: Optional[str]) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise D.UserError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
        return torch.device("cuda", torch.cuda.current_device())
    if name == "cpu":
        return torch.device("cpu")
    raise D.UserError(f"--device must be cpu or cuda, got {name!r}")


def variants_from_args(args) -> List[M.Variant]:
    if args.variants:
        vs = [M.parse_variant(v) for v in args.variants.split(",") if v.strip()]
    else:
        if args.level not in (0, 1, 2):
            raise D.UserError(f"--level must be 0, 1 or 2, got {args.level}")
        if args.precision not in ("int8", "fp8", "bf16"):
            raise D.UserError(f"--precision must be int8, fp8 or bf16, got {args.precision!r}")
        main = M.parse_variant(f"halo{args.level}-{args.precision}")
        vs = [M.Variant("bf16", None, "bf16"), main] if args.compare else [main]
    seen, out = set(), []
    for v in vs:
        if v.name not in seen:
            seen.add(v.name)
            out.append(v)
    if not out:
        raise D.UserError("--variants is empty")
    return out


def activation_outliers(model: nn.Module, window: torch.Tensor) -> Dict:
    """max |x| / rms(x) and max/median per-channel rms over the inputs of every block linear, on one batch."""
    stats: List = []

    def hook(mod, inp, out):
        x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
        rms = x.pow(2).mean().sqrt().clamp_min(1e-12)
        ch = x.pow(2).mean(0).sqrt()
        stats.append((float(x.abs().max() / rms), float(ch.max() / ch.median().clamp_min(1e-12))))

    hs = [m.register_forward_hook(hook) for n, m in model.named_modules()
          if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    try:
        with torch.no_grad():
            model(input_ids=window[:, :-1], use_cache=False)
    finally:
        for h in hs:
            h.remove()
    if not stats:
        return {}
    return {"max_ratio": max(s[0] for s in stats), "median_ratio": sorted(s[0] for s in stats)[len(stats) // 2],
            "max_channel_ratio": max(s[1] for s in stats)}


def run_job(args) -> Dict:
    t_start = time.time()
    device = resolve_device(args.device)
    d = init_distributed(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    variants = variants_from_args(args)
    if any(v.is_halo for v in variants):
        M._halo()
        import halo_ext

        if device.type == "cuda" and not halo_ext.cuda_available():
            raise D.UserError("halo_ext was built without CUDA kernels: rebuild with HALO_CUDA=ON, or run the bf16 "
                              "variant / --device cpu")
    if args.model is None and args.preset not in M.PRESETS:
        raise D.UserError(f"unknown preset {args.preset!r}: choose one of {', '.join(M.PRESETS)}")
    if args.steps < 1 or args.batch < 1 or args.seq < 2:
        raise D.UserError("--steps, --batch must be >= 1 and --seq >= 2")
    if args.fsdp and not d.enabled:
        _say(d, "warning: --fsdp without torchrun (WORLD_SIZE=1): running single-process")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    out_dir = os.path.abspath(args.out)
    if d.main:
        os.makedirs(out_dir, exist_ok=True)

    # ---- model source and tokenizer
    base_state = None
    hf_model = None
    if args.model:
        hf_model, tok = M.load_pretrained(args.model, "cpu", dtype)
        base_state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
        model_desc = {"source": os.path.abspath(args.model), "type": type(hf_model).__name__,
                      "params": M.param_count(hf_model)}
    else:
        tok = D.ByteTokenizer()
        model_desc = {"source": f"preset {args.preset}", **M.PRESETS[args.preset], "vocab_size": D.BYTE_VOCAB}

    # ---- data
    if args.data:
        ft = D.load_file_corpus(args.data, tok)
        corpus_info = {"finetune": ft.info}
        pre = D.stdlib_corpora(tok)["code"] if (args.model is None and args.pretrain_steps > 0) else None
    else:
        corp = D.stdlib_corpora(tok)
        ft, pre = corp["docs"], (corp["code"] if args.model is None and args.pretrain_steps > 0 else None)
        corpus_info = {"finetune": ft.info}
    if pre is not None:
        corpus_info["pretrain"] = pre.info
    eval_w = D.eval_windows(ft.eval, args.seq, args.eval_batches * args.batch)
    _say(d, f"device {device} (world {d.world}), variants {', '.join(v.name for v in variants)}; "
            f"fine-tune data {ft.name}: {ft.train.size:,} train / {ft.eval.size:,} eval tokens")

    # ---- pre-training (presets): bf16, once, cached in --out
    pre_report = None
    if args.model is None:
        m0 = M.build_preset(args.preset, args.seed, device, dtype, max_positions=max(4096, args.seq))
        model_desc["params"] = M.param_count(m0)
        if pre is not None:
            key = hashlib.sha256(json.dumps([args.preset, args.pretrain_steps, args.pretrain_lr, args.batch,
                                             args.seq, args.seed, pre.info["sha256"], d.world]).encode()
                                 ).hexdigest()[:16]
            cache = os.path.join(out_dir, f"pretrained-{args.preset}-{key}.pt")
            if os.path.exists(cache) and not args.no_cache:
                blob = torch.load(cache, map_location="cpu", weights_only=False)
                m0.load_state_dict(blob["model"])
                pre_report = blob["report"]
                _say(d, f"pre-trained weights loaded from {cache}")
            else:
                sampler = D.BatchSampler(pre.train, args.batch, args.seq, args.seed + 7919, d.rank, d.world)
                pw = D.eval_windows(pre.eval, args.seq, args.eval_batches * args.batch)
                wrapped, _ = wrap_parallel(m0, d, device, fsdp=False, quantized_hook=False)
                opt = MasterAdamW(wrapped.parameters(), lr=args.pretrain_lr, weight_decay=args.weight_decay)
                res = run_phase("pretrain (bf16, code)", wrapped, opt, sampler, pw, steps=args.pretrain_steps,
                                lr=args.pretrain_lr, device=device, d=d, eval_every=0, eval_batch=args.batch,
                                log_every=args.log_every, progress=not args.no_progress)
                m0 = unwrap(wrapped)
                del opt, wrapped
                pre_report = {"steps": args.pretrain_steps, "lr": args.pretrain_lr, "data": pre.name,
                              "final_train_loss": res.final_train_loss, "final_eval_loss": res.final_eval_loss,
                              "tokens_per_s": res.tokens_per_s, "train_curve": res.train_curve}
                if d.main:
                    torch.save({"model": m0.state_dict(), "report": pre_report}, cache + ".tmp")
                    os.replace(cache + ".tmp", cache)
                _say(d, f"pre-training done: eval loss (code) {res.final_eval_loss:.4f}")
        base_state = {k: v.detach().to("cpu", copy=True) for k, v in m0.state_dict().items()}
        del m0
        _free(device)

    def fresh_model() -> nn.Module:
        if hf_model is not None:
            m = copy.deepcopy(hf_model)
            m.load_state_dict(base_state)
            return m.to(device)
        m = M.build_preset(args.preset, args.seed, device, dtype, max_positions=max(4096, args.seq))
        m.load_state_dict(base_state)
        return m

    # ---- activation outliers of the model we start fine-tuning from (explains whether the levels differ)
    outliers = None
    try:
        m = fresh_model()
        outliers = activation_outliers(m, eval_w[: min(args.batch, eval_w.shape[0])].to(device))
        del m
        _free(device)
    except Exception as e:  # noqa: BLE001 - diagnostic only
        log.debug("activation outlier probe failed: %s", e)

    # ---- fine-tuning: every variant from the same weights, seed and data order
    rows: List[Dict] = []
    stopped = False
    for v in variants:
        torch.manual_seed(args.seed)
        model = fresh_model()
        if args.fsdp and d.enabled:
            model = model.float()
        model, vinfo = M.apply_variant(model, v, args.lora)
        model, pinfo = wrap_parallel(model, d, device, fsdp=args.fsdp, quantized_hook=args.allreduce != "bf16",
                                     hook_dtype=args.allreduce if args.allreduce != "bf16" else "int8",
                                     fsdp_mp=device.type == "cuda")
        opt = MasterAdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        sampler = D.BatchSampler(ft.train, args.batch, args.seq, args.seed, d.rank, d.world)
        ckpt = os.path.join(out_dir, f"ckpt-{v.name}.pt")
        start, state = 0, None
        if args.resume and args.fsdp and d.enabled:
            raise D.UserError("--resume with --fsdp is not supported yet (checkpoints are saved with "
                              "torch.distributed.checkpoint under <out>/ckpt-<variant>.pt.dcp)")
        if args.resume and os.path.exists(ckpt):
            blob = torch.load(ckpt, map_location="cpu", weights_only=False)
            if blob.get("steps") != args.steps:
                raise D.UserError(f"--resume: checkpoint {ckpt} was made for --steps {blob.get('steps')}, "
                                  f"not {args.steps}")
            unwrap(model).load_state_dict(blob["model"])
            opt.load_state_dict(_to_device(blob["opt"], device))
            start = blob["step"]
            state = PhaseResult(**blob["result"])
            state.stopped_at = None
            _say(d, f"{v.name}: resumed from {ckpt} at step {start}")

        def save(step: int, res: PhaseResult, _v=v, _model=model, _opt=opt, _ckpt=ckpt) -> None:
            if args.fsdp and d.enabled:
                _save_dcp(_ckpt + ".dcp", _model, _opt, step)
                return
            if not d.main:
                return
            blob = {"model": unwrap(_model).state_dict(), "opt": _opt.state_dict(), "step": step,
                    "steps": args.steps, "variant": _v.name, "result": _result_dict(res)}
            torch.save(blob, _ckpt + ".tmp")
            os.replace(_ckpt + ".tmp", _ckpt)

        res = run_phase(f"{v.name}", model, opt, sampler, eval_w, steps=args.steps, lr=args.lr, device=device,
                        d=d, eval_every=args.eval_every, eval_batch=args.batch, log_every=args.log_every,
                        start_step=start, state=state, save_fn=save, save_every=args.save_every,
                        stop_after=args.stop_after, progress=not args.no_progress)
        row = {**vinfo, **pinfo, "final_train_loss": res.final_train_loss, "final_eval_loss": res.final_eval_loss,
               "tokens_per_s": res.tokens_per_s, "train_seconds": res.train_seconds, "peak_mem_gb": res.peak_mem_gb,
               "train_curve": res.train_curve, "eval_curve": res.eval_curve}
        if res.stopped_at is not None:
            row["stopped_at"] = res.stopped_at
            stopped = True
            _say(d, f"{v.name}: stopped after step {res.stopped_at} (checkpoint {ckpt}; continue with --resume)")
        else:
            _say(d, f"{v.name}: final train loss {res.final_train_loss:.4f}, eval loss {res.final_eval_loss:.4f}, "
                    f"{res.tokens_per_s:,.0f} tokens/s")
        if args.save_final and d.main and res.stopped_at is None:
            unwrap(model).save_pretrained(os.path.join(out_dir, f"model-{v.name}")) \
                if hasattr(unwrap(model), "save_pretrained") else None
        rows.append(row)
        del model, opt
        _free(device)

    # ---- report
    rd = R.rel_diffs(rows)
    for r in rows:
        r["eval_loss_rel_diff"] = rd.get(r["variant"])
    report = {
        "config": {k: getattr(args, k) for k in ("preset", "model", "data", "level", "precision", "lora", "steps",
                                                 "batch", "seq", "lr", "seed", "pretrain_steps", "pretrain_lr",
                                                 "eval_every", "eval_batches", "fsdp", "allreduce", "weight_decay")}
        | {"variants": [v.name for v in variants], "world_size": d.world, "dtype": str(dtype).replace("torch.", ""),
           "tokens_per_step": args.batch * args.seq * d.world},
        "environment": R.environment(device) | {"world_size": d.world},
        "corpus": corpus_info, "data_name": ft.name, "model": model_desc, "pretrain": pre_report,
        "activation_outliers": outliers, "variants": rows, "eval_loss_rel_diff": rd,
        "levels": R.tie_note(rows, outliers), "wall_seconds": time.time() - t_start, "complete": not stopped,
    }
    if d.main:
        report["report_path"] = R.write_report(out_dir, report)
        report["plot_path"] = R.plot(out_dir, report)
        R.write_report(out_dir, report)
        if args.results and not stopped:
            report["results_path"] = R.write_results(args.results, report)
    return report


def _result_dict(res: PhaseResult) -> Dict:
    return {k: getattr(res, k) for k in ("train_curve", "eval_curve", "tokens_per_s", "train_seconds",
                                         "timed_tokens", "peak_mem_gb", "final_train_loss", "final_eval_loss")}


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _save_dcp(path: str, model, opt, step: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt.opt)
    dcp.save({"model": msd, "optim": osd, "step": step}, checkpoint_id=path)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
