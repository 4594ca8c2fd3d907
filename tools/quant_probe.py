#!/usr/bin/env python3
"""Where does per-tensor 8-bit quantization lose accuracy in a model? One forward + backward of a causal LM on one
batch; for every block linear (Y = X Wᵀ) the inputs X, W and the output gradient E_Y are captured and the three
GEMMs (Y, E_X = E_Y W, G = E_Yᵀ X) are recomputed in float64 exactly and under simulated quantization schemes
(the HALO levels and variants of them). Prints, per linear type, the median relative Frobenius error
‖Ŷ − Y‖ / ‖Y‖ of each GEMM and the outlier statistics of X and E_Y (token-wise and channel-wise), and writes JSON.

The simulation is the math of halo_ext's kernels (per-tensor absmax scale, round to nearest, int8 in [-127, 127] or
a float8 cast), not the kernels themselves; it answers "which operand of which GEMM dominates the error", which
the end-to-end loss cannot.

  python tools/quant_probe.py --checkpoint OUT/pretrained-100m-*.pt --preset 100m --tokens 2048
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def hadamard_matrix(b: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(b)


def rotate_cols(x: torch.Tensor, b: int) -> torch.Tensor:
    """x (I ⊗ H_b) along the last dim (symmetric H_b: also the inverse)."""
    h = hadamard_matrix(b)
    return (x.reshape(*x.shape[:-1], x.shape[-1] // b, b) @ h).reshape(x.shape)


def rotate_rows(x: torch.Tensor, b: int) -> torch.Tensor:
    """(I ⊗ H_b) x along the first dim (rows zero-padded to a multiple of b by the caller)."""
    return rotate_cols(x.t(), b).t()


def q_tensor(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-tensor dynamic quantize-dequantize."""
    return q_rows(x.reshape(1, -1), kind).reshape(x.shape)


