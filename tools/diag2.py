import faulthandler; faulthandler.enable()
import torch, halo_ext, sys
x = torch.randn(64, int(sys.argv[1]), device="cuda", dtype=torch.bfloat16)
try:
    y = halo_ext.hadamard(x); torch.cuda.synchronize(); print("ok", (y.float().cpu() - halo_ext.hadamard(x.cpu()).float()).abs().max())
except Exception as e:
    print("EXC", type(e).__name__, e)
