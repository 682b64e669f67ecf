"""The Hessian schedule, model-wide regularisation, and the demo (main job) end to end."""
import math

import pytest
import torch
from torch import nn

from lmKAN import LMKAN1DLayer, LMKAN2DLayer, demo
from lmKAN.regularization import HessianSchedule, hessian_regularization


def test_schedule_decays_geometrically_then_holds():
    s = HessianSchedule(100, start=1e-2, end=1e-6, decay_fraction=0.5)
    assert s(0) == pytest.approx(1e-2)
    assert s(25) == pytest.approx(1e-4)  # halfway in log space
    assert s(50) == pytest.approx(1e-6) and s(99) == pytest.approx(1e-6)
    values = [s(i) for i in range(60)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kw,exc,words", [
    (dict(total_steps=0), ValueError, ["total_steps", ">= 1", "0"]),
    (dict(total_steps="10"), TypeError, ["total_steps", "int", "'10'"]),
    (dict(total_steps=5, start=0.0), ValueError, ["start", "> 0", "0.0"]),
    (dict(total_steps=10, end=math.inf), ValueError, ["end", "finite", "inf"]),
    (dict(total_steps=10, start=math.nan), ValueError, ["start", "finite", "nan"]),
    (dict(total_steps=5, decay_fraction=1.5), ValueError, ["decay_fraction", "(0, 1]", "1.5"])])
def test_schedule_rejects_bad_arguments(kw, exc, words):
    with pytest.raises(exc) as info:
        HessianSchedule(**kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_schedule_step_is_an_int():
    s = HessianSchedule(10)
    assert s(-3) == s(0)
    with pytest.raises(TypeError, match="step must be an int, got str"):
        s("3")


def test_model_regularisation_sums_every_lmkan_layer():
    a, b = LMKAN2DLayer(5, 4, 6, batch_last=False), LMKAN1DLayer(5, 6, 2, batch_last=False)
    net = nn.Sequential(a, nn.ReLU(), b)
    total = hessian_regularization(net)
    expected = a.get_hessian_regularization() + b.get_hessian_regularization()
    torch.testing.assert_close(total, expected)
    total.backward()
    assert a.func_parameter.grad.abs().sum() > 0 and b.func_parameter.grad.abs().sum() > 0
    assert hessian_regularization(nn.Linear(2, 2)).item() == 0.0


def test_model_regularisation_weight_is_the_product():
    """hessian_regularization(model, weight=w) is w * hessian_regularization(model), value and
    gradients, whether the weight goes into the ops (a number) or multiplies the sum (a
    tensor); a model of 1D layers alone, and one without lmKAN layers, too."""
    torch.manual_seed(4)
    a, b = LMKAN2DLayer(5, 4, 6, batch_last=False), LMKAN1DLayer(5, 6, 2, batch_last=False)
    c = LMKAN2DLayer(7, 2, 3, batch_last=False)
    for net in (nn.Sequential(a, nn.ReLU(), b, c), nn.Sequential(b)):
        for m in net:
            if hasattr(m, "func_parameter"):
                with torch.no_grad():
                    m.func_parameter.normal_()
        params = [m.func_parameter for m in net if hasattr(m, "func_parameter")]
        plain = hessian_regularization(net)
        expected_grads = torch.autograd.grad(0.3 * plain, params)
        for weight in (0.3, torch.tensor(0.3)):
            weighted = hessian_regularization(net, weight=weight)
            torch.testing.assert_close(weighted, 0.3 * plain)
            for g, e in zip(torch.autograd.grad(weighted, params), expected_grads):
                torch.testing.assert_close(g, e)
    assert hessian_regularization(nn.Linear(2, 2), weight=5.0).item() == 0.0


@pytest.mark.parametrize("weight,exc,words", [
    ("0.1", TypeError, ["weight", "real number or a tensor", "'0.1'"]),
    (True, TypeError, ["weight", "bool"]),
    (math.inf, ValueError, ["weight", "finite", "inf"])])
def test_model_regularisation_rejects_bad_weights(weight, exc, words):
    net = nn.Sequential(LMKAN2DLayer(5, 4, 6))
    with pytest.raises(exc) as info:
        hessian_regularization(net, weight=weight)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_hessian2d_sum_is_the_sum_of_the_tables():
    """lmKAN.ops.hessian2d_sum (hessian_regularization's call for the 2D layers): on the CPU the
    sum of hessian2d per table, in order; lists of different lengths or empty lists refused."""
    from lmKAN import ops
    from lmKAN.grids import cdf_borders
    torch.manual_seed(3)
    params = [torch.randn(g + 1, g + 1, n, p, dtype=torch.float64, requires_grad=True)
              for g, n, p in ((4, 3, 2), (9, 1, 5), (6, 2, 2))]
    borders = [cdf_borders(g, dtype=torch.float64) for g in (4, 9, 6)]
    total = ops.hessian2d_sum(params, borders)
    expected = sum(ops.hessian2d(p, b) for p, b in zip(params, borders))
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(ops.hessian2d_sum(params, borders, 0.4), 0.4 * expected)
    grads = torch.autograd.grad(total, params)
    expected_grads = torch.autograd.grad(expected, params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)
    for bad in (([params[0]], borders), ([], [])):
        with pytest.raises(ValueError, match="same, non-zero length, got"):
            ops.hessian2d_sum(*bad)


def test_demo_runs_and_reports_both_models(capsys):
    rows = demo.main(["--steps", "40", "--batch", "64", "--device", "cpu"])
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["lmKAN", "MLP"]
    for r in rows:
        assert math.isfinite(r["rmse"]) and r["params"] > 0 and r["ms"] > 0
    assert "RMSE (eV)" in out and "lmKAN backend" in out and "CH4" in out
    # The lmKAN network has many more parameters at a similar arithmetic cost.
    assert rows[0]["params"] > 5 * rows[1]["params"]
    assert 0.5 < rows[0]["flops"] / rows[1]["flops"] < 2


def test_demo_under_autocast(capsys):
    """--autocast trains both networks under torch.autocast (the CPU's bfloat16 here)."""
    rows = demo.main(["--steps", "30", "--batch", "64", "--device", "cpu", "--autocast", "bfloat16"])
    assert "under autocast bfloat16" in capsys.readouterr().out
    assert all(math.isfinite(r["rmse"]) for r in rows)