def q_rows(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Quantize-dequantize with one absmax scale per row of the 2-D x."""
    amax = x.abs().amax(1, keepdim=True)
    if kind == "int8":
        s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        return torch.round(x / s).clamp(-127, 127) * s
    fmt, top = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}[kind]
    s = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    return (x / s).to(torch.float32).to(fmt).to(torch.float64) * s


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def ratio_stats(x: torch.Tensor) -> dict:
    """Outliers of a 2-D tensor: max|x|/rms, max/median row rms (tokens), max/median column rms (channels)."""
    rms = x.pow(2).mean().sqrt().clamp_min(1e-300)
    r = x.pow(2).mean(1).sqrt()
    c = x.pow(2).mean(0).sqrt()
    return {"max_over_rms": float(x.abs().max() / rms),
            "token_ratio": float(r.max() / r.median().clamp_min(1e-300)),
            "channel_ratio": float(c.max() / c.median().clamp_min(1e-300))}


def rotation_block_of(n: int) -> int:
    return n if n & (n - 1) == 0 else min(n & -n, 512)


def schemes(x, w, ey, kb, tb, precs):
    """Relative errors of Y, E_X, G for each scheme. x [M, K], w [N, K], ey [M, N] float64; kb: H_m block (0 = full
    length), tb: token block."""
    m, k = x.shape
    kb = kb or k
    mp = -(-m // tb) * tb
    xp = torch.nn.functional.pad(x, (0, 0, 0, mp - m))
    eyp = torch.nn.functional.pad(ey, (0, 0, 0, mp - m))
    y, ex, g = x @ w.t(), ey @ w, ey.t() @ x
    xh, wh = rotate_cols(x, kb), rotate_cols(w, kb)
    g_ = torch.Generator().manual_seed(1234)
    signs = (torch.randint(0, 2, (max(mp, k),), generator=g_) * 2 - 1).double()
    out = {}
    for p, gp in precs:
        tag = p if p == gp else f"{p}/{gp}"
        qx, qw, qe = q_tensor(x, p), q_tensor(w, p), q_tensor(ey, gp)
        qxh, qwh = q_tensor(xh, p), q_tensor(wh, p)
        out[f"L0 {tag}"] = (rel(qx @ qw.t(), y), rel(qe @ qw, ex), rel(qe.t() @ qx, g))
        y1 = rel(qxh @ qwh.t(), y)
        g1 = rel(rotate_cols(qe.t() @ qxh, kb), g)
        out[f"L1 {tag}"] = (y1, rel(rotate_cols(qe @ qwh, kb), ex), g1)
        qr = q_tensor(rotate_rows(eyp, tb), gp)
        ex2 = rotate_cols(rotate_rows(qr @ qwh, tb), kb)[:m]
        out[f"L2 {tag}"] = (y1, rel(ex2, ex), g1)
        # variant: randomized token rotation R = H_b·diag(d), d = ±1 per token (still orthogonal; a component of
        # E_Y that is coherent across tokens no longer concentrates in the first row of each block)
        d = signs[:mp, None]
        qrs = q_tensor(rotate_rows(eyp * d, tb), gp)
        ex2s = rotate_cols(rotate_rows(qrs @ qwh, tb) * d, kb)[:m]
        out[f"L2 signsT {tag}"] = (y1, rel(ex2s, ex), g1)
        # variant: randomized H_m (channel signs folded into both operands of every K-reduction)
        dk = signs[:k]
        xhs, whs = rotate_cols(x * dk, kb), rotate_cols(w * dk, kb)
        qxhs, qwhs = q_tensor(xhs, p), q_tensor(whs, p)
        out[f"L2 signsT+M {tag}"] = (rel(qxhs @ qwhs.t(), y),
                                     rel(rotate_cols(rotate_rows(qrs @ qwhs, tb) * d, kb)[:m] * dk, ex),
                                     rel(rotate_cols(qe.t() @ qxhs, kb) * dk, g))
        # variant: the weight gradient also rotated along tokens, G = (H_Tᵀ E_Y)ᵀ (H_Tᵀ X H_m), reusing
        # Q(H_Tᵀ E_Y)
        qxr = q_tensor(rotate_rows(rotate_cols(xp, kb), tb), p)
        out[f"L2+Gtok {tag}"] = (y1, rel(ex2, ex), rel(rotate_cols(qr.t() @ qxr, kb), g))
        # variant: per-row scales where the GEMM allows them (not along its reduction dim): Y: X per token,
        # W per output row; E_X: E_Y per token, (W H)ᵀ per in-feature; G: E_Yᵀ per out-feature, (X H)ᵀ per
        # in-feature
        yr = rel(q_rows(xh, p) @ q_rows(wh, p).t(), y)
        exr = rel(rotate_cols(q_rows(ey, gp) @ q_rows(wh.t(), p).t(), kb), ex)
        gr = rel(rotate_cols(q_rows(ey.t(), gp) @ q_rows(xh.t(), p).t(), kb), g)
        out[f"L1 rowwise {tag}"] = (yr, exr, gr)
        # single-operand changes: E_X with E_Y per token (W per tensor, no token rotation); G with E_Yᵀ per output
        # channel (X per tensor); G with E_Y rotated along its channels N (block-diagonal H_n, undone on G's rows)
        ex_tok = rel(rotate_cols(q_rows(ey, gp) @ qwh, kb), ex)
        g_ch = rel(rotate_cols(q_rows(ey.t(), gp) @ qxh, kb), g)
        nb = rotation_block_of(ey.shape[1])
        g_n = rel(rotate_rows(rotate_cols(q_tensor(rotate_cols(ey, nb), gp).t() @ qxh, kb), nb), g)
        out[f"EX tok / G ch {tag}"] = (y1, ex_tok, g_ch)
        out[f"L2 signsT / G Hn {tag}"] = (y1, rel(ex2s, ex), g_n)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="halo-finetune pre-training cache (.pt) or a state_dict")
    ap.add_argument("--preset", default="100m")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the probe batch (seq 512 windows)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--token-block", type=int, default=256)
    ap.add_argument("--domain", default="docs", help="docs|code (stdlib corpus)")
    ap.add_argument("--layers", default=None, help="comma list of block indices to probe (default: all)")
    ap.add_argument("--precisions", default="int8,e4m3,e4m3/e5m2", help="comma list of P or P/GRAD")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-layers", action="store_true", help="JSON: the per-type summary only")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from halo_ext.finetune import data as D
    from halo_ext.finetune import model as M
    from halo_ext.linear import rotation_block

    model = M.build_preset(args.preset, 0, "cpu", torch.float32)
    if args.checkpoint:
        blob = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(blob.get("model", blob))
    corp = D.stdlib_corpora(D.ByteTokenizer())[args.domain]
    nwin = max(1, args.tokens // args.seq)
    win = D.eval_windows(corp.eval, args.seq, nwin)
    keep = None if args.layers is None else {int(i) for i in args.layers.split(",")}
    cap = {}

    def fwd_hook(name):
        def h(mod, inp, out):
            cap[name] = {"x": inp[0].detach().reshape(-1, inp[0].shape[-1]).double(), "w": mod.weight.detach().double()}
        return h

    def bwd_hook(name):
        def h(mod, gin, gout):
            cap[name]["ey"] = gout[0].detach().reshape(-1, gout[0].shape[-1]).double()
        return h

    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not name.endswith("lm_head"):
            blk = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else -1
            if keep is not None and blk not in keep:
                continue
            hooks += [mod.register_forward_hook(fwd_hook(name)), mod.register_full_backward_hook(bwd_hook(name))]
    out = model(input_ids=win[:, :-1], use_cache=False)
    loss = nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), win[:, 1:].reshape(-1))
    loss.backward()
    for h in hooks:
        h.remove()

    per_type = defaultdict(lambda: defaultdict(list))
    stats = defaultdict(lambda: defaultdict(list))
    layers = {}
    for name, c in cap.items():
        kind = name.rsplit(".", 1)[-1]
        precs = [tuple(t.split("/")) if "/" in t else (t, t) for t in args.precisions.split(",")]
        res = schemes(c["x"], c["w"], c["ey"], rotation_block(c["x"].shape[1]), args.token_block, precs)
        sx, se, sw = ratio_stats(c["x"]), ratio_stats(c["ey"]), ratio_stats(c["w"])
        layers[name] = {"errors": res, "x": sx, "ey": se, "w": sw}
        for sch, e in res.items():
            per_type[kind][sch].append(e)
        for tag, s in (("x", sx), ("ey", se), ("w", sw)):
            for key, v in s.items():
                stats[kind][f"{tag}.{key}"].append(v)

    def med(v):
        v = sorted(v)
        return v[len(v) // 2]

    print(f"loss {float(loss.detach()):.4f}, {win.numel() - win.shape[0]} tokens, {len(cap)} linears")
    summary = {}
    for kind in per_type:
        print(f"\n== {kind}  (median over blocks)  " + "  ".join(
            f"{k}={med(v):.1f}" for k, v in sorted(stats[kind].items())))
        print(f"{'scheme':22s} {'Y':>9s} {'E_X':>9s} {'G':>9s}")
        summary[kind] = {"stats": {k: med(v) for k, v in stats[kind].items()}, "errors": {}}
        for sch, es in per_type[kind].items():
            vals = [med([e[i] for e in es]) for i in range(3)]
            summary[kind]["errors"][sch] = vals
            print(f"{sch:22s} " + " ".join(f"{v:9.4f}" for v in vals))
    if args.json:
        with open(args.json, "w") as f:
            doc = {"checkpoint": args.checkpoint and os.path.basename(args.checkpoint), "preset": args.preset,
                   "tokens": win.numel() - win.shape[0], "token_block": args.token_block, "loss": float(loss.detach()),
                   "summary": summary}
            if not args.no_layers:
                doc["layers"] = layers
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
