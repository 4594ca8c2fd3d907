"""Checks of halo_ext.distributed run inside every rank of an initialized process group (Gloo on CPU from
tests/test_allreduce.py, NCCL on GPUs from tests/dist/allreduce_gpu_check.py). Every rank regenerates all ranks'
inputs from fixed seeds, so it computes the float64 reference locally; bitwise identity across ranks is checked by
all-gathering the results' bytes. Returns a list of failure messages (empty: all passed)."""
from __future__ import annotations

import os
from typing import List

import torch
import torch.distributed as dist

from halo_ext.distributed import (DEFAULT_BLOCK, DEFAULT_RS_BLOCK, all_reduce, chunk_elems, ddp_quantized_hook, error_bound, last_path, pack,
                                  reduce_scatter, reload_settings, unpack, QuantizedHookState)

EPS = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def _inputs(case: int, world: int, n: int, dtype, device, scale: float = 1.0):
    xs = []
    for r in range(world):
        g = torch.Generator().manual_seed(7919 * case + r)
        x = torch.randn(n, generator=g, dtype=torch.float64) * scale
        if n > 3:  # an outlier per rank, different blocks: the block-wise scales must localize it
            x[(r * 37) % n] *= 40
        xs.append(x.to(dtype).to(device))
    return xs


def _same_on_all_ranks(t: torch.Tensor, group=None) -> bool:
    b = t.detach().reshape(-1).contiguous().view(torch.uint8) if t.numel() else torch.zeros(1, dtype=torch.uint8,
                                                                                          device=t.device)
    bs = [torch.empty_like(b) for _ in range(dist.get_world_size(group))]
    dist.all_gather(bs, b, group=group)
    return all(torch.equal(bs[0], x) for x in bs)


def _fp8_bound(xs, y, world, block, avg):
    """e4m3: per quantization |err| <= |v|/16 + scale * 2^-10 (normal: half spacing 2^-4 |v|; subnormal step
    2^-9 in code units) with scale = absmax/448 per block; the first quantization of every rank but the chunk's
    owner (its own contribution is exact), then the requantization."""
    n = y.numel()
    chunk = chunk_elems(n, world, block)

    def bmax(t):
        p = torch.zeros(world * chunk, dtype=torch.float64)
        p[:n] = t.reshape(-1).double().abs().cpu()
        return p.view(-1, block).amax(1, keepdim=True).expand(-1, block).reshape(-1)[:n]

    f = 1.0 / world if avg else 1.0
    owner = torch.arange(n) // max(chunk, 1)
    terms = torch.stack([x.double().abs().cpu() / 16 + bmax(x) / 448 * 2 ** -10 for x in xs])
    e1 = (terms.sum(0) - terms.gather(0, owner.view(1, -1)).view(-1)) * f
    yy = y.double().abs().cpu()
    return e1 + (yy + e1) / 16 + (bmax(y) + bmax(e1)) / 448 * 2 ** -10 + 1e-30


