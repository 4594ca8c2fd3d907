"""HQ-FSDP benchmark: FSDP2 training throughput, peak memory, bytes sent and loss of a ~1B Llama.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
        torchrun --nproc_per_node=2 bench/fsdp_bench.py [--loss-steps 200] [--steps 10]

Variants (same init, same data, equal batch):
  bf16_fsdp2       nn.Linear, fully_shard per block + root, MixedPrecisionPolicy(bf16 params, bf16 reduce)
  halo_bf16_fsdp2  halo_ext.convert(level, precision) + the same plain FSDP2 (bf16 all-gather / reduce-scatter)
  hq_fsdp          halo_ext.convert + halo_ext.fsdp.fully_shard_halo: 8-bit weight all-gather + int8 block
                   reduce-scatter
Model: LlamaConfig hidden 2048, intermediate 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000 (TinyLlama-1.1B
shape), random init, seq 2048, sdpa attention. Data: a fixed random sparse Markov chain over the vocab (learnable,
so loss curves mean something). Rank 0 writes bench/results/fsdp.json (rows merged on world+variant+kind).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_k, _v)

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_results  # noqa: E402

import halo_ext  # noqa: E402
from halo_ext import fsdp as hf  # noqa: E402


DEV = "cuda"  # --device cpu: a Gloo smoke run of the script's logic (tiny shapes), no timings worth reading


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    with torch.device(DEV):
        model = LlamaForCausalLM(cfg)
    if args.ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def setup(variant, args, stats):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    model = build_model(args)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=args.reduce_dtype)
    if variant != "bf16_fsdp2":
        halo_ext.convert(model, level=args.level, precision=args.precision)
    if variant == "hq_fsdp":
        hf.fully_shard_halo(model, mp_policy=mp, quantized_allgather=True, quantized_reduce_scatter=True,
                            reduce_scatter_dtype=args.rs_dtype, reduce_scatter_block=args.rs_block,
                            comm_stats=stats, blocks=list(model.model.layers))
    else:
        for blk in model.model.layers:
            fully_shard(blk, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        try:
            hf.instrument_fsdp_comms(model, stats)
        except AttributeError as e:  # set_custom_all_gather missing in this torch: no byte counts
            log(f"no byte counting: {e}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    return model, opt


class MarkovData:
    """Tokens from a fixed random Markov chain: each token has `fanout` successors with random probabilities
    (entropy floor ~ln(fanout)); every rank draws its own rows from a generator seeded by (seed, step, rank)."""

    def __init__(self, vocab, fanout=4, seed=1234):
        g = torch.Generator(device=DEV).manual_seed(seed)
        self.succ = torch.randint(0, vocab, (vocab, fanout), generator=g, device=DEV)
        p = torch.rand(vocab, fanout, generator=g, device=DEV) + 0.1
        self.cdf = (p / p.sum(1, keepdim=True)).cumsum(1)
        self.vocab, self.fanout = vocab, fanout

    def generate(self, n, seq, seed):
        """[n, seq] token rows; the loop over positions is n-wide, so one call makes all the rows a run needs."""
        g = torch.Generator(device=DEV).manual_seed(seed)
        tok = torch.randint(0, self.vocab, (n,), generator=g, device=DEV)
        u = torch.rand(n, seq, generator=g, device=DEV)
        out = torch.empty(n, seq, dtype=torch.long, device=DEV)
        out[:, 0] = tok
        for t in range(1, seq):
            j = (u[:, t: t + 1] > self.cdf[tok]).sum(1).clamp_max(self.fanout - 1)
            tok = self.succ[tok, j]
            out[:, t] = tok
        return out


def train_step(model, opt, ids, clip):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def run_perf(variant, args, data, world, rank):
    stats = hf.CommStats()
    torch.cuda.empty_cache()
    model, opt = setup(variant, args, stats)
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # after sharding: the transient full model built on each GPU is excluded
    pool = data.generate(4 * args.batch, args.seq, seed=10_000 + rank)
    batches = list(pool.split(args.batch))
    for i in range(args.warmup):
        train_step(model, opt, batches[i % len(batches)], args.clip)
    _sync()
    stats.reset()
    train_step(model, opt, batches[0], args.clip)
    sent = dict(stats.sent)
    _sync()
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        train_step(model, opt, batches[i % len(batches)], args.clip)
    _sync()
    dt = time.perf_counter() - t0
    tokens = world * args.batch * args.seq * args.steps
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0], device=DEV)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    nparams = sum(p.numel() for p in model.parameters())
    del model, opt
    torch.cuda.empty_cache()
    return {"world": world, "variant": variant, "kind": "perf", "tokens_per_s": tokens / dt,
            "step_ms": 1e3 * dt / args.steps, "peak_GB": peak.item(), "params": nparams,
            "sent_MB_per_step": sum(sent.values()) / 2**20,
            "sent_breakdown_MB": {k: v / 2**20 for k, v in sent.items()},
            "batch_per_rank": args.batch, "seq": args.seq, "layers": args.layers}


def run_loss(variant, args, data, world, rank):
    stats = hf.CommStats()
    model, opt = setup(variant, args, stats)
    pool = data.generate(args.loss_steps * args.batch, args.seq, seed=rank)
    losses = []
    for s in range(args.loss_steps):
        lr = args.lr * min(1.0, (s + 1) / args.lr_warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = train_step(model, opt, pool[s * args.batch:(s + 1) * args.batch], args.clip)
        t = loss.detach().float().reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        losses.append(t)
    losses = torch.cat(losses).tolist()
    del model, opt
    torch.cuda.empty_cache()
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="bf16_fsdp2,halo_bf16_fsdp2,hq_fsdp")
    ap.add_argument("--loss-variants", default="bf16_fsdp2,halo_bf16_fsdp2,hq_fsdp")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--rs-dtype", default="int8")
    ap.add_argument("--rs-block", type=int, default=256)
    ap.add_argument("--reduce-dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--loss-steps", type=int, default=200, help="0 skips the loss comparison (issue target: 200)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-warmup", type=int, default=20)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--ac", action="store_true", help="activation checkpointing on every block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default="fsdp", help="results name (bench/results/<out>.json)")
    args = ap.parse_args()
    args.reduce_dtype = torch.bfloat16 if args.reduce_dtype == "bf16" else torch.float32

    global DEV
    DEV = args.device
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if DEV == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    world = dist.get_world_size()
    log(f"world {world}, {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu'}, torch {torch.__version__}, halo_ext {halo_ext.__version__}")
    have_convert = hasattr(halo_ext, "convert")
    variants = [v for v in args.variants.split(",") if v]
    if not have_convert:
        log("halo_ext.convert is missing (HALO layer not merged): only bf16_fsdp2 runs")
        variants = [v for v in variants if v == "bf16_fsdp2"]
    data = MarkovData(args.vocab)
    rows = []
    for v in variants:
        t0 = time.perf_counter()
        try:
            r = run_perf(v, args, data, world, rank)
        except Exception as e:  # keep the other variants' numbers
            log(f"[{v}] FAILED: {type(e).__name__}: {e}")
            r = {"world": world, "variant": v, "kind": "perf", "error": f"{type(e).__name__}: {e}"}
            if DEV == "cuda":
                torch.cuda.empty_cache()
        rows.append(r)
        log(f"[{v}] {r.get('tokens_per_s', float('nan')):.0f} tok/s, peak {r.get('peak_GB', float('nan')):.1f} GB,"
            f" sent {r.get('sent_MB_per_step', float('nan')):.1f} MB/step ({time.perf_counter() - t0:.0f} s)")
    base = next((r for r in rows if r["variant"] == "bf16_fsdp2" and "tokens_per_s" in r), None)
    for r in rows:
        if base and "tokens_per_s" in r and base["sent_MB_per_step"] > 0:
            r["speedup_vs_bf16"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["bytes_vs_bf16"] = r["sent_MB_per_step"] / base["sent_MB_per_step"]

    curves = {}
    if args.loss_steps > 0:
        for v in [v for v in args.loss_variants.split(",") if v in variants]:
            t0 = time.perf_counter()
            try:
                curves[v] = run_loss(v, args, data, world, rank)
            except Exception as e:
                log(f"[loss {v}] FAILED: {type(e).__name__}: {e}")
                continue
            log(f"[loss {v}] first {curves[v][0]:.4f} last {curves[v][-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    if "bf16_fsdp2" in curves:
        ref = curves["bf16_fsdp2"]
        w = max(1, min(20, len(ref) // 10))
        for v, c in curves.items():
            # smoothed (moving average of w steps) relative gap, and final-window gap
            sm = lambda x: [sum(x[i - w + 1:i + 1]) / w for i in range(w - 1, len(x))]  # noqa: E731
            gaps = [abs(a - b) / b for a, b in zip(sm(c), sm(ref))]
            rows.append({"world": world, "variant": v, "kind": "loss", "loss_steps": len(c),
                         "final_loss": sum(c[-w:]) / w, "ref_final_loss": sum(ref[-w:]) / w,
                         "final_rel_gap": abs(sum(c[-w:]) - sum(ref[-w:])) / sum(ref[-w:]),
                         "max_smoothed_rel_gap": max(gaps) if gaps else None, "window": w,
                         "curve": [round(x, 5) for x in c]})
    if rank == 0:
        print_table([r for r in rows if r["kind"] == "perf"],
                    ["world", "variant", "tokens_per_s", "step_ms", "peak_GB", "sent_MB_per_step",
                     "speedup_vs_bf16", "bytes_vs_bf16"])
        lrows = [r for r in rows if r["kind"] == "loss"]
        if lrows:
            print_table(lrows, ["variant", "loss_steps", "final_loss", "ref_final_loss", "final_rel_gap",
                                "max_smoothed_rel_gap"])
        extra = {"config": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(args).items()},
                 "capabilities": halo_ext.capabilities()}
        print("wrote", write_results(args.out, rows, merge_key=("world", "variant", "kind"), extra=extra))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
