"""One call of the dense-factor Hadamard kernels per size, for Nsight Compute:
ncu --clock-control none -k regex:dense --section ... python3 tools/prof_dense.py [dims...]
HALO_DENSE_REG=0 for the last call (the older dense_kernel at 11008) gives an A/B pair."""
import os
import sys

import torch

import halo_ext

dims = [int(a) for a in sys.argv[1:]] or [11008, 8960, 13824, 18944, 3584]
print("dims", dims, "factors", [halo_ext.hadamard_factor(d) for d in dims], flush=True)
for d in dims:
    x = torch.randn(max(1, (32 << 20) // d), d, device="cuda", dtype=torch.bfloat16)
    halo_ext.hadamard(x)
    torch.cuda.synchronize()
os.environ["HALO_DENSE_REG"] = "0"
x = torch.randn((32 << 20) // 11008, 11008, device="cuda", dtype=torch.bfloat16)
halo_ext.hadamard(x)
torch.cuda.synchronize()
