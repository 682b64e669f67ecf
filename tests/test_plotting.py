"""Plots of learned functions (CPU): files are written and show the layer's own function."""
import numpy as np
import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer
from lmKAN import plotting

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")


def _layer_value_1d(layer, i, o, points):
    """f_{o,i}(points) through the layer itself: only input i is non-zero... minus f(0) of the rest."""
    n = points.numel()
    x = torch.zeros(n, layer.input_dim, dtype=torch.float64)
    x[:, i] = points
    base = torch.zeros(1, layer.input_dim, dtype=torch.float64)
    lay = layer.double()
    if lay.batch_last:
        y, y0 = lay(x.t()).t(), lay(base.t()).t()
    else:
        y, y0 = lay(x), lay(base)
    # y0 holds sum_i f_{o,i}(0); the other inputs contribute their f(0) to both.
    f0 = plotting.evaluate_1d(layer, i, o, torch.zeros(1, dtype=torch.float64))
    return y[:, o] - y0[0, o] + f0


def test_plot_1d_all_pairs(tmp_path):
    layer = LMKAN1DLayer(8, 3, 2)
    with torch.no_grad():
        layer.func_parameter.add_(0.2 * torch.randn_like(layer.func_parameter))
    path = tmp_path / "f1d.png"
    out = layer.plot_functions(path)
    assert path.exists() and path.stat().st_size > 1000
    assert set(out["values"]) == {(i, o) for i in range(3) for o in range(2)}
    axes = out["figure"].axes
    for (i, o), vals in out["values"].items():
        expected = _layer_value_1d(layer, i, o, out["x"])
        torch.testing.assert_close(vals, expected, rtol=1e-12, atol=1e-12)
        line = axes[i * 2 + o].lines[0]
        np.testing.assert_allclose(line.get_xdata(), out["x"].numpy())
        np.testing.assert_allclose(line.get_ydata(), vals.numpy())


def test_plot_1d_subset_and_kanlayer(tmp_path):
    layer = KANLayer(4, 5, "random_normal")
    out = layer.plot_functions(tmp_path / "sub.pdf", pairs=[(0, 4), (3, 1)], num_points=50)
    assert (tmp_path / "sub.pdf").exists()
    assert list(out["values"]) == [(0, 4), (3, 1)]
    # random_normal init: straight lines through the origin, extrapolated beyond the ends.
    x = out["x"]
    for (i, o), vals in out["values"].items():
        torch.testing.assert_close(vals, _layer_value_1d(layer, i, o, x), rtol=1e-12, atol=1e-12)
    fig = layer.visualize_all_mappings(save_path=tmp_path / "all.png")
    assert (tmp_path / "all.png").exists() and len([a for a in fig.axes if a.lines]) == 20
    with pytest.raises(ValueError, match="out of range"):
        layer.plot_functions(tmp_path / "bad.png", pairs=[(4, 0)])


def test_plot_2d_heatmaps(tmp_path):
    layer = LMKAN2DLayer(6, 4, 3, init_scale=1.0)
    path = tmp_path / "f2d.png"
    out = layer.plot_functions(path, pairs=[(0, 0), (1, 2)], resolution=17)
    assert path.exists()
    g = layer.borders
    assert out["x1"][0].item() == pytest.approx(g[1].item()) and out["x1"][-1].item() == pytest.approx(g[-2].item())
    for (p, o), vals in out["values"].items():
        x2g, x1g = torch.meshgrid(out["x2"], out["x1"], indexing="ij")
        x = torch.zeros(4, x1g.numel(), dtype=torch.float64)
        x[2 * p], x[2 * p + 1] = x1g.reshape(-1), x2g.reshape(-1)
        lay = layer.double()
        other = 1 - p
        y = lay(x)[o]
        y0 = lay(torch.zeros(4, 1, dtype=torch.float64))[o]
        f0 = plotting.evaluate_2d(layer, p, o, torch.zeros(1, 1, dtype=torch.float64),
                                  torch.zeros(1, 1, dtype=torch.float64)).reshape(())
        expected = (y - y0 + f0).reshape(vals.shape)
        torch.testing.assert_close(vals, expected, rtol=1e-12, atol=1e-12)
        assert other in (0, 1)
    img = [a for a in out["figure"].axes if a.images][0].images[0]
    np.testing.assert_allclose(np.asarray(img.get_array()), out["values"][(0, 0)].numpy())


def test_missing_matplotlib_message(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install matplotlib.*\.\[plot\]"):
        plotting.plot_1d_functions(LMKAN1DLayer(4, 1, 1), "unused.png")


def test_default_selection_is_bounded_and_said(tmp_path):
    import time
    start = time.monotonic()
    fig = KANLayer(256, 256, "random_normal").visualize_all_mappings(save_path=tmp_path / "k.png")
    assert time.monotonic() - start < 60  # 65,536 panels took over 15 minutes before
    assert len([a for a in fig.axes if a.lines]) == plotting.DEFAULT_SIDE ** 2
    assert "first 8 of 256 inputs x first 8 of 256 outputs" in fig._suptitle.get_text()
    out = LMKAN2DLayer(6, 40, 3).plot_functions(tmp_path / "f.png", resolution=5)
    assert sorted(out["values"]) == [(p, o) for p in range(8) for o in range(3)]
    assert "first 8 of 20 input pairs" in out["figure"]._suptitle.get_text()
    small = LMKAN1DLayer(4, 3, 2)
    out = small.plot_functions(tmp_path / "s.png", pairs="all", num_points=5)
    assert len(out["values"]) == 6 and "first" not in out["figure"]._suptitle.get_text()


@pytest.mark.parametrize("kind,kwargs,exc,words", [
    ("2d", dict(resolution=0), ValueError, ["resolution", ">= 2", "0"]),
    ("2d", dict(pairs=[(0.9, 1.7)]), TypeError, ["pairs", "ints", "(0.9, 1.7)"]),
    ("2d", dict(pairs="every"), TypeError, ["pairs", "'all'", "'every'"]),
    ("2d", dict(value_range=(1.0, -1.0)), ValueError, ["value_range", "lo < hi"]),
    ("1d", dict(num_points=1), ValueError, ["num_points", ">= 2", "1"]),
    ("1d", dict(x_range=(0.0, float("inf"))), ValueError, ["x_range[1]", "finite", "inf"]),
    ("1d", dict(ncols=0), ValueError, ["ncols", ">= 1", "0"]),
])
def test_plot_arguments_are_checked(tmp_path, kind, kwargs, exc, words):
    layer = LMKAN2DLayer(6, 4, 3) if kind == "2d" else LMKAN1DLayer(6, 3, 2)
    with pytest.raises(exc) as info:
        layer.plot_functions(tmp_path / "bad.png", **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))