def check_all_reduce(device, group=None, paths=("nccl",), quick=False) -> List[str]:
    fails: List[str] = []
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = [0, 1, 7, 1000, 5003] if quick else [0, 1, 7, 255, 1000, 5003, 70001]
    case = 0
    for path in paths:
        for n in sizes:
            for dtype, op, qd, block, oop in [
                (torch.float32, "sum", "int8", 256, False),
                (torch.bfloat16, "avg", "int8", 256, True),
                (torch.float16, "sum", "int8", 64, False),
                (torch.float32, "avg", "fp8", 128, True),
            ]:
                case += 1
                xs = _inputs(case, world, n, dtype, device)
                x = xs[rank].clone()
                out = torch.empty_like(x) if oop else None
                res = all_reduce(x, op=op, group=group, dtype=qd, block=block, out=out, path=path)
                tag = f"[{path} n={n} {dtype} {op} {qd} B={block} oop={oop}]"
                if oop and not torch.equal(x, xs[rank]):
                    fails.append(f"{tag} out-of-place modified the input")
                if (res is not out) if oop else (res is not x):
                    fails.append(f"{tag} returned the wrong tensor")
                if not _same_on_all_ranks(res, group):
                    fails.append(f"{tag} results differ across ranks")
                y = sum(v.double().cpu() for v in xs) if n else torch.zeros(0, dtype=torch.float64)
                if op == "avg":
                    y = y / world
                err = (res.double().cpu() - y).abs()
                if qd == "int8":
                    bound = error_bound([v.cpu() for v in xs], y, world, block, avg=op == "avg")
                else:
                    bound = _fp8_bound(xs, y, world, block, op == "avg")
                bound = bound + y.abs() * EPS[dtype] * 1.01  # rounding of the result to the output dtype
                if n and not bool((err <= bound).all()):
                    i = int((err - bound).argmax())
                    fails.append(f"{tag} error {float(err[i]):.3e} > bound {float(bound[i]):.3e} at {i}")
                if n >= 1000 and qd == "int8" and float(err.max()) == 0.0:
                    fails.append(f"{tag} exact result: the quantized path did not run")
        # the owner's chunk is not quantized: inputs nonzero only in each rank's own chunk -> the result is ONE
        # quantization (the requantization) of the exact sum, bit for bit, on every rank (ragged last chunk)
        for n, block in [(5003, 256), (1000, 64)]:
            chunk = chunk_elems(n, world, block)
            xs = _inputs(4000 + n, world, n, torch.float32, device)
            for r in range(world):
                xs[r][:min(r * chunk, n)] = 0
                xs[r][min((r + 1) * chunk, n):] = 0
            res = all_reduce(xs[rank].clone(), group=group, block=block, path=path)
            y = sum(xs)  # disjoint supports: exact in float32
            expect = unpack(list(pack(y, world, chunk, block).unbind(0)), torch.empty_like(y), chunk, block)
            if not torch.equal(res, expect):
                fails.append(f"[{path} n={n} B={block}] own-chunk-only inputs: not a single quantization of the sum")
        # determinism: the same call twice gives the same bits
        xs = _inputs(999, world, 4099, torch.bfloat16, device)
        a = all_reduce(xs[rank].clone(), group=group, path=path)
        b = all_reduce(xs[rank].clone(), group=group, path=path)
        if not torch.equal(a, b):
            fails.append(f"[{path}] repeated runs differ")
        # pipelined pieces (tiny piece size): each piece is chunked on its own (its own owners), so the bound is
        # evaluated per piece; piece = HALO_AR_PIECE_BYTES / 4 float32 elements = 2 units of world * 4 blocks
        piece = world * DEFAULT_BLOCK * 4 * 2
        os.environ["HALO_AR_PIECE_BYTES"] = str(piece * 4)
        reload_settings()
        try:
            xs = _inputs(1001, world, 20000, torch.float32, device)
            r1 = all_reduce(xs[rank].clone(), group=group, path=path)
        finally:
            del os.environ["HALO_AR_PIECE_BYTES"]
            reload_settings()
        y = sum(v.double().cpu() for v in xs)
        bound = torch.cat([error_bound([v.cpu()[s:s + piece] for v in xs], y[s:s + piece], world, DEFAULT_BLOCK)
                           for s in range(0, y.numel(), piece)])
        if not bool(((r1.double().cpu() - y).abs() <= bound).all()) and path == "nccl":
            fails.append(f"[{path}] pipelined pieces exceed the bound")
        if not _same_on_all_ranks(r1, group):
            fails.append(f"[{path}] pipelined results differ across ranks")
    # the peer path runs the same arithmetic as the NCCL path: identical bits
    if "peer" in paths and "nccl" in paths:
        for n, dtype, op in [(1000, torch.bfloat16, "sum"), (70001, torch.float32, "avg"), (1 << 20, torch.bfloat16,
                                                                                           "sum")]:
            xs = _inputs(3000 + n, world, n, dtype, device)
            a = all_reduce(xs[rank].clone(), op=op, group=group, path="nccl")
            b = all_reduce(xs[rank].clone(), op=op, group=group, path="peer")
            if not torch.equal(a, b):
                fails.append(f"[n={n} {dtype} {op}] peer and NCCL paths differ")
            sa, sb = torch.empty(n // world, device=device), torch.empty(n // world, device=device)
            reduce_scatter(sa, xs[rank][:world * (n // world)].float(), op=op, group=group, path="nccl")
            reduce_scatter(sb, xs[rank][:world * (n // world)].float(), op=op, group=group, path="peer")
            if not torch.equal(sa, sb):
                fails.append(f"[n={n} {dtype} {op}] peer and NCCL reduce_scatter differ")
    # fallback: a small tensor under auto takes dist.all_reduce (exact up to float32 summation order)
    xs = _inputs(2000, world, 100, torch.float32, device)
    if last_path(xs[rank], group) != "fallback":
        fails.append(f"auto did not choose the fallback for 400 bytes: {last_path(xs[rank], group)}")
    r = all_reduce(xs[rank].clone(), op="avg", group=group)
    y = sum(v.double().cpu() for v in xs) / world
    if not torch.allclose(r.double().cpu(), y, rtol=1e-5, atol=1e-6):
        fails.append("fallback result wrong")
    # non-contiguous input, in place
    xs = _inputs(2001, world, 2 * 640, torch.float32, device)
    t = xs[rank].clone().view(2, 640).t()
    all_reduce(t, group=group, path=paths[0])
    perm = [v.cpu().view(2, 640).t().contiguous().view(-1) for v in xs]  # the order the flat chunks see
    y = sum(v.double() for v in perm)
    got = t.cpu().contiguous().view(-1).double()
    if not bool(((got - y).abs() <= error_bound(perm, y, world, DEFAULT_BLOCK)).all()):
        fails.append("non-contiguous in-place result wrong")
    # async_op: a handle whose future holds the result
    xs = _inputs(2002, world, 3000, torch.float32, device)
    h = all_reduce(xs[rank].clone(), group=group, path=paths[0], async_op=True)
    h.wait()
    fv = h.get_future().wait()
    if not _same_on_all_ranks(fv, group) or fv.shape != (3000,):
        fails.append("async_op handle/future wrong")
    # bad arguments raise clear errors
    for kw, exc in [(dict(op="max"), ValueError), (dict(dtype="int4"), ValueError), (dict(block=100), ValueError)]:
        try:
            all_reduce(torch.ones(10, device=device), group=group, **kw)
            fails.append(f"{kw} did not raise")
        except exc:
            pass
    return fails


def check_auto_fast_path(device) -> List[str]:
    """all_reduce with no path / out / async below the fallback threshold (the host-lean fast path): the same bits as
    dist.all_reduce, in place, AVG, the same argument errors as the general code; above the threshold (after
    reload_settings) the quantized path runs. Restores the environment."""
    fails: List[str] = []
    world, rank = dist.get_world_size(), dist.get_rank()
    saved = {k: os.environ.get(k) for k in ("HALO_AR_PATH", "HALO_AR_FALLBACK_BYTES")}
    try:
        os.environ["HALO_AR_PATH"] = "auto"
        os.environ["HALO_AR_FALLBACK_BYTES"] = str(1 << 40)
        reload_settings()
        for n, dt in ((1, torch.float32), (1000, torch.bfloat16), (4097, torch.float16)):
            xs = _inputs(500 + n, world, n, dt, device)
            ref = xs[rank].clone()
            dist.all_reduce(ref)
            y = xs[rank].clone()
            r = all_reduce(y)
            if r is not y or not torch.equal(y, ref):
                fails.append(f"[fast n={n} {dt}] differs from dist.all_reduce or not in place")
            ya = xs[rank].clone()
            all_reduce(ya, op="avg")
            if not torch.equal(ya, ref / world):
                fails.append(f"[fast n={n} {dt}] avg differs from dist.all_reduce / world")
        nc = _inputs(600, world, 64, torch.float32, device)[rank].view(8, 8).t()  # non-contiguous: general path
        ref = nc.contiguous()
        dist.all_reduce(ref)
        all_reduce(nc)
        if not torch.equal(nc, ref):
            fails.append("[fast] non-contiguous tensor: wrong result")
        if all_reduce(torch.empty(0, device=device)).numel() != 0:
            fails.append("[fast] empty tensor")
        for kw, exc in ((dict(op="max"), ValueError), (dict(dtype="int4"), ValueError), (dict(block=48), ValueError)):
            try:
                all_reduce(torch.ones(4, device=device), **kw)
                fails.append(f"[fast] {kw} did not raise")
            except exc:
                pass
        try:
            all_reduce(torch.ones(4, dtype=torch.int32, device=device))
            fails.append("[fast] int32 did not raise")
        except TypeError:
            pass
        os.environ["HALO_AR_FALLBACK_BYTES"] = "0"
        reload_settings()
        xs = _inputs(700, world, 5000, torch.float32, device)
        ref = sum(v.double() for v in xs)
        y = xs[rank].clone()
        all_reduce(y)
        if last_path(y) == "fallback" or torch.equal(y.double(), ref):
            fails.append("[fast] threshold 0 after reload_settings: the quantized path did not run")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reload_settings()
    return fails


def check_reduce_scatter(device, group=None, paths=("nccl",)) -> List[str]:
    fails: List[str] = []
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    case = 5000
    for path in paths:
        for S, dtype, out_dtype, op in [(1, torch.float32, torch.float32, "sum"), (300, torch.bfloat16, torch.float32,
                                        "sum"), (1029, torch.float32, torch.bfloat16, "avg")]:
            case += 1
            xs = _inputs(case, world, world * S, dtype, device)
            out = torch.empty(S, dtype=out_dtype, device=device)
            reduce_scatter(out, xs[rank].clone(), op=op, group=group, path=path)
            y = sum(v.double().cpu() for v in xs)[rank * S:(rank + 1) * S]
            if op == "avg":
                y = y / world
            # one quantization per element of the other ranks' slices: sum_{r != rank} absmax_r / 254 per block of
            # the rank's slice (the own slice is added unquantized), written out here and via error_bound
            B = DEFAULT_RS_BLOCK
            nb = -(-S // B)
            bound = torch.zeros(S, dtype=torch.float64)
            for r, v in enumerate(xs):
                if r == rank:
                    continue
                sl = torch.zeros(nb * B, dtype=torch.float64)
                sl[:S] = v.double().cpu()[rank * S:(rank + 1) * S].abs()
                bound += sl.view(nb, B).amax(1, keepdim=True).expand(nb, B).reshape(-1)[:S]
            s_all = sum(v.double().cpu()[rank * S:(rank + 1) * S].abs().max() for v in xs)
            f = 1 / world if op == "avg" else 1
            bound = bound / 254 * f * (1 + 1e-5) + world * 2.0 ** -23 * s_all * f + 1e-30
            yfull = sum(v.double().cpu() for v in xs) * f
            eb = error_bound([v.cpu() for v in xs], yfull, world, B, avg=op == "avg", chunk=S, requantized=False)
            eb = eb[rank * S:(rank + 1) * S]
            if not bool((eb <= bound * (1 + 1e-9)).all()):
                fails.append(f"[rs {path} S={S}] error_bound(requantized=False) is looser than the direct bound")
            bound = eb + y.abs() * EPS[out_dtype] * 1.01
            err = (out.double().cpu() - y).abs()
            if not bool((err <= bound).all()):
                fails.append(f"[rs {path} S={S} {dtype}->{out_dtype} {op}] error {float(err.max()):.3e} > bound")
        # the own slice is added unquantized: inputs nonzero only in each rank's own slice -> exact float32 output
        S = 1029
        xs = _inputs(5100, world, world * S, torch.bfloat16, device)
        for r in range(world):
            xs[r][:r * S] = 0
            xs[r][(r + 1) * S:] = 0
        out = torch.empty(S, dtype=torch.float32, device=device)
        reduce_scatter(out, xs[rank].clone(), group=group, path=path)
        if not torch.equal(out, xs[rank][rank * S:(rank + 1) * S].float()):
            fails.append(f"[rs {path}] own-slice-only inputs: output is not the owner's slice exactly")
    try:
        reduce_scatter(torch.empty(3, device=device), torch.empty(world * 3 + 1, device=device), group=group)
        fails.append("reduce_scatter with a wrong input size did not raise")
    except ValueError:
        pass
    return fails


def check_hierarchical(device, k: int) -> List[str]:
    fails: List[str] = []
    world, rank = dist.get_world_size(), dist.get_rank()
    for n, op in [(1, "sum"), (3001, "sum"), (20000, "avg")]:
        xs = _inputs(8000 + n, world, n, torch.float32, device)
        res = all_reduce(xs[rank].clone(), op=op, hierarchical=k, path="nccl")
        if not _same_on_all_ranks(res):
            fails.append(f"[hier k={k} n={n}] results differ across ranks")
        y = sum(v.double().cpu() for v in xs)
        if op == "avg":
            y = y / world
        # node partial sums are quantized: bound with absmax of the node sums (x_r -> node sums, world -> nodes)
        nodes = [sum(xs[i].double().cpu() for i in range(j * k, (j + 1) * k)) for j in range(world // k)]
        s = -(-n // k)
        # the inter-node all-reduce runs on the padded slice of length s with nodes ranks
        bound = torch.zeros(n, dtype=torch.float64)
        for j in range(k):
            lo, hi = j * s, min((j + 1) * s, n)
            if lo >= hi:
                continue
            part = [v[lo:hi] for v in nodes]
            yy = y[lo:hi]
            # chunked as the padded s-element slice is (owners: chunk_elems(s, nodes) elements each)
            bound[lo:hi] = error_bound([p / (world if op == "avg" else 1) for p in part], yy, len(nodes), DEFAULT_BLOCK,
                                       chunk=chunk_elems(s, len(nodes), DEFAULT_BLOCK))
        err = (res.double().cpu() - y).abs()
        if not bool((err <= bound + y.abs() * 1e-6 + 1e-6).all()):
            fails.append(f"[hier k={k} n={n}] error {float(err.max()):.3e} > bound")
    return fails


def check_ddp(device, steps: int = 30) -> List[str]:
    """Trains the same small MLP with plain DDP and with the quantized hook; final losses within 5% (relative)."""
    fails: List[str] = []
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.nn.parallel import DistributedDataParallel as DDP

    def run(hook: bool) -> float:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 1)).to(device)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=1)
        if hook:
            ddp.register_comm_hook(QuantizedHookState(path="nccl"), ddp_quantized_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(100 + rank)
        w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(5))
        loss_v = 0.0
        for _ in range(steps):
            xb = torch.randn(64, 32, generator=g)
            yb = torch.sin(xb @ w_true)
            xb, yb = xb.to(device), yb.to(device)
            loss = torch.nn.functional.mse_loss(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = float(loss.detach())
        # replicas stay identical (DDP invariant) under the hook: bitwise-identical reduced gradients
        for p in model.parameters():
            if not _same_on_all_ranks(p.data):
                fails.append(f"DDP (hook={hook}) replicas diverged")
                break
        return loss_v

    base, quant = run(False), run(True)
    if abs(quant - base) > 0.05 * abs(base) + 1e-4:
        fails.append(f"DDP hook final loss {quant:.5f} vs plain DDP {base:.5f} (> 5%)")
    return fails
