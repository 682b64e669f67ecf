"""The 2D backward op alone, bfloat16 grad_y and table (as under autocast), fast mode, tile 16,
block 256, B=2^18, batch-last: median of 5 CUDA-event timings per case.

    LMKAN_RUNS_MMA=1 python3 tools/time_backward_op.py   # the tensor-core runs kernel
    LMKAN_RUNS_MMA=0 python3 tools/time_backward_op.py   # runs_kernel (FMAs)
    python3 tools/time_backward_op.py                    # plan_runs's choice (plan.h)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _timing import cuda_median_ms  # noqa: E402 (benchmarks/_timing.py)

import lmKAN  # noqa: E402,F401  (registers the ops)
from lmKAN.grids import cdf_borders  # noqa: E402

CASES = (("G8 512->512", 8, 512, 512), ("G26 256->256", 26, 256, 256))

torch.manual_seed(0)
tag = os.environ.get("LMKAN_RUNS_MMA", "plan")
for name, g, n_in, n_out in CASES:
    batch = 1 << 18
    x = torch.randn(n_in, batch, device="cuda")
    params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    borders = cdf_borders(g, device="cuda")
    gy = torch.randn(n_out, batch, device="cuda").bfloat16()

    def call():
        torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, 16, 256, True, False,
                                         torch.bfloat16)

    ms = cuda_median_ms(call, reps=5, warmup=1)
    print(f"LMKAN_RUNS_MMA={tag} {name} fast bwd {ms:.3f} ms", flush=True)
