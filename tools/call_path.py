"""Where the time of a small eager call goes: host pieces, GPU kernels, launch configurations.

    python tools/call_path.py [--out DIR]

For LMKAN2DLayer(26, 128, 128) at B=1024 (no grad, batch-last) and for the small training
step of benchmarks/bench_overhead.py, prints
- wall: microseconds per call over back-to-back calls, one synchronisation at the end;
- host: microseconds per call of the Python and dispatch work alone (50 calls issued after a
  synchronisation, no wait: the launch queue does not fill, so the GPU does not hold them);
- gpu: microseconds per call of the GPU work alone (the call replayed as a CUDA graph);
- sync: microseconds of one call started after a synchronisation (CUDA events around it,
  median of 50), as `benchmarks/bench_2d.py` times its eager rows: the launch latencies and
  any host wait between launches show here, not in the back-to-back wall time;
for the layer, the raw ops below it and each piece of its forward; the GPU time of every
forward launch configuration at that shape; a profiler table per case (--out DIR).
A call is host-bound where host > gpu: the wall time is then the host time.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

# the tree itself (an in-place build, as tools/arch_round.sh makes) and its benchmarks
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _timing import cuda_graph_replay, cuda_median_ms, wall_us_per_call  # noqa: E402
from bench_overhead import step_models, train_step  # noqa: E402

from lmKAN import LMKAN2DLayer  # noqa: E402
from lmKAN._checks import check_input  # noqa: E402
from lmKAN import ops  # noqa: E402


def host_us(fn, calls=50, samples=15):
    """Host microseconds per call: `calls` calls issued after a synchronisation, no wait."""
    times = []
    for _ in range(samples):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def gpu_us(fn, replays=200):
    """GPU microseconds per call: fn captured as a CUDA graph, replayed back to back."""
    return cuda_median_ms(cuda_graph_replay(fn), reps=5, warmup=10, calls_per_sample=replays) * 1e3


def sync_us(fn, reps=50):
    """Microseconds of one call after a synchronisation (CUDA events, median)."""
    return cuda_median_ms(fn, reps=reps, warmup=5) * 1e3


def wall_us(fn, calls=2000):
    return wall_us_per_call(fn, calls, 5, warmup=20, sync=torch.cuda.synchronize)


def profile_table(fn, path, calls=50):
    from torch.profiler import ProfilerActivity, profile
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    layer = LMKAN2DLayer(26, 128, 128).to(device)
    x = torch.randn(128, 1024, device=device)
    linear = nn.Linear(128, 128).to(device)
    x_bf = x.t().contiguous()
    rows = []
    with torch.no_grad():
        layer(x)  # tunes "auto" and fills the memo
        config = layer._launch_resolver.config(layer, x, False)
        p, b = layer.func_parameter, layer.borders
        det = layer._deterministic_now()
        cases = [
            ("layer(x)", lambda: layer(x)),
            ("ops.lmkan2d", lambda: ops.lmkan2d(x, p, b, True, *config, det)),
            ("torch.ops.lmkan.lmkan2d", lambda: torch.ops.lmkan.lmkan2d(x, p, b, True, *config, det)),
            ("torch.ops.lmkan.lmkan2d_forward",
             lambda: torch.ops.lmkan.lmkan2d_forward(x, p, b, True, config.tile_size_forward,
                                                     config.block_size_forward)),
            ("nn.Linear(128, 128)", lambda: linear(x_bf)),
        ]
        for name, fn in cases:
            rows.append((name, wall_us(fn), host_us(fn), gpu_us(fn), sync_us(fn)))
        pieces = [
            ("check_input", lambda: check_input(x, p, 128, True, "LMKAN2DLayer")),
            ("resolver.config", lambda: layer._launch_resolver.config(layer, x, False)),
            ("_check_fits_on_device",
             lambda: layer._check_fits_on_device(x.device, False, config, torch.float32)),
            ("_deterministic_now", layer._deterministic_now),
            ("kernel_applies", lambda: ops.kernel_applies("lmkan2d_forward", x, p, b)),
            ("module attrs (p, b)", lambda: (layer.func_parameter, layer.borders)),
        ]
        for name, fn in pieces:
            rows.append((name, None, host_us(fn, calls=2000, samples=5), None, None))
        profile_table(lambda: layer(x), os.path.join(args.out, "profile_layer_forward.txt"))
        configs = []
        for tile in (4, 8, 16):
            for block in (64, 128, 256, 512, 1024):
                fn = lambda t=tile, bl=block: torch.ops.lmkan.lmkan2d_forward(x, p, b, True, t, bl)
                configs.append((tile, block, gpu_us(fn)))

    xs, cases = step_models(device)
    kan_step, mlp_step = (train_step(m, xs, y, torch.optim.Adam(m.parameters()), w)
                          for m, y, w in (cases["lmKAN"], cases["MLP"]))
    for name, fn in (("lmKAN training step", kan_step), ("MLP training step", mlp_step)):
        rows.append((name, wall_us(fn, calls=200), host_us(fn, calls=10), None, None))
    profile_table(kan_step, os.path.join(args.out, "profile_kan_step.txt"), calls=20)
    profile_table(mlp_step, os.path.join(args.out, "profile_mlp_step.txt"), calls=20)

    print(f"resolved config: {config}")
    print("forward GPU us per launch configuration (tile, block): " + ", ".join(
        f"{t}/{bl} {us:.1f}" for t, bl, us in configs))
    print(f"{'case':34s} {'wall us':>8s} {'host us':>8s} {'gpu us':>8s} {'sync us':>8s}")
    for name, wall, host, gpu, sync in rows:
        fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8s}"
        print(f"{name:34s} {fmt(wall)} {fmt(host)} {fmt(gpu)} {fmt(sync)}")


if __name__ == "__main__":
    main()
