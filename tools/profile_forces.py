"""Where a force-training step's GPU time goes: torch.profiler over a few steps of
benchmarks/bench_forces.py's models, the kernels by total CUDA time (the leads of
docs/decisions.md, issue 19, are to be checked against this table).

    python tools/profile_forces.py [--kind 2d] [--batch 65536] [--width 256] [--steps 5]
        [--norm layernorm|none]
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

# the tree itself (an in-place build, as tools/arch_round.sh makes) and its benchmarks
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from bench_forces import _model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("1d", "2d"), default="2d")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--num-grids", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--norm", choices=("layernorm", "none"), default="layernorm")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_forces.py profiles CUDA kernels: no CUDA GPU is visible")
    torch.manual_seed(0)
    model = _model(args.kind, args.width, args.num_grids, args.norm).cuda()
    x = torch.randn(args.batch, 12, device="cuda")
    energy_target = torch.randn(args.batch, 1, device="cuda")
    force_target = torch.randn(args.batch, 12, device="cuda")

    def force_step():
        model.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_(True)
        energy = model(xr)
        forces = -torch.autograd.grad(energy.sum(), xr, create_graph=True)[0]
        ((energy - energy_target).square().mean()
         + (forces - force_target).square().mean()).backward()

    for _ in range(3):  # warm-up: tuning, allocations
        force_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            force_step()
        torch.cuda.synchronize()
    print(f"{torch.cuda.get_device_name()}, {args.kind} model ({args.norm}), B={args.batch}, "
          f"width {args.width}, {args.steps} force steps:")
    _print_kernels(prof.key_averages(), args.steps)


def _print_kernels(events, steps, rows=25):
    """Kernels by GPU time, with their whole names (the profiler's own table cuts them at a
    column width, which hid which template instantiation ran)."""
    def device_us(e):  # torch >= 2.4 names it device time; older releases cuda time
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    kernels = sorted((e for e in events if device_us(e) > 0), key=device_us, reverse=True)
    total = sum(device_us(e) for e in kernels)
    print(f"GPU time {total / 1000:.3f} ms over {steps} steps ({total / 1000 / steps:.3f} ms a step)")
    print(f"{'share':>6} {'ms/step':>8} {'calls/step':>10} {'us/call':>8}  kernel")
    for e in kernels[:rows]:
        us = device_us(e)
        print(f"{100 * us / total:5.1f}% {us / 1000 / steps:8.3f} {e.count / steps:10.1f} "
              f"{us / e.count:8.1f}  {e.key}")


if __name__ == "__main__":
    main()
