"""The num_grids limits of both layers per shared-memory budget (README: the limit table under
"Performance").

For each opt-in budget of a GPU family (99 KB: sm_86/89/120, 163 KB: sm_80, 227 KB:
sm_90/100) the limits are read from the kernels' own planning code with
LMKAN_SMEM_BUDGET_KB set (csrc/common/device_limits.h), on whatever GPU runs this; rows for budgets
above the GPU's own shared memory are skipped.

  python tools/smem_limits.py
"""
import os

import torch

from lmKAN.lmkan1d import _max_num_grids_1d
from lmKAN.lmkan2d import max_num_grids

BUDGETS = {99: "sm_86 / sm_89 / sm_120", 163: "sm_80", 227: "sm_90 / sm_100"}
MODES = ("forward", "backward_deterministic", "backward")


def main():
    own = torch.cuda.get_device_properties(0).shared_memory_per_block_optin // 1024
    print(f"device: {torch.cuda.get_device_name()} ({own} KiB opt-in shared memory per block)")
    # the non-deterministic backward's limit (its cell histogram) is the same at every tile
    # and the forward's limit with 16-bit tables (half the staged bytes; float16 = bfloat16)
    columns = [(mode, tile, None) for mode in MODES for tile in (4, 8, 16)
               if mode != "backward" or tile == 8]
    columns += [("forward", tile, torch.bfloat16) for tile in (4, 8, 16)]
    names = [f"{m} t{t}" + (" 16-bit" if table else "") for m, t, table in columns]
    print(f"{'budget':>7} {'GPUs':24} " + " ".join(f"{n:>26}" for n in names) + f" {'1D':>5}")
    for budget, gpus in BUDGETS.items():
        if budget > own:
            continue
        os.environ["LMKAN_SMEM_BUDGET_KB"] = str(budget)
        cells = [max_num_grids(t, m, "cuda", table) for m, t, table in columns]
        print(f"{budget:>5}KB {gpus:24} " + " ".join(f"{c:>26}" for c in cells)
              + f" {_max_num_grids_1d(torch.device('cuda')):>5}")


if __name__ == "__main__":
    main()
