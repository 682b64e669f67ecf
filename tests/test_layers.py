"""Public API: layers, layouts, initialisation, state dicts, errors, backend report."""
import pytest
import torch
from torch import nn

import lmKAN
from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer
from lmKAN import _reference as ref

F64 = torch.float64


def make_layer(kind, **kw):
    if kind == "2d":
        return LMKAN2DLayer(kw.pop("num_grids", 6), kw.pop("input_dim", 6), kw.pop("output_dim", 5), **kw)
    return LMKAN1DLayer(kw.pop("num_grids", 6), kw.pop("input_dim", 6), kw.pop("output_dim", 5), **kw)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_batch_last_and_batch_first_agree(kind):
    last = make_layer(kind).double()
    first = make_layer(kind, batch_last=False).double()
    first.load_state_dict(last.state_dict())
    x = torch.randn(6, 13, dtype=F64) * 2
    x_first = x.t().clone().requires_grad_(True)
    x_last = x.clone().requires_grad_(True)
    y_last, y_first = last(x_last), first(x_first)
    assert y_last.shape == (5, 13) and y_first.shape == (13, 5)
    torch.testing.assert_close(y_last, y_first.t(), rtol=1e-12, atol=1e-12)
    gy = torch.randn(13, 5, dtype=F64)
    y_first.backward(gy)
    y_last.backward(gy.t())
    torch.testing.assert_close(x_last.grad, x_first.grad.t(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last.func_parameter.grad, first.func_parameter.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_batch_first_keeps_leading_dims_and_non_contiguous_inputs(kind):
    layer = make_layer(kind, batch_last=False).double()
    wide = torch.randn(2, 3, 12, dtype=F64)
    x = wide[..., ::2]  # non-contiguous [2, 3, 6]
    y = layer(x)
    assert y.shape == (2, 3, 5)
    torch.testing.assert_close(y, layer(x.contiguous()))
    # batch-last input that is a slice of a wider tensor
    layer_last = make_layer(kind).double()
    wide = torch.randn(6, 20, dtype=F64)
    torch.testing.assert_close(layer_last(wide[:, 1::2]), layer_last(wide[:, 1::2].contiguous()))


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("batch_last", [True, False])
def test_empty_batch(kind, batch_last):
    layer = make_layer(kind, batch_last=batch_last)
    x = torch.randn(6, 0) if batch_last else torch.randn(0, 6)
    x.requires_grad_(True)
    y = layer(x)
    assert y.shape == ((5, 0) if batch_last else (0, 5))
    y.sum().backward()
    assert layer.func_parameter.grad is not None and torch.all(layer.func_parameter.grad == 0)


def test_2d_layer_matches_reference_and_trains():
    layer = LMKAN2DLayer(8, 4, 3, init_scale=0.5)
    bound = 0.5 / 2
    assert layer.func_parameter.shape == (9, 9, 3, 2)
    assert layer.func_parameter.abs().max() <= bound and layer.func_parameter.std() > bound / 4
    assert sum(p.numel() for p in layer.parameters()) == 81 * 3 * 2
    x = torch.randn(4, 64)
    target = torch.sin(x[0]) * x[1]
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = (layer(x)[0] - target).square().mean() + 1e-4 * layer.get_hessian_regularization()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    torch.testing.assert_close(layer(x), ref.lmkan2d_forward(x, layer.func_parameter, layer.borders))


def test_1d_inits():
    x = torch.cat([torch.randn(4, 50, dtype=F64) * 2, torch.full((4, 2), 1e3, dtype=F64),
                   torch.full((4, 2), -77.0, dtype=F64)], dim=1)
    for grid in ("cdf", "uniform"):
        ident = LMKAN1DLayer(7, 4, 4, grid=grid, init="identity").double()
        ident.reset_parameters()  # float64 node values: identity is exact to rounding
        torch.testing.assert_close(ident(x), x, rtol=1e-12, atol=1e-9)
        zero = LMKAN1DLayer(7, 4, 3, grid=grid, init="zero")
        assert torch.all(zero(x.float()) == 0)
        line = LMKAN1DLayer(7, 4, 3, grid=grid, init="random_normal").double()
        line.reset_parameters()
        # Straight lines through 0: y = A x with unit-norm rows of A.
        A = line.func_parameter[-1] / line.borders[-1]
        torch.testing.assert_close(A.norm(dim=1), torch.ones(3, dtype=F64))
        torch.testing.assert_close(line(x), A @ x, rtol=1e-10, atol=1e-8)


def test_kan_layer_is_batch_first_uniform():
    layer = KANLayer(5, 3, "random_normal", num_control_points=10, spline_width=2.0)
    assert (layer.num_grids, layer.grid, layer.batch_last) == (9, "uniform", False)
    torch.testing.assert_close(layer.borders[[0, -1]], torch.tensor([-1.0, 1.0]))
    assert layer(torch.randn(7, 5)).shape == (7, 3)
    assert layer.get_hessian_regularization().dim() == 0


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_state_dict_round_trip(kind, tmp_path):
    a, b = make_layer(kind), make_layer(kind)
    path = tmp_path / "layer.pt"
    torch.save(a.state_dict(), path)
    b.load_state_dict(torch.load(path))
    x = torch.randn(6, 9)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"func_parameter", "borders"}


def test_original_lmkan_state_dict_loads():
    """The original layer saves exactly `func_parameter` [G+1, G+1, N_out, N_in/2] and `borders`."""
    G, n_in, n_out = 10, 8, 4
    original = {"func_parameter": torch.randn(G + 1, G + 1, n_out, n_in // 2),
                "borders": lmKAN.grids.cdf_borders(G)}
    layer = LMKAN2DLayer(G, n_in, n_out, block_size_forward=1024, block_size_backward=512,
                         tile_size_forward=8, tile_size_backward=8, init_scale=0.1,
                         backward_fast_mode=False)
    layer.load_state_dict(original)
    x = torch.randn(n_in, 17)
    expected = ref.lmkan2d_forward(x.double(), original["func_parameter"].double(), original["borders"].double())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-6)


CONSTRUCTOR_ERRORS = [
    (LMKAN2DLayer, dict(num_grids=2), ValueError, ["num_grids", ">= 3", "2"]),
    (LMKAN2DLayer, dict(num_grids=8.0), TypeError, ["num_grids", "int", "float"]),
    (LMKAN2DLayer, dict(input_dim=5), ValueError, ["input_dim", "even", "5"]),
    (LMKAN2DLayer, dict(input_dim=0), ValueError, ["input_dim", ">= 2", "0"]),
    (LMKAN2DLayer, dict(output_dim=-1), ValueError, ["output_dim", ">= 1", "-1"]),
    # sizes the ops cannot index (32-bit offsets and counts), refused before any allocation
    (LMKAN2DLayer, dict(num_grids=4000), ValueError, ["num_grids", "<= 3999", "32-bit", "4000"]),
    (LMKAN2DLayer, dict(output_dim=2 ** 31), ValueError, ["output_dim", "<= 2147483647", "2147483648"]),
    (LMKAN2DLayer, dict(input_dim=2 ** 32), ValueError, ["input_dim", "<= 4294967294", "4294967296"]),
    (LMKAN1DLayer, dict(input_dim=2 ** 31), ValueError, ["input_dim", "<= 2147483647", "2147483648"]),
    (LMKAN2DLayer, dict(tile_size_forward=5), ValueError, ["tile_size_forward", "[4, 8, 16]", "5"]),
    (LMKAN2DLayer, dict(tile_size_backward=32), ValueError, ["tile_size_backward", "32"]),
    (LMKAN2DLayer, dict(block_size_forward=100), ValueError, ["block_size_forward", "1024", "100"]),
    (LMKAN2DLayer, dict(block_size_backward=2048), ValueError, ["block_size_backward", "2048"]),
    (LMKAN1DLayer, dict(num_grids=1), ValueError, ["num_grids", "1"]),
    (LMKAN1DLayer, dict(input_dim=0), ValueError, ["input_dim", "0"]),
    (LMKAN1DLayer, dict(grid="chebyshev"), ValueError, ["grid", "'cdf'", "chebyshev"]),
    (LMKAN1DLayer, dict(init="orthogonal"), ValueError, ["init", "identity", "orthogonal"]),
    (LMKAN1DLayer, dict(init="identity", output_dim=3), ValueError, ["identity", "input_dim", "6", "3"]),
    (LMKAN1DLayer, dict(spline_width=0.0), ValueError, ["spline_width", "0.0"]),
    # strict types and finite values (each of these was accepted, or failed elsewhere)
    (LMKAN2DLayer, dict(backward_fast_mode="no"), TypeError, ["backward_fast_mode", "False", "'no'"]),
    (LMKAN2DLayer, dict(deterministic="false"), TypeError, ["deterministic", "None", "'false'"]),
    (LMKAN2DLayer, dict(batch_last="False"), TypeError, ["batch_last", "True", "'False'"]),
    (LMKAN2DLayer, dict(tile_size_forward=8.0), ValueError, ["tile_size_forward", "8.0", "float"]),
    (LMKAN2DLayer, dict(block_size_backward=True), ValueError, ["block_size_backward", "True", "bool"]),
    (LMKAN2DLayer, dict(init_scale=float("nan")), ValueError, ["init_scale", "finite", "nan"]),
    (LMKAN2DLayer, dict(init_scale=-0.1), ValueError, ["init_scale", ">= 0", "-0.1"]),
    (LMKAN2DLayer, dict(init_scale="0.1"), TypeError, ["init_scale", "real", "'0.1'"]),
    (LMKAN1DLayer, dict(spline_width=float("inf")), ValueError, ["spline_width", "finite", "inf"]),
    (LMKAN1DLayer, dict(batch_last="False"), TypeError, ["batch_last", "'False'"]),
    (LMKAN1DLayer, dict(deterministic=1), TypeError, ["deterministic", "int", "1"]),
]


@pytest.mark.parametrize("layer_cls,bad,exc,words", CONSTRUCTOR_ERRORS)
def test_constructor_errors_name_argument_expected_and_received(layer_cls, bad, exc, words):
    kw = dict(num_grids=6, input_dim=6, output_dim=5)
    kw.update(bad)
    with pytest.raises(exc) as info:
        layer_cls(**kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_input_errors(kind):
    layer = make_layer(kind)
    with pytest.raises(ValueError, match=r"input_dim=6, batch\] \(batch_last=True\), got \[5, 3\]"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"got \[6\]"):
        layer(torch.randn(6))
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        layer(torch.ones(6, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="float64.*float32"):
        layer(torch.randn(6, 3, dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor.*list"):
        layer([[1.0] * 3] * 6)
    first = make_layer(kind, batch_last=False)
    with pytest.raises(ValueError, match=r"\[\.\.\., input_dim=6\].*got \[3, 7\]"):
        first(torch.randn(3, 7))
    meta_layer = make_layer(kind).to("meta")
    with pytest.raises(ValueError, match="input is on cpu but the layer's parameters are on meta"):
        meta_layer(torch.randn(6, 3))


def test_backend_info_reports_a_reason():
    info = lmKAN.backend_info()
    text = str(info)
    assert "lmKAN backend:" in text and info.reason in text
    assert info.gpu_available == torch.cuda.is_available()
    if not info.extension_loaded:
        assert "without its CUDA extension" in info.reason or "built for" in info.reason
    if not torch.cuda.is_available():
        assert not info.cuda_backend_active


def test_modules_compose_in_a_network():
    net = nn.Sequential(LMKAN2DLayer(6, 4, 8, batch_last=False), nn.LayerNorm(8),
                        LMKAN1DLayer(5, 8, 2, batch_last=False))
    y = net(torch.randn(10, 4))
    reg = sum(m.get_hessian_regularization() for m in net if hasattr(m, "get_hessian_regularization"))
    (y.square().mean() + reg).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("grid", ["uniform", "cdf"])
def test_huge_finite_inputs_give_no_nan_1d(grid):
    """Beyond the end nodes f(x) = f_i + (x - g_i) s_i: a huge finite x overflows to +-inf at
    worst, never inf - inf = NaN as (1 - d) f_i + d f_{i+1} did (KANLayer(2, 2,
    init="identity") gave NaN at 5e37). CPU path (tests/test_cuda_1d.py has the kernels')."""
    layer = LMKAN1DLayer(300 if grid == "uniform" else 8, 2, 2, grid=grid, init="identity",
                         batch_last=False)
    x = torch.tensor([[5e37, 1.0], [-5e37, 2.0], [3e38, -3e38], [1.5, -0.25]], requires_grad=True)
    y = layer(x)
    assert not y.isnan().any()
    torch.testing.assert_close(y, x.detach(), rtol=1e-5, atol=1e-5)  # identity, to rounding
    (y.clamp(-1e30, 1e30) * torch.randn_like(y)).sum().backward()
    assert not x.grad.isnan().any() and not layer.func_parameter.grad.isnan().any()
    kd = KANLayer(2, 2, init="identity")  # the reported case
    assert not kd(torch.tensor([[5e37, -5e37]])).isnan().any()


def test_huge_finite_inputs_give_no_nan_2d():
    """2D, CPU path: a call with inputs more than FAR_CELLS cells past the end nodes is
    evaluated in float64, where the bilinear weights of any float32 input fit, and rounds to
    +-inf where it overflows (in float32, (1 - d1)(1 - d2) f00 + ... gave inf - inf = NaN)."""
    torch.manual_seed(0)
    layer = LMKAN2DLayer(8, 4, 3, batch_last=False)
    with torch.no_grad():
        layer.func_parameter.normal_()
    x = torch.tensor([[5e37, 5e37, 1.0, -2.0], [3e38, -3e38, 3e38, 3e38],
                      [5e37, 1.0, 0.5, 0.25], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    y = layer(x)
    assert not y.isnan().any() and y.isinf().any()
    expected = ref.lmkan2d_forward(x.detach().double(), layer.func_parameter.detach().double(),
                                   layer.borders.double(), batch_last=False).float()
    assert torch.equal(y.detach(), expected)
    (y.clamp(-1e30, 1e30) * torch.randn_like(y)).sum().backward()
    assert not x.grad.isnan().any() and not layer.func_parameter.grad.isnan().any()
    # inputs within FAR_CELLS stay in float32
    near = torch.tensor([[1e5, -1e5, 3.0, 0.0]])
    assert lmKAN.grids.find_cell(near, layer.borders)[1].abs().max() < ref.FAR_CELLS
    torch.testing.assert_close(layer(near).double(), ref.lmkan2d_forward(
        near.double(), layer.func_parameter.detach().double(), layer.borders.double(), False),
        rtol=1e-5, atol=1e-3)
