"""benchmarks/compare.py on tiny CPU sizes, and the baseline layers of benchmarks/baselines.py."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import compare  # noqa: E402
from baselines import BSplineKANLayer, RBFKANLayer, bspline_bases  # noqa: E402

COLUMNS = {"forward_ms", "backward_ms", "forward_memory_bytes", "backward_memory_bytes", "params",
           "trainable_params"}


def test_compare_runs_on_cpu_and_writes_json_and_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    json_path = tmp_path / "compare.json"
    compare.main(["--device", "cpu", "--batch", "32", "--dim", "8", "--repeats", "1", "--warmup", "0",
                  "--json", str(json_path), "--figure-dir", str(tmp_path)])
    report = json.loads(json_path.read_text())
    assert report["timer"] == "perf_counter" and "CPU" in report["device"]
    names = list(report["results"])
    assert any("lmKAN 2D" in n for n in names) and any("lmKAN 1D" in n for n in names)
    assert any("Linear" in n for n in names) and any("RBF" in n for n in names)
    assert any("B-spline" in n for n in names)
    for name, row in report["results"].items():
        assert set(row) == COLUMNS, (name, row)
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0
        assert row["forward_memory_bytes"] is None  # "n/a" on the CPU
        assert row["params"] == row["trainable_params"] > 0
    assert (tmp_path / "performance.svg").stat().st_size > 0
    assert (tmp_path / "performance.png").stat().st_size > 0
    assert "n/a" in capsys.readouterr().out.splitlines()[-1]


def test_compare_redraws_a_saved_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    json_path = tmp_path / "compare.json"
    compare.main(["--device", "cpu", "--batch", "16", "--dim", "4", "--repeats", "1", "--warmup", "0",
                  "--only", "linear,1d", "--json", str(json_path)])
    first = capsys.readouterr().out.splitlines()[-3:]
    figures = tmp_path / "figures"
    report = compare.main(["--from-json", str(json_path), "--figure-dir", str(figures)])
    assert capsys.readouterr().out.splitlines()[-3:] == first  # the same table, nothing re-measured
    assert (figures / "performance.svg").stat().st_size > 0
    assert sorted(report["results"]) == sorted(json.loads(json_path.read_text())["results"])

def test_compare_autocast_columns(tmp_path, capsys):
    """--dtypes float32,bfloat16: each layer measured again with its forward under
    torch.autocast(bfloat16); the JSON row keeps its float32 columns and gains a "bfloat16"
    entry, the table two columns, and a saved run redraws them."""
    json_path = tmp_path / "compare.json"
    compare.main(["--device", "cpu", "--batch", "16", "--dim", "4", "--repeats", "1", "--warmup",
                  "0", "--only", "linear,2d", "--dtypes", "float32,bfloat16", "--json",
                  str(json_path)])
    out = capsys.readouterr().out.splitlines()
    title, header = out[-5], out[-4]  # then the separator and the 2 rows
    assert "autocast bfloat16" in title and "fwd bf16" in header and "bwd bf16" in header
    report = json.loads(json_path.read_text())
    assert len(report["results"]) == 2
    for name, row in report["results"].items():
        assert COLUMNS < set(row) and row["forward_ms"] > 0, (name, row)
        assert row["bfloat16"]["forward_ms"] > 0 and row["bfloat16"]["backward_ms"] > 0, name
    compare.main(["--from-json", str(json_path)])
    assert capsys.readouterr().out.splitlines()[-5:] == out[-5:]
    with pytest.raises(SystemExit):
        compare.main(["--dtypes", "float32,int8"])
    assert "unknown dtype(s) ['int8']" in capsys.readouterr().err


def test_bspline_bases_partition_of_unity_and_degree():
    layer = BSplineKANLayer(3, 2, grid_size=5, order=3)
    x = torch.linspace(-0.999, 0.999, 101)[:, None].expand(101, 3)
    bases = bspline_bases(x, layer.knots, layer.order)
    assert bases.shape == (101, 3, 8)
    torch.testing.assert_close(bases.sum(-1), torch.ones(101, 3))
    assert (bases >= 0).all()
    # A cubic B-spline is non-zero on 4 knot intervals: at most 4 bases active at any x.
    assert ((bases > 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("layer_type", [RBFKANLayer, BSplineKANLayer])
def test_baseline_layers_shapes_and_gradients(layer_type):
    layer = layer_type(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert layer(x).shape == (2, 5, 3)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
