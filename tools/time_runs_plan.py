"""The sorted backward's two runs kernels against plan_runs's choice (plan.h), for a bfloat16
grad_y and table: the backward op alone (batch-last, fast mode, block 256) at shapes around
the plan's floors, each timed with LMKAN_RUNS_MMA=0 (FMAs), 1 (tensor cores) and unset (the
plan), twice in that order; medians of 7 CUDA-event timings, ms.

    python3 tools/time_runs_plan.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _timing import cuda_median_ms  # noqa: E402 (benchmarks/_timing.py)

import lmKAN  # noqa: E402,F401  (registers the ops)
from lmKAN.grids import cdf_borders  # noqa: E402

# (num_grids, features in = out, tile size, batch): tile 8 below and above its 32-samples-per-
# cell floor at G=26, tile 16 around 160, and the benchmarks' shapes
SHAPES = [(26, 256, 8, b) for b in (4096, 8192, 16384, 32768)] + [
    (16, 256, 8, 4096), (16, 256, 16, 65536), (8, 512, 16, 16384), (8, 512, 16, 1 << 18),
    (26, 256, 16, 1 << 18), (8, 512, 8, 1 << 18), (26, 256, 8, 1 << 18)]

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
        ms.setdefault(knob, []).append(cuda_median_ms(call, reps=7, warmup=1))
    fmt = lambda v: " / ".join(f"{t:.3f}" for t in v)  # noqa: E731
    print(f"G={g} {d}->{d} tile {tile} B={batch}: FMAs {fmt(ms['0'])}, tensor cores "
          f"{fmt(ms['1'])}, plan {fmt(ms[None])} ms", flush=True)
    os.environ.pop("LMKAN_RUNS_MMA", None)
