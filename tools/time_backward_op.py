"""The 2D backward op alone, bfloat16 grad_y and table (as under autocast), fast mode, tile 16,
block 256, B=2^18, batch-last: median of 5 CUDA-event timings per case.

    LMKAN_RUNS_MMA=1 python3 tools/time_backward_op.py   # the tensor-core runs kernel
    LMKAN_RUNS_MMA=0 python3 tools/time_backward_op.py   # runs_kernel (FMAs)
    python3 tools/time_backward_op.py                    # plan_runs's choice (plan.h)
"""
import os
import statistics

import torch

import lmKAN  # noqa: F401  (registers the ops)
from lmKAN.grids import cdf_borders

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

    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    print(f"LMKAN_RUNS_MMA={tag} {name} fast bwd {statistics.median(times):.3f} ms", flush=True)
