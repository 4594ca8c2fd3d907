"""One-GPU timing of the peer all-reduce's second half (diagnostic): the fused reduce + broadcast + unpack kernel
(qcomm_reduce_broadcast_unpack) against qcomm_reduce_broadcast followed by qcomm_unpack_into, as rank 0 of 2 with
the peer's reduced chunk and flags already in place. The "peer" buffers are local here, so this measures the
kernels' own cost (HBM traffic, fences, flag stores), not NVLink or waiting.

    python tools/qcomm_fused_probe.py [--mb 64 256 1024]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from _common import time_ms  # noqa: E402

import halo_ext  # noqa: E402,F401
from halo_ext.distributed import chunk_elems, pack, packed_chunk_bytes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, nargs="*", default=[64, 256, 1024])
    ap.add_argument("--block", type=int, default=64)
    args = ap.parse_args()
    dev = torch.device("cuda")
    block = args.block
    for mb in args.mb:
        n = int(mb * (1 << 20)) // 2
        chunk = chunk_elems(n, 2, block)
        cb = packed_chunk_bytes(chunk, block)
        tiles = -(-(cb // (block + 4)) * block // 8192)
        x = torch.randn(n, device=dev).to(torch.bfloat16)
        packed = pack(x, 2, chunk, block)
        a_slots = [packed[0], packed[1]]
        g_slots = [packed[0].clone(), packed[1].clone()]
        peer_g = torch.empty(cb, dtype=torch.uint8, device=dev)
        flags = torch.zeros(2, tiles, dtype=torch.int32, device=dev)
        peer_flags = [torch.zeros(tiles, dtype=torch.int32, device=dev)]
        out = torch.empty_like(x)
        own = x[:chunk]
        epoch = [0]

        def fused():
            epoch[0] += 1
            flags[1].fill_(epoch[0])  # the peer's tiles "arrived" (a small fill kernel, timed with it)
            torch.ops.halo.qcomm_reduce_broadcast_unpack(a_slots, [peer_g], g_slots, flags, peer_flags, epoch[0], out,
                                                         chunk, block, torch.int8, 1.0, own, 0)

        def separate():
            flags[1].fill_(0)  # the same small fill, for a like-for-like comparison
            torch.ops.halo.qcomm_reduce_broadcast(a_slots, [peer_g], block, torch.int8, 1.0, own, 0, out[:chunk])
            torch.ops.halo.qcomm_unpack_into([g_slots[1]], out[chunk:], chunk, block, torch.int8)

        tf, ts = [], []
        for _ in range(3):
            tf.append(time_ms(fused, warmup=5, iters=20))
            ts.append(time_ms(separate, warmup=5, iters=20))
        f, s_ = statistics.median(tf), statistics.median(ts)
        moved = (cb + chunk * 2) + (cb + chunk * 2) + (cb + 2 * (n - chunk))  # reduce in/out, unpack in/out
        print(f"{mb:g} MB block {block}: fused {f * 1e3:.1f} us, reduce_broadcast + unpack {s_ * 1e3:.1f} us "
              f"(fused / separate {f / s_:.3f}); {moved / f / 1e9:.2f} vs {moved / s_ / 1e9:.2f} TB/s", flush=True)


if __name__ == "__main__":
    main()
