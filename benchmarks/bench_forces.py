"""Cost of a force-training step against an energy-only step (issue 19, item 2: at most 3x),
on CUDA, for a model of each layer kind, batch-first, batch B of 12 inputs (the CH4
example's shape, widened):
  1d: KANLayer(12, W) -> LayerNorm -> KANLayer(W, 1)
  2d: LMKAN2DLayer(G, 12, W) -> LayerNorm -> LMKAN2DLayer(G, W, 1)
(--norm none drops the LayerNorm: torch's LayerNorm double backward is a large part of the
force step, docs/decisions.md, issue 19; without it the ratio is the layers' own.)
Energy step: forward, MSE on energies, backward, Adam. Force step: forward, forces = -dE/dx
with create_graph=True, MSE on energies and forces, backward through both, Adam. Median ms
per step (CUDA events, steps back to back); the ratios are printed last.

    python benchmarks/bench_forces.py [--batch 65536] [--width 256] [--num-grids 8]
        [--kinds 1d,2d] [--norm layernorm|none] [--json PATH]
"""
import argparse
import json
import os
import sys

import torch
from torch import nn

from lmKAN import KANLayer, LMKAN2DLayer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cuda_median_ms, warm_up_gpu  # noqa: E402


def _model(kind, width, num_grids, norm="layernorm"):
    between = nn.LayerNorm(width) if norm == "layernorm" else nn.Identity()
    if kind == "1d":
        return nn.Sequential(KANLayer(12, width), between, KANLayer(width, 1))
    return nn.Sequential(LMKAN2DLayer(num_grids, 12, width, batch_last=False), between,
                         LMKAN2DLayer(num_grids, width, 1, batch_last=False))


def _time_steps(model, x, energy_target, force_target):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def energy_step():
        optimizer.zero_grad(set_to_none=True)
        (model(x) - energy_target).square().mean().backward()
        optimizer.step()

    def force_step():
        optimizer.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_(True)
        energy = model(xr)
        forces = -torch.autograd.grad(energy.sum(), xr, create_graph=True)[0]
        loss = (energy - energy_target).square().mean() + (forces - force_target).square().mean()
        loss.backward()
        optimizer.step()

    return {name: cuda_median_ms(step, 20, 5, calls_per_sample=3)
            for name, step in (("energy", energy_step), ("forces", force_step))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--num-grids", type=int, default=8, help="the 2D layers' num_grids")
    ap.add_argument("--kinds", default="1d,2d")
    ap.add_argument("--norm", choices=("layernorm", "none"), default="layernorm",
                    help="the module between the two layers (default layernorm)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_forces.json"))
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    unknown = set(kinds) - {"1d", "2d"}
    if unknown:
        ap.error(f"--kinds takes 1d and 2d, got {sorted(unknown)}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_forces.py measures CUDA kernels: no CUDA GPU is visible")
    warm_up_gpu()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 12, device="cuda")
    energy_target = torch.randn(args.batch, 1, device="cuda")
    force_target = torch.randn(args.batch, 12, device="cuda")
    rows = {}
    for kind in kinds:
        ms = _time_steps(_model(kind, args.width, args.num_grids, args.norm).cuda(), x,
                         energy_target, force_target)
        rows[kind] = {"energy_ms": ms["energy"], "forces_ms": ms["forces"],
                      "ratio": ms["forces"] / ms["energy"]}
        print(f"{kind}: energy step {ms['energy']:.3f} ms, force step {ms['forces']:.3f} ms",
              flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "batch": args.batch, "width": args.width, "num_grids_2d": args.num_grids,
              "norm": args.norm,
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    for kind, row in rows.items():
        print(f"{result['device']}, B={args.batch}, {kind} model of width {args.width} "
              f"({args.norm}): force step / energy step = {row['ratio']:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
