"""Small calls of every CUDA kernel, for compute-sanitizer (memcheck, racecheck): odd row counts, every size class,
strided rows, signs, blocks, per-tensor/row/block quantization, fused Hadamard+quantize (q and qt), the GEMMs."""
import torch

import halo_ext

torch.manual_seed(0)
dev = "cuda"
for n in [2, 16, 128, 256, 1024, 4096, 32768, 12 * 8, 28 * 512, 344 * 32, 28 * 64, 148 * 128, 12 * 1024, 12 * 2048]:
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(5, n, device=dev, dtype=dtype)
        halo_ext.hadamard(x)
        halo_ext.hadamard(x, signs=torch.ones(n, device=dev), transpose=True)
# the shuffle kernel (16-bit rows of 128 / 256) with strided rows and several groups a row
halo_ext.hadamard(torch.randn(9, 1024, device=dev, dtype=torch.float16)[:, :768], block=256)
halo_ext.hadamard(torch.randn(37, 384, device=dev, dtype=torch.bfloat16), block=128, signs=torch.ones(384, device=dev))
# dense tensor-core kernels with more tiles per CTA than staging buffers (the ring of buffers wraps)
halo_ext.hadamard(torch.randn(1100, 344 * 32, device=dev, dtype=torch.bfloat16), signs=torch.ones(344 * 32, device=dev))
halo_ext.hadamard(torch.randn(900, 148 * 128, device=dev, dtype=torch.float16))  # streaming, two buffers, no signs
halo_ext.hadamard(torch.randn(600, 28 * 1024, device=dev, dtype=torch.bfloat16))  # streaming, one CTA an SM (224 * 128)
base = torch.randn(7, 2 * 512, device=dev, dtype=torch.bfloat16)
halo_ext.hadamard(base[:, :512])
halo_ext.hadamard(base, block=64)
# the fused passes with one staging buffer and several tiles a CTA (the buffer is refilled): n = 16K (two CTAs an
# SM) and n = 32K (one CTA an SM, refilled right after pass A's reads)
for n, rows in ((1 << 14, 300), (1 << 15, 290)):
    halo_ext.hadamard_quantize(torch.randn(rows, n, device=dev, dtype=torch.bfloat16), torch.int8, want_qt=True)
for qd in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2):
    x = torch.randn(33, 384, device=dev, dtype=torch.bfloat16)
    for g, b in (("tensor", 0), ("row", 0), ("block", 128)):
        q, s = halo_ext.quantize(x, qd, g, b)
        halo_ext.dequantize(q, s, torch.bfloat16, g, b)
    for n in (256, 4096, 28 * 128):
        halo_ext.hadamard_quantize(torch.randn(37, n, device=dev, dtype=torch.bfloat16), qd, want_qt=True)
    for shape in ((130, 200), (64, 128), (37, 8), (5, 3)):  # block=1: q + qt tiles, edge tiles, scalar paths
        xi = torch.randn(shape, device=dev, dtype=torch.bfloat16)
        halo_ext.hadamard_quantize(xi, qd, block=1, want_qt=True)
        halo_ext.hadamard_quantize(xi, qd, block=1, want_q=False, want_qt=True, amax=torch.ones(1, device=dev))
    # ey_quantize: partial row tiles (96, 384, 1040, 192 rows of a 256-row CTA tile) and column tiles (48, 272, 80)
    for rows, cols, blk in ((512, 48, 256), (48, 16, 16), (96, 272, 32), (384, 80, 128), (1040, 64, 16), (192, 16, 64),
                           (1040, 272, 1), (96, 48, 8)):
        e = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
        sg = (torch.randint(0, 2, (blk,), device=dev) * 2 - 1).float()
        torch.ops.halo.ey_quantize(e, qd, blk, sg, True, True)
        torch.ops.halo.ey_quantize(e.float(), qd, blk, None, False, True)
