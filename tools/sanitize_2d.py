"""Small launches of every LMKAN2DLayer kernel, for compute-sanitizer (memcheck, racecheck,
synccheck).

  compute-sanitizer --tool memcheck  python tools/sanitize_2d.py [all|layer|second|few|images]
  compute-sanitizer --tool racecheck python tools/sanitize_2d.py [all|layer|second|few|images]

(few: only the kernels of layers of at most 8 outputs, sample_threads_*.cu, also part of the
others; images: the forward and the backward on batch-last images [N, N_in, L], also part
of layer.)
"""
import os
import sys

import torch

import lmKAN  # loads the extension
from lmKAN.grids import cdf_borders


def _launch(g, n_in, n_out, batch, batch_last, tile, block, fast, deterministic, forward=True,
            table=None, params_dtype=torch.float32, grad_params=True):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * 1.5
    x.view(-1)[3] = float("nan")
    x.view(-1)[5::97] = 3e38  # far inputs: the forwards' float64 pass, far_fixup.cu
    params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda").to(params_dtype)
    borders = cdf_borders(g, device="cuda")
    if forward:
        torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block, table)
    gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, batch_last, tile, block, fast,
                                     deterministic, table, grad_params)


def main(part):
    torch.manual_seed(0)
    if part in ("all", "layer"):
        layer_launches()
    if part in ("all", "second"):
        second_derivative_launches()
    if part == "few":
        few_outputs_launches()
        second_derivative_launches(shapes=FEW_OUTPUT_SLOPE_SHAPES)
    if part == "images":
        image_launches()
    torch.cuda.synchronize()
    print(f"sanitize_2d ({part}): all launches done")


# (N_in, N_out, B) of the second-derivative launches: two output tiles plus a partial one, a
# partial tile, and 1 and 5 outputs (the few-outputs mixed term and slope dP,
# sample_threads_*.cu)
FEW_OUTPUT_SLOPE_SHAPES = ((10, 1, 77), (6, 5, 700))
SLOPE_SHAPES = ((10, 131, 77), (6, 9, 700)) + FEW_OUTPUT_SLOPE_SHAPES


def second_derivative_launches(shapes=SLOPE_SHAPES):
    """The derivative ops of lmkan2d_backward (tile 8): table and accumulators in shared memory
    (G = 5) and in global memory (G = 40), two output tiles plus a partial one, pair splits of
    a small batch, both layouts, deterministic and not, a 16-bit table, NaN and far inputs."""
    for g in (5, 40):
        for batch_last in (True, False):
            for n_in, n_out, batch in shapes:
                x = 1.5 * torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda")
                x.view(-1)[3] = float("nan")
                x.view(-1)[7] = 40.0
                w = torch.randn_like(x)
                params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
                borders = cdf_borders(g, device="cuda")
                gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
                for table in (None, torch.bfloat16):
                    torch.ops.lmkan.lmkan2d_slope_forward(x, w, params, borders, batch_last, table)
                    torch.ops.lmkan.lmkan2d_slope_grad_x(gy, x, w, params, borders, batch_last,
                                                         table)
                for deterministic in (False, True):
                    torch.ops.lmkan.lmkan2d_slope_grad_params(gy, x, w, params, borders,
                                                              batch_last, deterministic)


def few_outputs_launches():
    """Layers of at most 8 outputs, a thread per sample or (sample, pair) (sample_threads_*.cu):
    the forward, grad_x (deterministic, or grad_x alone) and grad_x with grad_params (not
    deterministic; shared atomics); every row width (1, 2, 4, 8), one pair a block (small
    batches), groups of 4 pairs with a last group of one (B = 9000, 37 pairs), 54 KB a pair
    (G = 40, 8 outputs), the forward's pairs split over 5 blocks (20 pairs, B = 500)."""
    for batch_last in (True, False):
        for g, n_in, n_out, batch in ((6, 10, 1, 301), (8, 74, 2, 9000), (26, 10, 5, 777),
                                      (40, 6, 8, 133), (6, 40, 3, 500)):
            _launch(g, n_in, n_out, batch, batch_last, 8, 256, False, True)
            _launch(g, n_in, n_out, batch, batch_last, 8, 256, False, False, forward=False)
            _launch(g, n_in, n_out, batch, batch_last, 8, 256, False, False, forward=False,
                    grad_params=False)


def image_launches():
    """lmkan2d_forward on images [N, N_in, L] (csrc/common/images.h): the sample-lanes kernel
    in place (image instances, every tile, both table types, a split sum of a small batch,
    far inputs), and the copies around the few-outputs kernel."""
    for table in (None, torch.bfloat16):
        for tile in (4, 8, 16):
            for n, length in ((37, 49), (2, 13)):  # unsplit, and split over pairs
                x = 1.5 * torch.randn(n, 10, length, device="cuda")
                x.view(-1)[3] = float("nan")
                x.view(-1)[5::97] = 3e38
                params = torch.randn(6, 6, 8 * tile + 3, 5, device="cuda")
                torch.ops.lmkan.lmkan2d_forward(x, params, cdf_borders(5, device="cuda"), True,
                                                tile, 256, table)
    x = torch.randn(3, 6, 25, device="cuda")
    torch.ops.lmkan.lmkan2d_forward(x, torch.randn(6, 6, 5, 3, device="cuda"),
                                    cdf_borders(5, device="cuda"), True, 8, 256)
    image_backward_launches()


