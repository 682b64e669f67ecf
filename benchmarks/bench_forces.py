"""Cost of a force-training step against an energy-only step (issue 19, item 2: at most 3x),
on CUDA, for a model of 1D layers (the layer whose CUDA kernels have second derivatives):
KANLayer(12, W) -> LayerNorm -> KANLayer(W, 1), batch B of 12 inputs (the CH4 example's
shape, widened). Energy step: forward, MSE on energies, backward. Force step: forward,
forces = -dE/dx with create_graph=True, MSE on energies and forces, backward through both.
Median ms per step (CUDA events, steps back to back); the ratio is printed last.

    python benchmarks/bench_forces.py [--batch 65536] [--width 256] [--json PATH]
"""
import argparse
import json
import os
import sys

import torch
from torch import nn

from lmKAN import KANLayer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cuda_median_ms, warm_up_gpu  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_forces.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_forces.py measures CUDA kernels: no CUDA GPU is visible")
    warm_up_gpu()
    torch.manual_seed(0)
    model = nn.Sequential(KANLayer(12, args.width), nn.LayerNorm(args.width),
                          KANLayer(args.width, 1)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 12, device="cuda")
    energy_target = torch.randn(args.batch, 1, device="cuda")
    force_target = torch.randn(args.batch, 12, device="cuda")

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

    rows = {}
    for name, step in (("energy", energy_step), ("forces", force_step)):
        rows[name] = cuda_median_ms(step, 20, 5, calls_per_sample=3)
        print(f"{name} step: {rows[name]:.3f} ms", flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "batch": args.batch, "width": args.width, "energy_ms": rows["energy"],
              "forces_ms": rows["forces"], "ratio": rows["forces"] / rows["energy"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{result['device']}, B={args.batch}, KANLayer(12, {args.width}) -> LayerNorm -> "
          f"KANLayer({args.width}, 1): force step / energy step = {result['ratio']:.2f} "
          f"(target <= 3)")


if __name__ == "__main__":
    main()
