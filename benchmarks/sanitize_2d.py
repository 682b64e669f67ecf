"""Small launches of every LMKAN2DLayer kernel, for compute-sanitizer memcheck / racecheck.

  compute-sanitizer --tool memcheck  python benchmarks/sanitize_2d.py
  compute-sanitizer --tool racecheck python benchmarks/sanitize_2d.py
"""
import torch

import lmKAN  # noqa: F401  (loads the extension)
from lmKAN.grids import cdf_borders


def main():
    torch.manual_seed(0)
    for tile in (4, 8, 16):
        for batch_last in (True, False):
            for fast in (False, True):
                g, n_in, n_out, batch = 5, 10, 2 * tile + 3, 77
                x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * 1.5
                x.view(-1)[3] = float("nan")
                params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
                borders = cdf_borders(g, device="cuda")
                y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, 64, tile, 64, fast)
                gy = torch.randn_like(y)
                torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, batch_last, tile, 64, fast)
    # A batch split over several dP blocks (atomic flush).
    x = torch.randn(8, 5000, device="cuda")
    params = torch.randn(4, 4, 6, 4, device="cuda")
    borders = cdf_borders(3, device="cuda")
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 128, 8, 64, False)
    torch.ops.lmkan.lmkan2d_backward(torch.randn_like(y), x, params, borders, True, 8, 64, False)
    torch.cuda.synchronize()
    print("sanitize_2d: all launches done")


if __name__ == "__main__":
    main()
