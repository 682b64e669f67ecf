"""The sorted backward's two runs kernels against plan_runs's choice (plan.h), for a bfloat16
grad_y and table: the backward op alone (batch-last, fast mode, block 256) at shapes around
the plan's floors, each timed with LMKAN_RUNS_MMA=0 (FMAs), 1 (tensor cores) and unset (the
plan), twice in that order; medians of 7 CUDA-event timings, ms.

    python3 tools/time_runs_plan.py
"""
import os
import statistics

import torch

import lmKAN  # noqa: F401  (registers the ops)
from lmKAN.grids import cdf_borders

# (num_grids, features in = out, tile size, batch): tile 8 below and above its 32-samples-per-
# cell floor at G=26, tile 16 around 160, and the benchmarks' shapes
SHAPES = [(26, 256, 8, b) for b in (4096, 8192, 16384, 32768)] + [
    (16, 256, 8, 4096), (16, 256, 16, 65536), (8, 512, 16, 16384), (8, 512, 16, 1 << 18),
    (26, 256, 16, 1 << 18), (8, 512, 8, 1 << 18), (26, 256, 8, 1 << 18)]


def median_ms(call, reps=7):
    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


torch.manual_seed(0)
for g, d, tile, batch in SHAPES:
    x = torch.randn(d, batch, device="cuda")
    params = torch.randn(g + 1, g + 1, d, d // 2, device="cuda")
    borders = cdf_borders(g, device="cuda")
    gy = torch.randn(d, batch, device="cuda").bfloat16()

    def call():
        torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, tile, 256, True, False,
                                         torch.bfloat16)

    ms = {}
    for knob in ("0", "1", None) * 2:
        if knob is None:
            os.environ.pop("LMKAN_RUNS_MMA", None)
        else:
            os.environ["LMKAN_RUNS_MMA"] = knob
        ms.setdefault(knob, []).append(median_ms(call))
    fmt = lambda v: " / ".join(f"{t:.3f}" for t in v)  # noqa: E731
    print(f"G={g} {d}->{d} tile {tile} B={batch}: FMAs {fmt(ms['0'])}, tensor cores "
          f"{fmt(ms['1'])}, plan {fmt(ms[None])} ms", flush=True)
    os.environ.pop("LMKAN_RUNS_MMA", None)
