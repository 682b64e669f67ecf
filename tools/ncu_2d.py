"""2D layer launches for Nsight Compute: one forward or one backward per tile size, nothing else.

    ncu --clock-control none -k regex:forward_kernel --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        python tools/ncu_2d.py [--grids 16] [--batch 262144] [--block 1024] [--table bfloat16]
    ncu --clock-control none -k regex:runs_kernel -s 2 -c 1 --set full --import-source yes \
        -o runs python tools/ncu_2d.py --op backward --grids 8 --tiles 16 --block 512
    ncu -i runs.ncu-rep --page source --csv --print-source sass > runs_sass.csv

--op forward runs lmkan2d_forward (batch-last, table dtype --table); --op backward runs
lmkan2d_backward (the fast non-deterministic mode unless --normal, grad_params too, grad_y of
dtype --grad-y, table dtype --table): its
bucket_kernel and runs_kernel launch once per chunk of the batch, so -s/-c pick one launch.
"""
import argparse

import torch

import lmKAN  # noqa: F401  (registers the ops)
from lmKAN.grids import cdf_borders

ap = argparse.ArgumentParser()
ap.add_argument("--op", choices=("forward", "backward"), default="forward")
ap.add_argument("--grids", type=int, default=16)
ap.add_argument("--dim", type=int, default=512)
ap.add_argument("--batch", type=int, default=1 << 18)
ap.add_argument("--block", type=int, default=1024)
ap.add_argument("--tiles", default="4,8,16")
ap.add_argument("--table", choices=("float32", "bfloat16", "float16"), default="float32",
                help="the table dtype of either op (under autocast the backward takes a 16-bit "
                     "grad_y with a table of the same dtype)")
ap.add_argument("--normal", action="store_true", help="the backward's normal mode (default fast)")
ap.add_argument("--grad-y", choices=("float32", "bfloat16", "float16"), default="float32",
                help="the backward's grad_y dtype (16-bit: as under autocast, read as 16-bit rows "
                     "by the sorted backward)")
args = ap.parse_args()
G = args.grids
params = torch.randn(G + 1, G + 1, args.dim, args.dim // 2, device="cuda")
borders = cdf_borders(G, device="cuda")
x = torch.randn(args.dim, args.batch, device="cuda")
table = getattr(torch, args.table)
for tile in map(int, args.tiles.split(",")):
    if args.op == "forward":
        torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, args.block, table)
    else:
        grad_y = torch.randn(args.dim, args.batch, device="cuda").to(getattr(torch, args.grad_y))
        torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, True, tile, args.block,
                                         not args.normal, False, table, True)
torch.cuda.synchronize()
