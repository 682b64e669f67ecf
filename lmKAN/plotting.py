"""Plots of the functions a layer has learned (needs matplotlib: `pip install lmKAN[plot]`).

- `plot_1d_functions`: the splines f_{o,i} of an LMKAN1DLayer / KANLayer as curves, one
  panel per (input, output) pair (all pairs, or a chosen subset).
- `plot_2d_functions`: the tables f_{o,p}(x1, x2) of an LMKAN2DLayer as heatmaps over the
  grid's core range [g_1, g_{G-1}]^2.

Both evaluate the layer's own function (the reference op, in float64, on the CPU) on the
plotted points, save the figure to `path` and return the plotted data, so what is drawn is
exactly what the layer computes. Figures are built with `matplotlib.figure.Figure`, not
pyplot: no window opens and no global backend is changed.
"""
import math

import torch

from . import _reference

__all__ = ["plot_1d_functions", "plot_2d_functions", "evaluate_1d", "evaluate_2d"]


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting lmKAN layers needs matplotlib: `pip install matplotlib` "
                          "(or `pip install lmKAN[plot]`)") from exc
    return Figure


def _pairs(n_first, n_second, pairs, names):
    if pairs is None:
        return [(a, b) for a in range(n_first) for b in range(n_second)]
    out = []
    for pair in pairs:
        a, b = (int(v) for v in pair)
        if not (0 <= a < n_first and 0 <= b < n_second):
            raise ValueError(f"pair ({a}, {b}) is out of range: {names[0]} must be in [0, {n_first}) "
                             f"and {names[1]} in [0, {n_second})")
        out.append((a, b))
    if not out:
        raise ValueError("pairs must name at least one pair")
    return out


def evaluate_1d(layer, input_index, output_index, points):
    """f_{output_index, input_index}(points) of a 1D layer, float64 on the CPU."""
    params = layer.func_parameter.detach().to("cpu", torch.float64)
    table = params[:, output_index:output_index + 1, input_index:input_index + 1]
    x = points.to(torch.float64).reshape(1, -1)
    y = _reference.lmkan1d_forward(x, table, layer.borders.to("cpu", torch.float64),
                                   layer.grid == "uniform", True)
    return y.reshape(-1)


def evaluate_2d(layer, pair_index, output_index, x1, x2):
    """f_{output_index, pair_index}(x1, x2) of a 2D layer on equal-shape grids, float64 on the CPU."""
    params = layer.func_parameter.detach().to("cpu", torch.float64)
    table = params[:, :, output_index:output_index + 1, pair_index:pair_index + 1]
    x = torch.stack([x1.reshape(-1), x2.reshape(-1)]).to(torch.float64)
    y = _reference.lmkan2d_forward(x, table, layer.borders.to("cpu", torch.float64), True)
    return y.reshape(x1.shape)


def _layout(n, ncols):
    ncols = max(1, min(ncols or math.ceil(math.sqrt(n)), n))
    return math.ceil(n / ncols), ncols


def plot_1d_functions(layer, path, pairs=None, x_range=None, num_points=401, ncols=None,
                      show_nodes=True, dpi=100, panel_size=(2.6, 2.0), title=None):
    """Draw the splines f_{o,i} of a 1D layer and save the figure to `path`.

    pairs: iterable of (input, output) pairs; None draws every pair, laid out as a grid
        with one row per input and one column per output.
    x_range: (lo, hi) of the curves; default: the grid's end nodes widened by 10%.
    Returns {"x": points, "values": {(input, output): f(points)}} (float64 tensors).
    """
    Figure = _require_matplotlib()
    full_grid = pairs is None
    pairs = _pairs(layer.input_dim, layer.output_dim, pairs, ("input", "output"))
    borders = layer.borders.detach().to("cpu", torch.float64)
    if x_range is None:
        lo, hi = borders[0].item(), borders[-1].item()
        pad = 0.1 * (hi - lo)
        x_range = (lo - pad, hi + pad)
    points = torch.linspace(float(x_range[0]), float(x_range[1]), int(num_points), dtype=torch.float64)
    nrows, ncols = (layer.input_dim, layer.output_dim) if full_grid else _layout(len(pairs), ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    values = {}
    for n, (i, o) in enumerate(pairs):
        ax = axes[i, o] if full_grid else axes[n // ncols, n % ncols]
        f = evaluate_1d(layer, i, o, points)
        values[(i, o)] = f
        ax.plot(points.numpy(), f.numpy(), lw=1.5)
        if show_nodes:
            inside = (borders >= points[0]) & (borders <= points[-1])
            node_vals = evaluate_1d(layer, i, o, borders[inside])
            ax.plot(borders[inside].numpy(), node_vals.numpy(), ".", ms=3, color="k")
        ax.set_title(f"in {i} → out {o}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(True, lw=0.3)
    if not full_grid:
        for n in range(len(pairs), nrows * ncols):
            axes[n // ncols, n % ncols].set_visible(False)
    fig.suptitle(title or f"{type(layer).__name__}: learned functions", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return {"x": points, "values": values, "figure": fig}


def plot_2d_functions(layer, path, pairs=None, resolution=64, value_range=None, ncols=None,
                      dpi=100, panel_size=(2.6, 2.3), cmap="viridis", title=None):
    """Draw the tables f_{o,p}(x1, x2) of a 2D layer as heatmaps and save to `path`.

    pairs: iterable of (input pair p, output o); None draws every (p, o).
    value_range: (lo, hi) of both axes; default: the grid's core range [g_1, g_{G-1}].
    Returns {"x1": axis, "x2": axis, "values": {(p, o): f[resolution, resolution]}} where
    values[(p, o)][a, b] = f(x1[b], x2[a]) (rows along x2, as drawn).
    """
    Figure = _require_matplotlib()
    pairs = _pairs(layer.input_dim // 2, layer.output_dim, pairs, ("pair", "output"))
    borders = layer.borders.detach().to("cpu", torch.float64)
    if value_range is None:
        value_range = (borders[1].item(), borders[-2].item())
    axis = torch.linspace(float(value_range[0]), float(value_range[1]), int(resolution), dtype=torch.float64)
    x2g, x1g = torch.meshgrid(axis, axis, indexing="ij")
    nrows, ncols = _layout(len(pairs), ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    values = {}
    extent = (axis[0].item(), axis[-1].item(), axis[0].item(), axis[-1].item())
    for n, (p, o) in enumerate(pairs):
        ax = axes[n // ncols, n % ncols]
        f = evaluate_2d(layer, p, o, x1g, x2g)
        values[(p, o)] = f
        im = ax.imshow(f.numpy(), origin="lower", extent=extent, aspect="auto", cmap=cmap)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax.set_title(f"pair {p} (x{2 * p}, x{2 * p + 1}) → out {o}", fontsize=7)
        ax.tick_params(labelsize=6)
    for n in range(len(pairs), nrows * ncols):
        axes[n // ncols, n % ncols].set_visible(False)
    fig.suptitle(title or f"{type(layer).__name__}: learned functions", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return {"x1": axis, "x2": axis, "values": values, "figure": fig}
