"""1D layer training calls for Nsight Compute: bench_1d.py's layer and input, two forward +
backward calls (the first warms up: pass -s to skip its launches), nothing else.

    ncu --clock-control none -k regex:dc_grouped -s 1 -c 1 --set full --import-source yes \
        -o dc python tools/ncu_1d.py
    ncu -i dc.ncu-rep --page source --csv --print-source sass > dc_sass.csv

Defaults: bench_1d.py's KANLayer(256, 256, "random_normal", 32), batch-first x of 65536 samples (1.5 N(0,1)),
float32 tables; --table bfloat16 rounds the forward's table, --batch-last transposes x.
Kernels per call: the pack kernels, the forward, dx and the parameter gradient's kernel
(`lmkan1d_backward_dc_grouped_kernel` for num_grids <= 31).
"""
import argparse

import torch

from lmKAN import LMKAN1DLayer

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=65536)
ap.add_argument("--features", type=int, default=256)
ap.add_argument("--control-points", type=int, default=32)
ap.add_argument("--table", choices=("float32", "bfloat16", "float16"), default="float32")
ap.add_argument("--batch-last", action="store_true")
args = ap.parse_args()

torch.manual_seed(0)
n = args.features
table = None if args.table == "float32" else getattr(torch, args.table)
# KANLayer(n, n, "random_normal", cp) is this layer with batch_last=False
layer = LMKAN1DLayer(args.control_points - 1, n, n, grid="uniform", table_dtype=table,
                     batch_last=args.batch_last).cuda()
x = 1.5 * torch.randn(args.batch, n, device="cuda")
if args.batch_last:
    x = x.t().contiguous()
x.requires_grad_(True)
grad_y = torch.randn_like(layer(x))
for _ in range(2):
    layer(x).backward(grad_y)
torch.cuda.synchronize()
