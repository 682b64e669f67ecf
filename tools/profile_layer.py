"""One layer call as a user makes it: its time and where it goes, kernel by kernel.

    python tools/profile_layer.py --kind 2d --grids 8 --shape 256,256,65536 --batch-first \
        --autocast bfloat16 --mode fwd --scale 1.5
    python tools/profile_layer.py --kind 1d --grids 8 --shape 128,128,1024 --mode nograd

Builds LMKAN2DLayer (--kind 2d) or LMKAN1DLayer (--kind 1d) with num_grids --grids and
--shape N_in,N_out,B, x = scale * N(0, 1) in the layer's layout, and times --mode:
nograd (forward under torch.no_grad), fwd (training-mode forward), fwd+bwd (forward and
y.backward), optionally with the forward under torch.autocast(--autocast). Prints the median
milliseconds per call (CUDA events; perf_counter on the CPU) and the profiler's table of the
kernels (CUDA) or ops (CPU) of one call, largest first. For diagnoses such as a dtype or a
layout that runs slower than expected (compare.py's columns, bench_overhead.py's rows).
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, os.path.join(_HERE, "..", "benchmarks"))
from lmKAN import LMKAN1DLayer, LMKAN2DLayer  # noqa: E402
from _timing import cuda_median_ms, wall_us_per_call  # noqa: E402 (benchmarks/_timing.py)

AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("2d", "1d"), default="2d")
    p.add_argument("--grids", type=int, default=8, help="num_grids")
    p.add_argument("--shape", default="256,256,65536", help="N_in,N_out,B")
    p.add_argument("--batch-first", action="store_true", help="x is [B, N_in] (default [N_in, B])")
    p.add_argument("--mode", choices=("nograd", "fwd", "fwd+bwd"), default="fwd+bwd")
    p.add_argument("--autocast", choices=tuple(AUTOCAST), default="none")
    p.add_argument("--scale", type=float, default=1.0, help="x = scale * N(0, 1)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--top", type=int, default=12, help="rows of the profiler table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        args.n_in, args.n_out, args.batch = (int(v) for v in args.shape.split(","))
    except ValueError:
        p.error(f"--shape must be N_in,N_out,B (three integers), got {args.shape!r}")
    return args


def make_call(args, device):
    """The layer and a zero-argument function that makes one call of --mode."""
    layer_cls = LMKAN2DLayer if args.kind == "2d" else LMKAN1DLayer
    layer = layer_cls(args.grids, args.n_in, args.n_out, batch_last=not args.batch_first).to(device)
    shape = (args.batch, args.n_in) if args.batch_first else (args.n_in, args.batch)
    x = (args.scale * torch.randn(*shape, device=device)).requires_grad_(args.mode != "nograd")
    cast = AUTOCAST[args.autocast]

    def forward():
        if cast is None:
            return layer(x)
        with torch.autocast(device.type, dtype=cast):
            return layer(x)

    def call():
        if args.mode == "nograd":
            with torch.no_grad():
                return forward()
        y = forward()
        if args.mode == "fwd+bwd":
            y.float().sum().backward()
            layer.zero_grad(set_to_none=True)
            x.grad = None
        return y

    return layer, call


def median_ms(call, device, reps):
    """Median milliseconds of one call: CUDA events around each (benchmarks/_timing.py), or
    the wall clock on the CPU."""
    if device.type == "cuda":
        return cuda_median_ms(call, reps, warmup=0)
    return wall_us_per_call(call, 1, reps, warmup=0) / 1e3


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer, call = make_call(args, device)
    for _ in range(3):  # the first calls tune "auto" settings and store the call's plan
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = median_ms(call, device, args.reps)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages()
              if (e.device_time_total if cuda else e.self_cpu_time_total) > 0]
    events.sort(key=lambda e: -(e.device_time_total if cuda else e.self_cpu_time_total))
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    layout = "batch-first" if args.batch_first else "batch-last"
    print(f"{name}: {layer.__class__.__name__}({args.grids}, {args.n_in}, {args.n_out}), "
          f"B={args.batch}, {layout}, {args.mode}, autocast {args.autocast}, x = {args.scale} N(0, 1)")
    print(f"{'us':>9s} {'calls':>5s}  {'kernel' if cuda else 'op (self CPU time)'}")
    for e in events[:args.top]:
        us = e.device_time_total if cuda else e.self_cpu_time_total
        print(f"{us:9.1f} {e.count:5d}  {e.key[:120]}")
    print(f"median {ms:.3f} ms per call over {args.reps} calls")
    return ms


if __name__ == "__main__":
    main()
