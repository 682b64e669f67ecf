"""Second derivatives through the layers' pure-PyTorch path (issue 19, items 1 and 3 on the
CPU; docs/spec.md, "Second derivatives"): gradgradcheck in float64 for both layers, both
layouts and both 1D grids, the chunked path, inputs past the grid, and the structure of the
bilinear functions' second derivatives.
"""
import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer, _reference as ref
from lmKAN.grids import cdf_borders, uniform_borders


def _x(batch_last, n_in=6, batch=7, scale=1.5):
    shape = (n_in, batch) if batch_last else (batch, n_in)
    return (torch.randn(shape, dtype=torch.float64) * scale).requires_grad_(True)


@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("scale", [1.5, 6.0], ids=["inside", "past_the_grid"])
def test_gradgradcheck_2d(batch_last, scale):
    torch.manual_seed(0)
    x = _x(batch_last, scale=scale)
    params = torch.randn(6, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    borders = cdf_borders(5).double()
    op = lambda x, p: ref.lmkan2d_forward(x, p, borders, batch_last)  # noqa: E731
    assert torch.autograd.gradgradcheck(op, (x, params))


@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("uniform", [False, True], ids=["cdf", "uniform"])
@pytest.mark.parametrize("scale", [1.5, 6.0], ids=["inside", "past_the_grid"])
def test_gradgradcheck_1d(batch_last, uniform, scale):
    torch.manual_seed(1)
    x = _x(batch_last, scale=scale)
    params = torch.randn(6, 4, 6, dtype=torch.float64, requires_grad=True)
    borders = uniform_borders(5, 4.0).double() if uniform else cdf_borders(5).double()
    op = lambda x, p: ref.lmkan1d_forward(x, p, borders, uniform, batch_last)  # noqa: E731
    assert torch.autograd.gradgradcheck(op, (x, params))


@pytest.mark.parametrize("layer_2d", [True, False], ids=["2d", "1d"])
def test_chunked_path_is_twice_differentiable(monkeypatch, layer_2d):
    """Calls larger than a chunk recompute chunks in the backward; with create_graph=True
    they keep the recomputation's graph: the same second derivatives as one chunk."""
    torch.manual_seed(2)
    x = _x(False, batch=9)
    if layer_2d:
        params = torch.randn(6, 6, 4, 3, dtype=torch.float64, requires_grad=True)
        op = lambda x, p: ref.lmkan2d_forward(x, p, cdf_borders(5).double(), False)  # noqa: E731
    else:
        params = torch.randn(6, 4, 6, dtype=torch.float64, requires_grad=True)
        op = lambda x, p: ref.lmkan1d_forward(x, p, cdf_borders(5).double(), False, False)  # noqa: E731

    def second(x, p):
        gx, gp = torch.autograd.grad(op(x, p).square().sum(), (x, p), create_graph=True)
        return torch.autograd.grad(gx.square().sum() + gp.sin().sum(), (x, p))

    whole = second(x, params)
    monkeypatch.setattr(ref, "CHUNK_ENTRIES", 48)  # 4 samples per chunk: 3 chunks
    chunked = second(x, params)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradgradcheck(op, (x, params))


def test_second_derivatives_of_the_bilinear_functions():
    """Inside a cell f(x1, x2) is bilinear: d2f/dx1^2 = d2f/dx2^2 = 0, and the mixed
    derivative is the cell's (P11 - P10 - P01 + P00) / (h1 h2)."""
    torch.manual_seed(3)
    params = torch.randn(6, 6, 1, 1, dtype=torch.float64)
    borders = cdf_borders(5).double()
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)  # batch-first
    y = ref.lmkan2d_forward(x, params, borders, False).sum()
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    h1 = torch.autograd.grad(g[0, 0], x, retain_graph=True)[0][0]  # row of the Hessian
    h2 = torch.autograd.grad(g[0, 1], x)[0][0]
    assert h1[0].item() == 0 and h2[1].item() == 0
    i = int(torch.searchsorted(borders, x.detach()[0, 0]).item()) - 1
    j = int(torch.searchsorted(borders, x.detach()[0, 1]).item()) - 1
    p = params[..., 0, 0]
    mixed = (p[i + 1, j + 1] - p[i + 1, j] - p[i, j + 1] + p[i, j]) / (
        (borders[i + 1] - borders[i]) * (borders[j + 1] - borders[j]))
    torch.testing.assert_close(h1[1], mixed)
    torch.testing.assert_close(h2[0], mixed)


@pytest.mark.parametrize("make", [
    lambda: LMKAN2DLayer(5, 6, 3, batch_last=False),
    lambda: LMKAN1DLayer(5, 6, 3, batch_last=False),
    lambda: KANLayer(6, 3, num_control_points=8),
], ids=["LMKAN2DLayer", "LMKAN1DLayer", "KANLayer"])
def test_force_training_step_on_the_layers(make):
    """The force-loss pattern: E = sum of the model's outputs, F = -dE/dx with
    create_graph=True, a loss on F backpropagated to every parameter (float32, CPU)."""
    torch.manual_seed(4)
    layer = make()
    x = torch.randn(17, 6, requires_grad=True)
    energy = layer(x).sum()
    (forces,) = torch.autograd.grad(-energy, x, create_graph=True)
    (forces.square().sum() + energy.square()).backward()
    grad = layer.func_parameter.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
