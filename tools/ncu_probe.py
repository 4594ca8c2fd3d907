"""The memory-bound kernels of one HALO-2 int8 layer call at a LLaMA shape, for Nsight Compute (device only).

Runs each op once after a warm-up, between NVTX-free markers, so ncu can be pointed at them:
    ncu --clock-control none --launch-skip-before-match 0 -k regex:'ey_|pow2|transpose|dense' \
        --section SpeedOfLight --section MemoryWorkloadAnalysis python3 tools/ncu_probe.py [M K N]
Ops (bf16 in, int8 out, what halo.linear_forward/backward run): hadamard_quantize q+qt of W [N,K] and X [M,K]
(H_m block = halo_ext.rotation_block(K)), ey_quantize(E_Y [M,N], block 256, q_rot + per-channel qt).
"""
import sys

import torch

import halo_ext
from halo_ext.linear import _token_signs

M, K, N = (int(v) for v in sys.argv[1:4]) if len(sys.argv) >= 4 else (8192, 4096, 14336)
kb = halo_ext.rotation_block(K)
w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
ey = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
signs = _token_signs(256).cuda()
hq, eyq = torch.ops.halo.hadamard_quantize, torch.ops.halo.ey_quantize
ops = [("hq W", lambda: hq(w, torch.int8, None, kb, None, False, True, True, None)),
       ("hq X", lambda: hq(x, torch.int8, None, kb, None, False, True, True, None)),
       ("ey_quantize", lambda: eyq(ey, torch.int8, 256, signs, True, True))]
for _, f in ops:  # warm-up (outside the profiled range: ncu counts launches, the first ones are these)
    f()
torch.cuda.synchronize()
for name, f in ops:
    f()
    torch.cuda.synchronize()
    print("ran", name, flush=True)
