"""Training loop of halo-finetune: one phase (pre-training or fine-tuning of one variant) with AdamW (fp32 master
weights when the model computes in bf16), warm-up + cosine LR, gradient clipping, eval on fixed held-out windows,
tokens/s, checkpoints and resume; single process, DDP (quantized all-reduce hook) or HQ-FSDP under torchrun."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .data import BatchSampler, UserError


# ----------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return Dist(rank, world, local)


def wrap_parallel(model: nn.Module, d: Dist, device: torch.device, fsdp: bool, quantized_hook: bool,
                  hook_dtype: str = "int8", fsdp_mp: bool = False):
    """DDP (+ halo quantized all-reduce hook) or HQ-FSDP. Returns (model, info)."""
    info: Dict = {}
    if not d.enabled:
        return model, info
    if fsdp:
        fs = _find_fully_shard_halo()
        kw = {}
        if fsdp_mp:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if fs is not None:
            model = fs(model, **kw)
            info["parallel"] = "hq-fsdp"
        else:
            from torch.distributed.fsdp import fully_shard

            for blk in _blocks(model):
                fully_shard(blk, **kw)
            fully_shard(model, **kw)
            info["parallel"] = "fsdp2 (fully_shard_halo not available)"
        return model, info
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    model = DDP(model, device_ids=ids)
    info["parallel"] = "ddp"
    if quantized_hook:
        try:
            from halo_ext.distributed import QuantizedHookState, ddp_quantized_hook
        except ImportError:
            raise UserError("DDP with the quantized all-reduce needs halo_ext.distributed (not in this build); "
                            "pass --allreduce bf16 for the plain all-reduce") from None
        model.register_comm_hook(QuantizedHookState(dtype=hook_dtype), ddp_quantized_hook)
        info["allreduce"] = f"halo-{hook_dtype}"
    else:
        info["allreduce"] = "nccl-bf16" if device.type == "cuda" else "gloo"
    return model, info


def _find_fully_shard_halo():
    try:
        from halo_ext.distributed import fully_shard_halo  # type: ignore
        return fully_shard_halo
    except ImportError:
        pass
    try:
        from halo_ext.fsdp import fully_shard_halo  # type: ignore
        return fully_shard_halo
    except ImportError:
        return None


def _blocks(model: nn.Module) -> List[nn.Module]:
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            return list(m)
    return []


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


# ------------------------------------------------------------------------------------------------- optimizer
class MasterAdamW:
    """AdamW on fp32 master copies of low-precision (bf16) parameters: grads are upcast, the update runs in fp32
    and the result is rounded back into the bf16 parameters (small updates are not lost to bf16 rounding). For fp32
    parameters it is plain AdamW."""

    def __init__(self, params, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.0, eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.low = [p for p in self.params if p.dtype != torch.float32]
        self.master = {id(p): p.detach().float().clone() for p in self.low}
        opt_params = [self.master[id(p)] if id(p) in self.master else p for p in self.params]
        kw = dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        if opt_params and opt_params[0].is_cuda:
            plain = all(p.dtype == torch.float32 and type(p) in (torch.Tensor, nn.Parameter) for p in opt_params)
            kw["fused" if plain else "foreach"] = True
        self.opt = torch.optim.AdamW(opt_params, **kw)

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        for p in self.low:
            m = self.master[id(p)]
            m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        if self.low:
            with torch.no_grad():  # in place on the parameters (bumps their version, like any optimizer step)
                for p in self.low:
                    p.copy_(self.master[id(p)])
                    self.master[id(p)].grad = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> Dict:
        return {"opt": self.opt.state_dict(), "master": [self.master[id(p)] for p in self.low]}

    def load_state_dict(self, sd: Dict) -> None:
        self.opt.load_state_dict(sd["opt"])
        for p, m in zip(self.low, sd["master"]):
            self.master[id(p)].copy_(m)


def lr_at(step: int, total: int, peak: float, warmup_frac: float = 0.05, final_frac: float = 0.1) -> float:
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ---------------------------------------------------------------------------------------------- train / eval
def lm_loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    x, y = window[:, :-1], window[:, 1:]
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batch: int, device: torch.device, d: Dist) -> float:
    """Mean token loss over the fixed eval windows (split across ranks, averaged over all of them)."""
    was = model.training
    model.eval()
    if d.enabled:  # every rank must run the same number of forwards (FSDP): a multiple of world windows
        n = max(windows.shape[0] // d.world, 1) * d.world
        windows = windows.repeat((n + windows.shape[0] - 1) // windows.shape[0], 1)[:n]
    mine = windows[d.rank::d.world] if d.enabled else windows
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, mine.shape[0], batch):
        w = mine[i:i + batch].to(device, non_blocking=True)
        loss = lm_loss(model, w)
        total[0] += loss.double() * w.shape[0]
        total[1] += w.shape[0]
    if d.enabled:
        dist.all_reduce(total)
    model.train(was)
    return float(total[0] / total[1].clamp_min(1))


@dataclass
class PhaseResult:
    train_curve: List[List[float]] = field(default_factory=list)  # [step, mean loss over the last interval]
    eval_curve: List[List[float]] = field(default_factory=list)   # [step, eval loss]
    tokens_per_s: float = 0.0
    train_seconds: float = 0.0
    timed_tokens: int = 0
    peak_mem_gb: Optional[float] = None
    final_train_loss: float = float("nan")
    final_eval_loss: float = float("nan")
    stopped_at: Optional[int] = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_phase(name: str, model: nn.Module, opt: MasterAdamW, sampler: BatchSampler, eval_w: torch.Tensor, *,
              steps: int, lr: float, device: torch.device, d: Dist, eval_every: int, eval_batch: int,
              log_every: int = 10, warmup_steps_untimed: int = 3, clip: float = 1.0, start_step: int = 0,
              state: Optional[PhaseResult] = None, save_fn: Optional[Callable[[int, PhaseResult], None]] = None,
              save_every: int = 0, stop_after: Optional[int] = None, progress: bool = True) -> PhaseResult:
    """Train ``steps`` steps (from ``start_step`` when resuming). Timing: CUDA-synchronized wall time of the
    training steps only (eval and checkpointing excluded), the first ``warmup_steps_untimed`` steps of this run
    excluded; tokens/s counts all ranks."""
    res = state or PhaseResult()
    tokens_per_step = sampler.batch * sampler.seq * d.world
    bar = None
    if progress and d.main:
        try:
            from tqdm import tqdm

            import sys

            tty = sys.stderr.isatty()
            bar = tqdm(total=steps, initial=start_step, desc=name, dynamic_ncols=True, leave=True,
                       mininterval=1.0 if tty else 15.0)
        except ImportError:
            bar = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    if start_step == 0 and eval_every and not res.eval_curve:
        res.eval_curve.append([0, evaluate(model, eval_w, eval_batch, device, d)])
    acc = torch.zeros((), dtype=torch.float32, device=device)
    acc_n = 0
    timed_s, timed_tokens = 0.0, 0
    t0 = None
    steps_this_run = 0
    last_loss = float("nan")
    for step in range(start_step, steps):
        if steps_this_run == warmup_steps_untimed or (t0 is None and steps_this_run > warmup_steps_untimed):
            _sync(device)
            t0 = time.perf_counter()
        w = sampler.get(step).to(device, non_blocking=True)
        opt.set_lr(lr_at(step, steps, lr))
        loss = lm_loss(model, w)
        loss.backward()
        if clip:
            params = [p for p in model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
        acc += loss.detach().float()
        acc_n += 1
        steps_this_run += 1
        if t0 is not None:
            timed_tokens += tokens_per_step
        done = step + 1
        boundary = (done % log_every == 0) or done == steps or (eval_every and done % eval_every == 0) or \
            (save_every and done % save_every == 0) or (stop_after is not None and done >= stop_after)
        if not boundary:
            continue
        if t0 is not None:
            _sync(device)
            timed_s += time.perf_counter() - t0
        mean = acc / max(acc_n, 1)
        if d.enabled:
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            mean = mean / d.world
        last_loss = float(mean)
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"{name}: training loss is {last_loss} at step {done}")
        res.train_curve.append([done, last_loss])
        acc.zero_()
        acc_n = 0
        tps = timed_tokens / timed_s if timed_s > 0 else float("nan")
        if bar is not None:
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(done - bar.n)
        if eval_every and done % eval_every == 0 and done != steps:
            ev = evaluate(model, eval_w, eval_batch, device, d)
            res.eval_curve.append([done, ev])
            if bar is not None:
                bar.write(f"{name}: step {done} eval loss {ev:.4f}")
        stop = stop_after is not None and done >= stop_after and done < steps
        if save_fn is not None and ((save_every and done % save_every == 0) or stop):
            save_fn(done, res)
        if stop:
            res.stopped_at = done
            break
        if t0 is not None:
            t0 = time.perf_counter()
    if bar is not None:
        bar.close()
    res.timed_tokens += timed_tokens
    res.train_seconds += timed_s
    if res.train_seconds > 0:
        res.tokens_per_s = res.timed_tokens / res.train_seconds
    if device.type == "cuda":
        res.peak_mem_gb = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if res.train_curve:
        res.final_train_loss = res.train_curve[-1][1]
    if res.stopped_at is None:
        res.final_eval_loss = evaluate(model, eval_w, eval_batch, device, d)
        if not res.eval_curve or res.eval_curve[-1][0] != steps:
            res.eval_curve.append([steps, res.final_eval_loss])
    return res
