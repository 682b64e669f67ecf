"""Grids of the lookup layers (docs/spec.md section 1): node positions and the cell of a value.

`cdf_borders` / `uniform_borders` give the G+1 node positions; `find_cell` maps values to
(cell index, position d inside the cell). Every float input, NaN and +-inf included, lands
in a cell index inside [0, G-1], so table lookups never go out of range.
"""
import math

import torch

__all__ = ["laplace_cdf", "laplace_icdf", "cdf_borders", "uniform_borders", "find_cell",
           "compute_dtype"]


def laplace_cdf(v: float) -> float:
    """F(v) of the standard Laplace distribution (scalar)."""
    return 0.5 * math.exp(v) if v <= 0 else 1.0 - 0.5 * math.exp(-v)


def laplace_icdf(u: float) -> float:
    """F^-1(u) of the standard Laplace distribution (scalar, 0 < u < 1)."""
    return math.log(2.0 * u) if u <= 0.5 else -math.log(2.0 * (1.0 - u))


def cdf_borders(num_grids: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Nodes g_0..g_G of the Laplace-CDF grid; the end nodes extend their neighbours' spacing."""
    g = [0.0] * (num_grids + 1)
    for i in range(1, num_grids):
        g[i] = laplace_icdf(i / num_grids)
    g[0] = 2.0 * g[1] - g[2]
    g[num_grids] = 2.0 * g[num_grids - 1] - g[num_grids - 2]
    return torch.tensor(g, dtype=dtype, device=device)


def uniform_borders(num_grids: int, spline_width: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """G+1 equally spaced nodes on [-w/2, w/2]."""
    half = spline_width / 2.0
    g = [-half + spline_width * i / num_grids for i in range(num_grids + 1)]
    return torch.tensor(g, dtype=dtype, device=device)


def compute_dtype(dtype):
    """The dtype cells, weights and sums are computed in for tensors of `dtype`: at least
    float32 (float16/bfloat16 cannot hold a cell index past 256 or 2048, nor a node of a fine
    grid: near x = 1 a cell of a G=300 grid is 0.018 wide, and bfloat16 moves a node there by
    about 0.004); float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def find_cell(v: torch.Tensor, borders: torch.Tensor, uniform: bool = False):
    """Cell index (int64, in [0, G-1]) and position d of every element of `v`.

    d = (v - g_i) / (g_{i+1} - g_i) lies in [0, 1) inside the grid and extrapolates beyond
    the end nodes; NaN inputs get cell 0 and d = NaN. Computed, and d returned, in
    compute_dtype(v.dtype): at least float32.
    """
    num_grids = borders.shape[0] - 1
    dtype = compute_dtype(v.dtype)
    v = v.to(dtype)
    borders = borders.to(dtype)
    if uniform:
        lo, hi = borders[0], borders[num_grids]
        pos = (v - lo) * (num_grids / (hi - lo))
    else:
        # One exp, of -|v| (non-positive: no overflow for huge |v|), the value of exp(v) for
        # v <= 0 and of exp(-v) above, as the kernels compute it (csrc/common/grid.cuh);
        # torch.where evaluates both of its branches, so two exps cost twice.
        half_tail = 0.5 * torch.exp(-v.abs())
        cdf = torch.where(v <= 0, half_tail, 1.0 - half_tail)
        pos = num_grids * cdf
    index = torch.nan_to_num(torch.floor(pos), nan=0.0).clamp_(0, num_grids - 1).long()
    if uniform:
        d = pos - index.to(v.dtype)
    else:
        left = borders[index]
        d = (v - left) / (borders[index + 1] - left)
    return index, d


def cell_nodes(borders: torch.Tensor, uniform: bool = False, dtype=None):
    """The node positions g_i as find_cell sees them, in `dtype` (default: borders' compute
    dtype). The uniform cell uses only the end nodes (s = (v - g_0) G / (g_G - g_0)), so its
    inner nodes sit exactly at equal steps even where float32 rounding moved the stored
    borders."""
    g = borders.to(dtype or compute_dtype(borders.dtype))
    if not uniform:
        return g
    steps = torch.arange(g.shape[0], dtype=g.dtype, device=g.device)
    return g[0] + steps * ((g[-1] - g[0]) / (g.shape[0] - 1))
