#!/usr/bin/env python3
"""Shared-memory bank simulation of the dense Hadamard kernel's float32 buffer (csrc/kernels/hadamard_impl.cuh).

For each row length 2^P of the dense kernel (Pow2Plan<P, 5, 3, 13>: 256 threads, 32 values a thread, 8K-element
sub-tiles) it replays, warp by warp, the addresses of
  - the pass loads/stores (A, M, F): 16-byte accesses, served in quarter-warp phases of 8 lanes (4-byte accesses
    where a pass does not own element bits 0 and 1: one phase per warp),
  - the tensor-core result stores: 8-byte accesses in half-warp phases, lane = (row g = lane / 4, column pair
    2 (lane % 4)) of an m16n8 accumulator, 8 rows x 8 floats a warp,
and prints wavefronts over the conflict-free minimum (1.0 = conflict-free), for the power-of-two kernel's fpad
layout and for DenseFLayout<P>. Run: python3 tools/bank_sim_dense.py
"""


def bits(lo, hi):
    return 0 if hi <= lo else ((1 << (hi - lo)) - 1) << max(lo, 0)


def deposit(x, m):
    r, j = 0, 0
    for b in range(32):
        if (m >> b) & 1:
            if (x >> j) & 1:
                r |= 1 << b
            j += 1
    return r


def fpad(i):
    return i + ((i >> 5) << 2) + ((i >> 6) << 2)


def dense_layout(p):  # DenseFLayout<P>
    pad64 = not (p == 6 or p >= 8)
    row = 8 if p >= 8 else 0
    return lambda i: i + ((i >> 5) << 2) + (((i >> 6) << 2) if pad64 else 0) + row * (i >> p)


def passes(p, elog=5, vbits=3, tb=13):
    k = elog - vbits
    own = {"A": bits(0, elog), "F": bits(0, vbits) | bits(p - k, p)}
    if bits(elog, p - k):  # kHasM
        own["M"] = bits(p - k - elog, p - k) if p - k - elog >= 5 else bits(0, 2) | bits(p - k - (elog - 2), p - k)
    return own, bits(0, tb)


def conflicts(p, at):
    own, tile = passes(p)
    res = {}
    for name, o in own.items():
        thr, vec, tot, n = tile & ~o, (o & 3) == 3, 0.0, 0
        for w in range(8):
            for r in range(0, 32, 4 if vec else 1):
                addrs = [at(deposit(w * 32 + l, thr) | deposit(r, o)) for l in range(32)]
                phases = [addrs[8 * q:8 * q + 8] for q in range(4)] if vec else [addrs]
                wf = 0
                for ph in phases:
                    cnt = {}
                    for a in set(ph):
                        key = (a // 4) % 8 if vec else a % 32
                        cnt[key] = cnt.get(key, 0) + 1
                    wf += max(cnt.values())
                tot += wf / len(phases)
                n += 1
        res[name] = round(tot / n, 2)
    tot, n = 0.0, 0
    for mt in range(2):
        for nb in range(1 << (p - 5)):
            for j in range(4):
                for half in (0, 8):
                    wf = 0
                    for h in range(2):
                        cnt = {}
                        for lane in range(16 * h, 16 * h + 16):
                            a = at(((16 * mt + (lane >> 2) + half) << p) + nb * 32 + j * 8 + (lane & 3) * 2)
                            cnt[(a // 2) % 16] = cnt.get((a // 2) % 16, 0) + 1
                        wf += max(cnt.values())
                    tot += wf / 2
                    n += 1
    res["mma_store"] = round(tot / n, 2)
    return res


if __name__ == "__main__":
    for p in range(6, 11):  # 2^5 = 32 is a single-pass plan (no float32 round trip through this layout's passes)
        print(f"2^P = {1 << p:5d}  fpad: {conflicts(p, fpad)}  DenseFLayout: {conflicts(p, dense_layout(p))}")
