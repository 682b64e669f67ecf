"""Per-kernel times of the 1D layer's forward+backward (torch.profiler), bench case.

    python benchmarks/profile_1d.py [--deterministic]

kernel_breakdown() is also used by bench_1d.py, so the bench JSON carries the split
(pack, forward, dx, dC grouped by cell or not, ...) of every run.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lmKAN import KANLayer


def _short_name(key):
    for part in ("pack", "forward_kernel", "dx_kernel", "dc_grouped_kernel", "dc_kernel",
                 "sum_slices"):
        if part in key:
            return "lmkan1d " + part.replace("_kernel", "")
    return key[:60]


def kernel_breakdown(batch=65536, features=256, control_points=32, deterministic=False, iters=10):
    """[(kernel, ms per forward+backward)], largest first, from `iters` profiled steps."""
    torch.manual_seed(0)
    layer = KANLayer(features, features, "random_normal", control_points,
                     deterministic=deterministic).cuda()
    x = (1.5 * torch.randn(batch, features, device="cuda")).requires_grad_(True)
    gy = torch.randn(batch, features, device="cuda")
    for _ in range(3):
        layer(x).backward(gy)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            layer(x).backward(gy)
        torch.cuda.synchronize()
    totals = {}
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None)
        if us is None:
            us = event.cuda_time_total
        if us <= 0 or event.key.startswith("ProfilerStep"):
            continue
        name = _short_name(event.key)
        totals[name] = totals.get(name, 0.0) + us / 1e3 / iters
    return sorted(totals.items(), key=lambda kv: -kv[1])


def print_breakdown(rows, title):
    print(title)
    for name, ms in rows:
        print(f"  {name:<62}{ms:>9.3f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deterministic", action="store_true")
    args = ap.parse_args()
    rows = kernel_breakdown(deterministic=args.deterministic)
    print_breakdown(rows, f"per kernel, per forward+backward (deterministic={args.deterministic}):")


if __name__ == "__main__":
    main()
