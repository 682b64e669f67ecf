"""Plots of the functions a layer has learned (needs matplotlib: `pip install matplotlib`, or
`pip install ".[plot]"` from the lmKAN source tree).

- `plot_1d_functions`: the splines f_{o,i} of an LMKAN1DLayer / KANLayer as curves, one
  panel per (input, output) pair.
- `plot_2d_functions`: the tables f_{o,p}(x1, x2) of an LMKAN2DLayer as heatmaps over the
  grid's core range [g_1, g_{G-1}]^2, one panel per (input pair, output).

Which panels: by default the first DEFAULT_SIDE x DEFAULT_SIDE (8 x 8) functions (the
first 8 inputs or input pairs times the first 8 outputs), so that a layer of any size draws
in seconds (a 256 -> 256 layer has 65,536 functions; a panel costs ~0.1 s); the title says
when a figure shows a selection. pairs="all" draws every function, pairs=[(a, b), ...]
the ones named.

Both evaluate the layer's own function (the reference op, in float64, on the CPU) on the
plotted points, save the figure to `path` and return the plotted data, so what is drawn is
exactly what the layer computes. Figures are built with `matplotlib.figure.Figure`, not
pyplot: no window opens and no global backend is changed.
"""
import math
import numbers

import torch

from . import _reference
from ._checks import check_int, check_real

__all__ = ["plot_1d_functions", "plot_2d_functions", "evaluate_1d", "evaluate_2d",
           "DEFAULT_SIDE"]

DEFAULT_SIDE = 8  # the default selection: the first 8 x 8 functions


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting lmKAN layers needs matplotlib: `pip install matplotlib` "
                          "(or `pip install \".[plot]\"` from the lmKAN source tree)") from exc
    return Figure


def _is_index(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pairs(n_first, n_second, pairs, names):
    """The (first, second) indices to draw, the (rows, columns) of a full-grid layout (None
    for a list of pairs) and a note for the title when only a selection is drawn."""
    if pairs is None or (isinstance(pairs, str) and pairs == "all"):
        a, b = (n_first, n_second) if pairs == "all" else (min(n_first, DEFAULT_SIDE),
                                                            min(n_second, DEFAULT_SIDE))
        note = None if (a, b) == (n_first, n_second) else (
            f"first {a} of {n_first} {names[0]}s x first {b} of {n_second} {names[1]}s; "
            f"pairs='all' draws every one")
        return [(i, j) for i in range(a) for j in range(b)], (a, b), note
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"pairs must be None (the first {DEFAULT_SIDE} x {DEFAULT_SIDE}), 'all' "
                        f"or a list of ({names[0]}, {names[1]}) index pairs, got {pairs!r}")
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_is_index, pair))):
            raise TypeError(f"each entry of pairs must be a ({names[0]}, {names[1]}) pair of "
                            f"ints, got {pair!r}")
        a, b = int(pair[0]), int(pair[1])
        if not (0 <= a < n_first and 0 <= b < n_second):
            raise ValueError(f"pair ({a}, {b}) is out of range: {names[0]} must be in [0, {n_first}) "
                             f"and {names[1]} in [0, {n_second})")
        out.append((a, b))
    if not out:
        raise ValueError("pairs must name at least one pair")
    return out, None, None


def _check_range(name, value):
    """None or (lo, hi): two finite reals, lo < hi."""
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"{name} must be None or a (lo, hi) pair of numbers, got {value!r}")
    lo, hi = check_real(f"{name}[0]", value[0]), check_real(f"{name}[1]", value[1])
    if not lo < hi:
        raise ValueError(f"{name} must have lo < hi, got {value!r}")
    return lo, hi


def _check_layout(ncols, dpi):
    if ncols is not None:
        check_int("ncols", ncols, 1)
    check_real("dpi", dpi, 0.0, exclusive=True)


def _title(layer, title, note):
    title = title or f"{type(layer).__name__}: learned functions"
    return title if note is None else f"{title}\n({note})"


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

    pairs: None: the first 8 inputs x the first 8 outputs (module docstring); "all": every
        pair; both laid out as a grid with one row per input and one column per output.
        Or a list of (input, output) pairs.
    x_range: (lo, hi) of the curves; default: the grid's end nodes widened by 10%.
    num_points: points per curve (>= 2).
    Returns {"x": points, "values": {(input, output): f(points)}} (float64 tensors).
    """
    Figure = _require_matplotlib()
    pairs, full_grid, note = _pairs(layer.input_dim, layer.output_dim, pairs, ("input", "output"))
    x_range = _check_range("x_range", x_range)
    num_points = check_int("num_points", num_points, 2)
    _check_layout(ncols, dpi)
    borders = layer.borders.detach().to("cpu", torch.float64)
    if x_range is None:
        lo, hi = borders[0].item(), borders[-1].item()
        pad = 0.1 * (hi - lo)
        x_range = (lo - pad, hi + pad)
    points = torch.linspace(float(x_range[0]), float(x_range[1]), int(num_points), dtype=torch.float64)
    nrows, ncols = full_grid if full_grid else _layout(len(pairs), ncols)
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
    fig.suptitle(_title(layer, title, note), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return {"x": points, "values": values, "figure": fig}


def plot_2d_functions(layer, path, pairs=None, resolution=64, value_range=None, ncols=None,
                      dpi=100, panel_size=(2.6, 2.3), cmap="viridis", title=None):
    """Draw the tables f_{o,p}(x1, x2) of a 2D layer as heatmaps and save to `path`.

    pairs: None: the first 8 input pairs x the first 8 outputs (module docstring); "all":
        every (p, o); or a list of (input pair p, output o).
    resolution: points per axis (>= 2).
    value_range: (lo, hi) of both axes; default: the grid's core range [g_1, g_{G-1}].
    Returns {"x1": axis, "x2": axis, "values": {(p, o): f[resolution, resolution]}} where
    values[(p, o)][a, b] = f(x1[b], x2[a]) (rows along x2, as drawn).
    """
    Figure = _require_matplotlib()
    pairs, _, note = _pairs(layer.input_dim // 2, layer.output_dim, pairs, ("input pair", "output"))
    value_range = _check_range("value_range", value_range)
    resolution = check_int("resolution", resolution, 2)
    _check_layout(ncols, dpi)
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
    fig.suptitle(_title(layer, title, note), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return {"x1": axis, "x2": axis, "values": values, "figure": fig}
