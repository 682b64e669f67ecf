"""One forward launch per tile size, for Nsight Compute (the kernels to profile, nothing else).

    ncu --clock-control none -k regex:forward_kernel --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        python tools/ncu_2d_forward.py [--grids 16] [--batch 262144] [--block 1024]
"""
import argparse

import torch

import lmKAN  # noqa: F401  (registers the ops)
from lmKAN.grids import cdf_borders

ap = argparse.ArgumentParser()
ap.add_argument("--grids", type=int, default=16)
ap.add_argument("--dim", type=int, default=512)
ap.add_argument("--batch", type=int, default=1 << 18)
ap.add_argument("--block", type=int, default=1024)
ap.add_argument("--tiles", default="4,8,16")
args = ap.parse_args()
G = args.grids
params = torch.randn(G + 1, G + 1, args.dim, args.dim // 2, device="cuda")
borders = cdf_borders(G, device="cuda")
x = torch.randn(args.dim, args.batch, device="cuda")
for tile in map(int, args.tiles.split(",")):
    torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, args.block)
torch.cuda.synchronize()
