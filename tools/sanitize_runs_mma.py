"""compute-sanitizer launches of the tensor-core runs kernel: odd sizes, groups across cells,
pads, images, fast and normal chunks.

    compute-sanitizer --tool memcheck|racecheck|synccheck python3 tools/sanitize_runs_mma.py
"""
import os

import torch
import lmKAN  # noqa: F401 (loads the ops)
from lmKAN.grids import cdf_borders

os.environ["LMKAN_RUNS_MMA"] = "1"  # the tensor cores whatever plan_runs would choose

torch.manual_seed(0)
op = torch.ops.lmkan.lmkan2d_backward
for g, n_in, n_out, batch, tile, bl in [(5, 6, 70, 300, 16, True), (26, 4, 129, 1001, 8, False),
                                        (3, 2, 64, 5000, 16, True)]:
    x = torch.randn((n_in, batch) if bl else (batch, n_in), device="cuda") * 1.5
    p = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    gy = torch.randn((n_out, batch) if bl else (batch, n_out), device="cuda").bfloat16()
    for fast in (True, False):
        op(gy, x, p, cdf_borders(g, device="cuda"), bl, tile, 256, fast, False, torch.bfloat16)
x = torch.randn(3, 10, 77, device="cuda")
p = torch.randn(10, 10, 256, 5, device="cuda")
gy = torch.randn(3, 256, 77, device="cuda").bfloat16()
op(gy, x, p, cdf_borders(9, device="cuda"), True, 16, 256, True, False, torch.bfloat16)
torch.cuda.synchronize()
print("ok")
