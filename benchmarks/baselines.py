"""Two KAN layers from the literature, written here in plain vectorised PyTorch for comparison.

Both are batch-first like nn.Linear (x [..., in_features] -> y [..., out_features]) and,
like their published versions, add a "base" path SiLU(x) @ W_base^T to the spline part.

- RBFKANLayer (the FastKAN idea): each input is expanded into `num_centers` Gaussian bumps
  exp(-((x - c_k) / h)^2) at equally spaced centres c_k on [grid_min, grid_max], h the
  spacing; the expanded [B, in * num_centers] features go through one linear map.
- BSplineKANLayer (the efficient-kan idea): each input is expanded into the
  `grid_size + order` B-spline basis functions of degree `order` on a uniform knot vector
  over [grid_min, grid_max] (extended by `order` knots each side, so the bases sum to 1
  inside the range), evaluated by the Cox-de Boor recursion for all inputs at once; the
  expanded features go through one linear map.

Memory of both is O(B * in * basis size) for the expanded features, which is what the
lookup layers avoid.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RBFKANLayer", "BSplineKANLayer", "bspline_bases"]


class RBFKANLayer(nn.Module):
    """y = SiLU(x) W_base^T + RBF(x) W_spline^T with Gaussian bumps on a uniform grid."""

    def __init__(self, in_features, out_features, num_centers=8, grid_min=-2.0, grid_max=2.0):
        super().__init__()
        self.in_features, self.out_features, self.num_centers = in_features, out_features, num_centers
        self.register_buffer("centers", torch.linspace(grid_min, grid_max, num_centers))
        self.inv_width = (num_centers - 1) / (grid_max - grid_min)  # 1 / spacing of the centres
        self.base = nn.Linear(in_features, out_features)
        self.spline = nn.Linear(in_features * num_centers, out_features, bias=False)
        nn.init.trunc_normal_(self.spline.weight, std=0.1 / math.sqrt(in_features * num_centers))

    def forward(self, x):
        bumps = torch.exp(-((x[..., None] - self.centers) * self.inv_width).square())  # [..., in, K]
        return self.base(F.silu(x)) + self.spline(bumps.flatten(-2))


def bspline_bases(x, knots, order):
    """B-spline bases of degree `order` at x: [..., in] -> [..., in, len(knots) - 1 - order].

    Cox-de Boor recursion on the knot vector `knots` (increasing, 1-D), starting from the
    degree-0 indicator of each knot interval [t_j, t_{j+1}).
    """
    x = x[..., None]
    bases = ((x >= knots[:-1]) & (x < knots[1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - knots[:-(k + 1)]) / (knots[k:-1] - knots[:-(k + 1)]) * bases[..., :-1]
        right = (knots[k + 1:] - x) / (knots[k + 1:] - knots[1:-k]) * bases[..., 1:]
        bases = left + right
    return bases


class BSplineKANLayer(nn.Module):
    """y = SiLU(x) W_base^T + B(x) W_spline^T with cubic (by default) B-splines."""

    def __init__(self, in_features, out_features, grid_size=5, order=3, grid_min=-1.0, grid_max=1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.order = grid_size, order
        step = (grid_max - grid_min) / grid_size
        steps = torch.arange(-order, grid_size + order + 1, dtype=torch.float32)
        self.register_buffer("knots", grid_min + steps * step)  # grid_size + 2 order + 1 knots
        self.base = nn.Linear(in_features, out_features)
        num_bases = grid_size + order
        self.spline = nn.Linear(in_features * num_bases, out_features, bias=False)
        nn.init.trunc_normal_(self.spline.weight, std=0.1 / math.sqrt(in_features * num_bases))

    def forward(self, x):
        bases = bspline_bases(x, self.knots, self.order)  # [..., in, grid_size + order]
        return self.base(F.silu(x)) + self.spline(bases.flatten(-2))
