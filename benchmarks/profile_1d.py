"""Per-kernel times of the 1D layer's forward+backward (torch.profiler), bench case.

    python benchmarks/profile_1d.py [--deterministic] [--batch-last]

kernel_breakdown() is also used by bench_1d.py, so the bench JSON carries the split
(pack, forward, dx, dC grouped by cell or not, ...) of every run.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lmKAN import KANLayer, LMKAN1DLayer


def _short_name(key):
    for part in ("pack", "forward_kernel", "dx_kernel", "dc_grouped_kernel", "dc_kernel",
                 "sum_slices"):
        if part in key:
            return "lmkan1d " + part.replace("_kernel", "")
    return key[:60]


def bench_layer(features, control_points, batch_last=False, **kwargs):
    """The benchmarks' 1D layer: KANLayer(features, features, "random_normal",
    control_points, **kwargs), or with batch_last the same layer as LMKAN1DLayer(batch_last=
    True) (KANLayer's grid, spline width and init)."""
    if not batch_last:
        return KANLayer(features, features, "random_normal", control_points, **kwargs)
    return LMKAN1DLayer(control_points - 1, features, features, grid="uniform",
                        spline_width=4.0, init="random_normal", batch_last=True, **kwargs)


def kernel_breakdown(batch=65536, features=256, control_points=32, deterministic=False, iters=10,
                     batch_last=False):
    """[(kernel, ms per forward+backward)], largest first, from `iters` profiled steps
    (batch_last: the same layer as LMKAN1DLayer(batch_last=True), x as [features, batch])."""
    torch.manual_seed(0)
    layer = bench_layer(features, control_points, batch_last, deterministic=deterministic).cuda()
    shape = (features, batch) if batch_last else (batch, features)
    x = (1.5 * torch.randn(*shape, device="cuda")).requires_grad_(True)
    gy = torch.randn(*shape, device="cuda")
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
    ap.add_argument("--batch-last", action="store_true")
    args = ap.parse_args()
    rows = kernel_breakdown(deterministic=args.deterministic, batch_last=args.batch_last)
    print_breakdown(rows, f"per kernel, per forward+backward (deterministic={args.deterministic}):")


if __name__ == "__main__":
    main()
