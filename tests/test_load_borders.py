"""State dicts whose grid nodes (`borders`) are not the layer's grid are refused (issue 18,
item 1): the cells come from the grid formula and the weights from `borders`, so foreign
nodes would change every output silently."""
import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer
from lmKAN.grids import cdf_borders


def _refused(layer, state, *words):
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        layer.load_state_dict(state)
    for word in ("borders", *words):
        assert word in str(info.value), str(info.value)
    for k, v in layer.state_dict().items():  # the layer keeps its whole state
        assert torch.equal(v, before[k]), k


def test_uniform_state_dict_into_a_cdf_layer():
    uniform = LMKAN1DLayer(8, 3, 2, grid="uniform")
    _refused(LMKAN1DLayer(8, 3, 2), uniform.state_dict(), "CDF grid of num_grids=8")


def test_other_spline_width():
    _refused(KANLayer(3, 2, "random_normal", num_control_points=9, spline_width=4.0),
             KANLayer(3, 2, "random_normal", num_control_points=9, spline_width=2.0).state_dict(),
             "uniform grid of num_grids=8 on [-2, 2]")


@pytest.mark.parametrize("nodes", [
    torch.linspace(-2, 2, 9),            # a uniform grid
    cdf_borders(8).flip(0),              # reversed: discontinuous functions
    torch.zeros(9),                      # every output NaN
    torch.full((9,), float("nan")),
    cdf_borders(9),                      # one node too many
    cdf_borders(8).double() + 1e-4,      # beyond float32 rounding
], ids=["linspace", "reversed", "zeros", "nan", "length", "shifted"])
def test_foreign_nodes_into_a_2d_layer(nodes):
    layer = LMKAN2DLayer(8, 4, 3)
    state = dict(layer.state_dict(), borders=nodes, func_parameter=torch.randn(9, 9, 3, 2))
    _refused(layer, state, "CDF grid of num_grids=8")


def test_nodes_within_float32_rounding_load():
    layer = LMKAN2DLayer(10, 4, 3)
    nodes = cdf_borders(10)
    nudged = torch.nextafter(nodes, torch.full_like(nodes, 10.0))  # one ulp up: another
    table = torch.randn(11, 11, 3, 2)                             # implementation's rounding
    layer.load_state_dict({"func_parameter": table, "borders": nudged})
    assert torch.equal(layer.func_parameter.detach(), table)
    assert torch.equal(layer.borders, nudged)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_nodes_of_the_same_grid_load_as_the_exact_nodes(dtype):
    """A state dict saved after .bfloat16() by an older lmKAN holds rounded nodes."""
    layer = LMKAN1DLayer(300, 2, 1, grid="uniform")
    state = {"func_parameter": torch.randn(301, 1, 2).to(dtype),
             "borders": layer.grid_nodes().to(dtype)}
    layer.load_state_dict(state)
    assert layer.borders.dtype == torch.float32
    assert torch.equal(layer.borders, layer.grid_nodes())


def test_state_dict_of_a_converted_layer_round_trips():
    a = LMKAN2DLayer(12, 4, 3).bfloat16()
    b = LMKAN2DLayer(12, 4, 3).bfloat16()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 20).bfloat16()
    assert torch.equal(a(x), b(x))