if halo_ext.sm90_available():
    for qa, qb in ((torch.int8, torch.int8), (torch.float8_e4m3fn, torch.float8_e4m3fn),
                   (torch.float8_e5m2, torch.float8_e4m3fn)):
        a = torch.randn(200, 256, device=dev).to(qa) if qa != torch.int8 else torch.randint(-9, 9, (200, 256), dtype=qa, device=dev)
        b = torch.randn(136, 256, device=dev).to(qb) if qb != torch.int8 else torch.randint(-9, 9, (136, 256), dtype=qb, device=dev)
        halo_ext.qgemm(a, b, torch.rand(200, device=dev), torch.rand(1, device=dev), torch.bfloat16,
                       torch.randn(136, device=dev, dtype=torch.bfloat16))
        if qa == qb:  # row_hadamard 256 (transposed problem, column-major D): 512 rows, a partial tile of 136
            halo_ext.qgemm(torch.cat([a, a, a[:112]]), b, torch.rand(512, device=dev), torch.rand(1, device=dev),
                           torch.bfloat16, None, 256)
# block-quantized collectives (pack / reduce / reduce_broadcast with own + deq / unpack), both lane traits, every
# block size, ragged sizes: partial lane groups in the last warp, tails inside a lane, empty own parts
import os  # noqa: E402

from halo_ext.distributed import chunk_elems, pack, reduce_chunks, unpack  # noqa: E402

for le in ("8", "16"):
    os.environ["HALO_QCOMM_LANE_ELEMS"] = le
    for block in (32, 64, 128, 256, 512, 1024):
        for n, world, xdt in ((1, 2, torch.bfloat16), (block * 5 + 3, 3, torch.float32), (4099, 2, torch.float16)):
            chunk = chunk_elems(n, world, block)
            xs = [torch.randn(n, device=dev, dtype=xdt) for _ in range(world)]
            ps = [pack(x, world, chunk, block) for x in xs]
            for r in range(world):
                lo, hi = min(r * chunk, n), min((r + 1) * chunk, n)
                red = torch.empty(ps[0].shape[1], dtype=torch.uint8, device=dev)
                reduce_chunks([p[r] for p in ps], red, block, "int8", 0.5, own=xs[r][lo:hi], own_index=r)
                reduce_chunks([p[r] for p in ps], torch.empty(hi - lo, device=dev), block, "int8")
                outs = [torch.empty_like(red) for _ in range(2)]
                torch.ops.halo.qcomm_reduce_broadcast([p[r] for p in ps], outs, block, torch.int8, 1.0, xs[r][lo:hi],
                                                      r, torch.empty(hi - lo, device=dev, dtype=xdt))
            unpack(list(ps[0].unbind(0)), torch.empty(n, device=dev, dtype=xdt), chunk, block, "int8")
    # the fused reduce + broadcast + unpack as rank 0 of 2, the peer's chunk and flags already in place (one GPU)
    for block, n in ((64, 40000), (1024, 3 * 8192 + 5)):
        chunk = chunk_elems(n, 2, block)
        xs = [torch.randn(n, device=dev, dtype=torch.bfloat16) for _ in range(2)]
        ps = [pack(x, 2, chunk, block) for x in xs]
        cb = ps[0].shape[1]
        tiles = -(-(cb // (block + 4)) * block // 8192)
        flags = torch.zeros(2, tiles, dtype=torch.int32, device=dev)
        flags[1] = 3
        torch.ops.halo.qcomm_reduce_broadcast_unpack(
            [ps[0][0], ps[1][0]], [torch.empty(cb, dtype=torch.uint8, device=dev)], [ps[0][0], ps[1][1]], flags,
            [torch.zeros(tiles, dtype=torch.int32, device=dev)], 3, torch.empty(n, device=dev, dtype=torch.bfloat16),
            chunk, block, torch.int8, 1.0, xs[0][:chunk], 0)
os.environ.pop("HALO_QCOMM_LANE_ELEMS")
torch.cuda.synchronize()
print("sanitize smoke: all kernels ran")
