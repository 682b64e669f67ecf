"""Small launches of every 1D kernel, for compute-sanitizer (memcheck, racecheck, synccheck).

    compute-sanitizer --tool memcheck python tools/sanitize_1d.py
    compute-sanitizer --tool racecheck python tools/sanitize_1d.py \
        [all|float32|16bit|second|images|dc_shapes]

Racecheck times on an H100 (2026-12-06): "all" over 150 s on an sm_90 build (135 s on
8.0+PTX), the float32 part alone over 70 s, 16bit 25 s: give a whole run 400 s, as
tools/arch_round.sh's SANITIZE_TIMEOUT does, or run the parts one by one.
"""
import os
import sys

import torch

import lmKAN  # noqa: F401 - registers the ops
from lmKAN.lmkan1d import _max_num_grids_1d
from lmKAN.grids import cdf_borders, uniform_borders


def main(part):
    torch.manual_seed(0)
    if part in ("all", "float32"):
        float32_launches()
    if part in ("all", "16bit"):
        sixteen_bit_launches()
    if part in ("all", "second"):
        second_derivative_launches()
    if part in ("all", "images"):
        image_launches()
    if part in ("all", "dc_shapes"):
        grouped_dc_shape_launches()
    torch.cuda.synchronize()
    print(f"sanitize_1d ({part}): all launches done")


def float32_launches():
    for uniform in (False, True):
        for batch_last in (True, False):
            # Shapes: odd inputs, 3 output tiles (dx loops over them), several dC slices with
            # a partial last chunk (grouped dC, G <= 31), and G = 40 (the shared-accumulator dC).
            # These small batches split the forward's and dx's input stages over blocks
            # (ops.cpp, split_stages); B = 40000 (157 sample blocks) runs unsplit.
            for g, n_in, n_out, batch in ((31, 37, 45, 531), (5, 3, 1, 7), (7, 9, 260, 300),
                                          (31, 20, 40, 3000), (40, 11, 70, 700),
                                          (5, 20, 5, 40000)):
                borders = (uniform_borders(g, 4.0) if uniform else cdf_borders(g)).cuda()
                params = torch.randn(g + 1, n_out, n_in, device="cuda")
                x = 1.5 * torch.randn(*((n_in, batch) if batch_last else (batch, n_in)), device="cuda")
                x.view(-1)[3] = float("nan")
                x.view(-1)[5::97] = 3e38  # far inputs (the forward's add_far_terms)
                y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last)
                gy = torch.randn_like(y)
                for deterministic in (False, True):
                    torch.ops.lmkan.lmkan1d_backward(gy, x, params, borders, uniform, batch_last,
                                                     deterministic)
    # the shared-memory budgets of consumer GPUs and of an A100 (LMKAN_SMEM_BUDGET_KB): the
    # grouped dC (G <= 31) takes its 8 x 128 and 16 x 128 shapes there; each budget also at
    # its own num_grids limit (the shared-accumulator dC)
    for budget in ("99", "163"):
        os.environ["LMKAN_SMEM_BUDGET_KB"] = budget
        for g in (31, _max_num_grids_1d(torch.device("cuda"))):
            params = torch.randn(g + 1, 45, 21, device="cuda")
            x = 1.5 * torch.randn(21, 531, device="cuda")
            y = torch.ops.lmkan.lmkan1d_forward(x, params, cdf_borders(g).cuda(), False, True)
            for deterministic in (False, True):
                torch.ops.lmkan.lmkan1d_backward(torch.randn_like(y), x, params, cdf_borders(g).cuda(),
                                                 False, True, deterministic)
    os.environ["LMKAN_SMEM_BUDGET_KB"] = ""


# (shape, num_grids): each launch shape of the grouped dC (csrc/lmkan1d/layout.h,
# kGroupedConfigs) at the cell counts it serves, as tests/test_cuda_1d.py's GROUPED_SHAPES
GROUPED_SHAPES = [(0, 1), (0, 16), (1, 17), (1, 31), (2, 5), (2, 31), (3, 31)]


def grouped_dc_shape_launches():
    """Every grouped dC launch shape (forced by LMKAN_1D_DC_SHAPE): partial input and output
    blocks, several slices with a partial last chunk, both layouts and modes."""
    for shape, g in GROUPED_SHAPES:
        os.environ["LMKAN_1D_DC_SHAPE"] = str(shape)
        for batch_last in (True, False):
            borders = uniform_borders(g, 4.0).cuda()
            params = torch.randn(g + 1, 150, 21, device="cuda")
            x = 1.5 * torch.randn(*((21, 1500) if batch_last else (1500, 21)), device="cuda")
            x.view(-1)[5::97] = 3e38
            gy = torch.randn(*((150, 1500) if batch_last else (1500, 150)), device="cuda")
            for deterministic in (False, True):
                torch.ops.lmkan.lmkan1d_backward(gy, x, params, borders, True, batch_last,
                                                 deterministic)
    os.environ["LMKAN_1D_DC_SHAPE"] = ""


def image_launches():
    """lmkan1d_forward on images [N, N_in, L] (csrc/common/images.h): in place where L is a
    multiple of 16 (unsplit, and split over stages), both table types, far inputs; the copy
    where it is not."""
    for table in (None, torch.bfloat16):
        for n, length in ((157, 48), (3, 32), (5, 21)):
            params = torch.randn(32, 260, 37, device="cuda")
            x = 1.5 * torch.randn(n, 37, length, device="cuda")
            x.view(-1)[3] = float("nan")
            x.view(-1)[5::97] = 3e38
            torch.ops.lmkan.lmkan1d_forward(x, params, cdf_borders(31).cuda(), False, True, table)


def sixteen_bit_launches():
    """16-bit tables (the forward's 16-bit stages, far pass included) and 16-bit parameters."""
    for table in (torch.float16, torch.bfloat16):
        for g, n_in, n_out, batch in ((31, 37, 45, 531), (100, 9, 131, 260)):
            borders = uniform_borders(g, 4.0).cuda()
            params = torch.randn(g + 1, n_out, n_in, device="cuda")
            x = 1.5 * torch.randn(batch, n_in, device="cuda")
            x.view(-1)[5::97] = 3e38
            for p, t in ((params, table), (params.to(table), None)):
                y = torch.ops.lmkan.lmkan1d_forward(x, p, borders, True, False, t)
                torch.ops.lmkan.lmkan1d_backward(torch.randn_like(y), x, p, borders, True, False,
                                                 False, t)


def second_derivative_launches():
    """The derivative ops of lmkan1d_backward: the slope forward and the slope dC, both grids,
    both layouts, deterministic and not, a 16-bit table."""
    for uniform in (False, True):
        for batch_last in (True, False):
            for g, n_in, n_out, batch in ((31, 37, 45, 531), (5, 3, 1, 7), (40, 11, 70, 700)):
                borders = (uniform_borders(g, 4.0) if uniform else cdf_borders(g)).cuda()
                params = torch.randn(g + 1, n_out, n_in, device="cuda")
                shape = (n_in, batch) if batch_last else (batch, n_in)
                x, w = 1.5 * torch.randn(*shape, device="cuda"), torch.randn(*shape, device="cuda")
                gy = torch.randn(*((n_out, batch) if batch_last else (batch, n_out)), device="cuda")
                for table in (None, torch.bfloat16):
                    torch.ops.lmkan.lmkan1d_slope_forward(x, w, params, borders, uniform,
                                                          batch_last, table)
                for deterministic in (False, True):
                    torch.ops.lmkan.lmkan1d_slope_grad_params(gy, x, w, params, borders, uniform,
                                                              batch_last, deterministic)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")
