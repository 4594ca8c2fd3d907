#!/usr/bin/env python3
"""How close is the whole model's gradient under HALO to the exact one? Loads a (pre-trained) preset model, computes
the gradient of the LM loss w.r.t. every block linear's weight and input once with plain fp32 nn.Linear (the
reference) and once per HALO configuration (halo_ext.HaloLinear, CPU ops), on the same batches, and prints the
relative error ‖ĝ − g‖ / ‖g‖ of the weight gradients (per linear type and over all of them) and of the loss.

The weight gradient is what the optimizer sees, so this is the per-step quantity behind a fine-tuning loss gap,
measured without training. CPU only; the 8-bit GEMM is replaced by an exact float32 matmul of the 8-bit codes
(K split in chunks of <= 1024, so int8 dot products stay exact) with the scales applied afterwards: the same
result as halo::qgemm's CPU reference, 20x faster.

  python tools/grad_probe.py --checkpoint OUT/pretrained-100m-*.pt --preset 100m --batches 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def fast_qgemm(a, b, scale_a, scale_b, out_dtype=None, bias=None):
    af, bf = a.to(torch.float32), b.to(torch.float32)
    k = af.shape[1]
    acc = None
    for c in range(0, k, 1024):
        part = (af[:, c:c + 1024] @ bf[:, c:c + 1024].t()).double()
        acc = part if acc is None else acc + part
    out = acc * scale_a.double().view(-1, 1) * scale_b.double().view(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype or torch.bfloat16)


CONFIGS = {
    # name: (level, precision, wgrad_scale, token signs)
    "halo0-int8": (0, "int8", "tensor", True),
    "halo2-int8-pt-plainHT": (2, "int8", "tensor", False),   # per-tensor E_Y in G, token rotation without signs
    "halo2-int8-pt": (2, "int8", "tensor", True),
    "halo2-int8": (2, "int8", "channel", True),
    "halo1-int8": (1, "int8", "channel", True),
    "halo0-fp8": (0, "fp8", "tensor", True),
    "halo2-fp8": (2, "fp8", "tensor", True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--preset", default="100m")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    import halo_ext
    import halo_ext.linear as L
    from halo_ext.finetune import data as D
    from halo_ext.finetune import model as M

    # the layers' ops are composed in C++ (halo.linear_forward/backward) and call halo.qgemm through the dispatcher:
    # override its CPU kernel for this process (a warning says so)
    lib = torch.library.Library("halo", "IMPL")
    lib.impl("qgemm", fast_qgemm, "CPU")
    base = M.build_preset(args.preset, 0, "cpu", torch.float32)
    if args.checkpoint:
        blob = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        base.load_state_dict(blob.get("model", blob))
    state = {k: v.clone() for k, v in base.state_dict().items()}
    corp = D.stdlib_corpora(D.ByteTokenizer())["docs"]
    sampler = D.BatchSampler(corp.train, args.batch, args.seq, 1)
    batches = [sampler.get(i) for i in range(args.batches)]

    def grads(model):
        out = defaultdict(list)
        losses = []
        for w in batches:
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=w[:, :-1], use_cache=False).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), w[:, 1:].reshape(-1))
            loss.backward()
            losses.append(float(loss.detach()))
            for name, mod in model.named_modules():
                if isinstance(mod, nn.Linear) and ".layers." in name:
                    out[name].append(mod.weight.grad.detach().double().clone())
        return out, losses

    orig_signs = L._token_signs
    ref, ref_loss = grads(base)
    results = {}
    for cname in args.configs.split(","):
        level, prec, wgs, signs = CONFIGS[cname]
        L._HB_CACHE.clear()
        L._SIGNS_CACHE.clear()
        L._token_signs = orig_signs if signs else (lambda b: torch.ones(b))
        model = M.build_preset(args.preset, 0, "cpu", torch.float32)
        model.load_state_dict(state)
        halo_ext.convert(model, level=level, precision=prec, wgrad_scale=wgs)
        g, losses = grads(model)
        per_kind = defaultdict(lambda: [0.0, 0.0])
        tot = [0.0, 0.0]
        row_errs = []
        for name in ref:
            kind = name.rsplit(".", 1)[-1]
            for gr, gh in zip(ref[name], g[name]):
                e, n = float((gh - gr).pow(2).sum()), float(gr.pow(2).sum())
                per_kind[kind][0] += e
                per_kind[kind][1] += n
                tot[0] += e
                tot[1] += n
                # per output channel (row of G): what a per-element optimizer (Adam) is sensitive to, since it
                # rescales every channel's gradient to unit size whatever its magnitude
                row_errs.append(((gh - gr).norm(dim=1) / gr.norm(dim=1).clamp_min(1e-30)).float())
        re_ = torch.cat(row_errs)
        row = {"all": (tot[0] / tot[1]) ** 0.5, **{k: (v[0] / v[1]) ** 0.5 for k, v in per_kind.items()},
               "row_median": float(re_.median()), "row_p90": float(re_.quantile(0.9)),
               "loss_rel_diff": sum(abs(a - b) / b for a, b in zip(losses, ref_loss)) / len(losses)}
        results[cname] = row
        print(f"{cname:24s} all {row['all']:.4f}  rows: median {row['row_median']:.4f} p90 {row['row_p90']:.4f}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                          if k not in ("all", "loss_rel_diff", "row_median", "row_p90"))
              + f"  loss {row['loss_rel_diff']:.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "tokens": args.batches * args.batch * args.seq, "ref_loss": ref_loss,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