def image_backward_launches():
    """lmkan2d_backward on images: the sorted backward in place (bucket and runs image
    instances over several chunks, the image transpose of grad_y, far_fixup's flag pass with
    and without 16-byte loads: L % 4 == 0 and not, more than 4 chunks of 256 samples), and
    the copies around the deterministic plan; at tile 16, two output tiles per walk."""
    borders = cdf_borders(5, device="cuda")
    for n, length, fast, deterministic, tile, n_out in (
            (300, 64, False, False, 8, 70), (40, 37, True, False, 8, 70),
            (9, 30, False, True, 8, 70), (40, 37, True, False, 16, 200)):
        x = 1.5 * torch.randn(n, 10, length, device="cuda")
        x.view(-1)[3] = float("nan")
        x.view(-1)[5::97] = 3e38
        params = torch.randn(6, 6, n_out, 5, device="cuda")
        gy = torch.randn(n, n_out, length, device="cuda")
        torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, tile, 512, fast,
                                         deterministic)


def layer_launches():
    image_launches()
    for tile in (4, 8, 16):
        for batch_last in (True, False):
            for fast in (False, True):
                # two backward output tiles (8 * tile outputs each) plus a partial one; normal
                # mode not deterministic (cell-sorted chunks), fast mode deterministic
                _launch(5, 10, 16 * tile + 3, 77, batch_last, tile, 64, fast, fast)
            # fast mode over cell-sorted chunks (not deterministic): 3 output tiles in 2-warp
            # blocks, then 18 in 16-warp blocks
            _launch(5, 10, 16 * tile + 3, 777, batch_last, tile, 64, True, False, forward=False)
            _launch(5, 6, 17 * 8 * tile + 3, 600, batch_last, tile, 512, True, False,
                    forward=False)
        # a batch split over several dP blocks (deterministic: per-split copies)
        _launch(3, 8, 10, 5000, True, tile, 64, False, True)
        # past the shared-memory limit of the deterministic kernels: table and dP accumulator
        # in global memory
        _launch(lmKAN.max_num_grids(tile, "backward_deterministic", "cuda") + 1, 4, 9, 300,
                tile % 8 == 0, tile, 64, tile == 16, True, forward=False)
    # past the cell histogram of the non-deterministic backward: the same global-memory
    # kernels with float atomics (grad_x over 3 output tiles)
    _launch(lmKAN.max_num_grids(8, "backward", "cuda") + 1, 4, 131, 300, True, 8, 64, False,
            False, forward=False)
    # the cell sort's two scatters (bucket_kernel): staged in shared memory (G = 26: three
    # whole stages of 4,096 samples and a ragged one) and direct (G = 150, past the staged
    # scatter's shared memory)
    _launch(26, 8, 37, 12367, True, 8, 256, False, False, forward=False)
    _launch(150, 4, 37, 5003, False, 8, 256, False, False, forward=False)
    # the forward's ring of table buffers at every depth (4 down to 1, then the L2 kernel past
    # the limit) and the deterministic grad_x with its staged table, at this GPU's shared memory
    # and at the budgets of an A100 and of consumer GPUs (LMKAN_SMEM_BUDGET_KB)
    for budget in ("", "163", "99"):
        os.environ["LMKAN_SMEM_BUDGET_KB"] = budget
        for tile in (4, 16):
            limit = lmKAN.max_num_grids(tile, "forward", "cuda")
            for g in sorted({3, limit // 2, limit - 1, limit, limit + 1}):
                _launch(g, 6, 8 * tile - 3, 300, True, tile, 256, True, True)
                _launch(g, 6, 8 * tile + 5, 300, False, tile, 1024, False, False)
    os.environ["LMKAN_SMEM_BUDGET_KB"] = ""
    # rings that wrap several times (17 pairs): depths 4, 3, 2 on a 227 KB GPU
    for g, tile, block in ((5, 4, 1024), (16, 4, 512), (26, 4, 1024)):
        _launch(g, 34, 8 * tile + 3, 2 * block + 37, True, tile, block, False, False)
    # batch-first past the strided limit (1 MiB of x and y): the forward's two transposes
    _launch(5, 34, 37, 7001, False, 4, 256, False, False)
    few_outputs_launches()
    # 16-bit tables (the forward reads them as such, rings of several depths, both layouts,
    # partial tiles) and 16-bit parameters
    for table in (torch.float16, torch.bfloat16):
        for tile in (4, 8, 16):
            _launch(7, 34, 8 * tile + 3, 1037, True, tile, 256, False, False, table=table)
            _launch(26, 6, 8 * tile - 5, 300, False, tile, 1024, False, True, table=table)
        _launch(9, 10, 21, 333, True, 8, 64, False, False, params_dtype=table)
        _launch(130, 4, 40, 100, True, 16, 256, False, False, table=table)  # past shared memory


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")
