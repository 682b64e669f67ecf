"""float16 / bfloat16 layers on the pure-PyTorch path (issue 17, item 4): cells and weights in
float32, grid nodes that a conversion does not round, results against the float64 reference
evaluated on the same 16-bit inputs and table."""
import warnings

import pytest
import torch

from lmKAN import LMKAN1DLayer, LMKAN2DLayer, _reference
from lmKAN.grids import find_cell
from conftest import rel_l2

DTYPES = (torch.bfloat16, torch.float16)
# The outputs are rounded to the layer's dtype: relative L2 of that rounding, with margin.
OUTPUT_TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3}


def _reference_of(layer, x):
    """The float64 reference on exactly what the 16-bit layer holds (its table as stored,
    its nodes, the input as given)."""
    p, b, xd = layer.func_parameter.double(), layer.borders.double(), x.double()
    if isinstance(layer, LMKAN2DLayer):
        return _reference.lmkan2d_forward(xd, p, b, layer.batch_last)
    return _reference.lmkan1d_forward(xd, p, b, layer.grid == "uniform", layer.batch_last)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [
    lambda: LMKAN1DLayer(300, 2, 3, grid="uniform"),  # cell index past bfloat16's 256
    lambda: LMKAN1DLayer(2100, 2, 3, grid="uniform"),  # past float16's 2048
    lambda: LMKAN1DLayer(300, 4, 3),
    lambda: LMKAN2DLayer(300, 2, 3),  # index 301 raised IndexError with 16-bit cells
    lambda: LMKAN2DLayer(40, 6, 5, batch_last=False),
], ids=["1d-uniform-300", "1d-uniform-2100", "1d-cdf-300", "2d-300", "2d-40-batch-first"])
def test_16bit_layer_matches_the_reference_of_its_own_values(make, dtype):
    torch.manual_seed(0)
    layer = make().to(dtype)
    n_in = layer.input_dim
    x = (torch.rand((n_in, 2000) if layer.batch_last else (2000, n_in)) * 4 - 2).to(dtype)
    x[..., :4] = torch.tensor([1.0, -1.0, 1.99, -1.99], dtype=dtype)  # cells near the grid's ends
    y = layer(x)
    assert y.dtype == dtype
    assert rel_l2(y.double(), _reference_of(layer, x)) <= OUTPUT_TOL[dtype]


@pytest.mark.parametrize("convert", [lambda m: m.bfloat16(), lambda m: m.half(),
                                     lambda m: m.to(torch.bfloat16), lambda m: m.to(dtype=torch.float16)])
@pytest.mark.parametrize("make", [lambda: LMKAN2DLayer(300, 2, 1),
                                  lambda: LMKAN1DLayer(300, 2, 1, grid="uniform")])
def test_conversion_keeps_the_nodes_in_float32(make, convert):
    layer = make()
    nodes = layer.borders.clone()
    convert(layer)
    assert layer.func_parameter.dtype in (torch.bfloat16, torch.float16)
    assert layer.borders.dtype == torch.float32
    assert torch.equal(layer.borders, nodes)  # not rounded on the way
    layer.float()
    assert torch.equal(layer.borders, nodes)
    assert layer.double().borders.dtype == torch.float64


@pytest.mark.parametrize("make", [lambda: LMKAN2DLayer(4, 4, 3), lambda: LMKAN1DLayer(4, 4, 3)])
def test_float16_conversion_warns_of_values_past_its_range(make):
    """Table values past 65504 become infinite in float16: the conversion says how many
    (with the largest magnitude); bfloat16 keeps them finite and stays silent, as does a
    table within range."""
    layer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().half()  # within range (the initialisation is small)
        big = make()
        with torch.no_grad():
            big.func_parameter.view(-1)[[0, 5]] = torch.tensor([1e5, -7e4])
        big.to(torch.bfloat16)
        assert torch.isfinite(big.func_parameter).all()
    with torch.no_grad():
        layer.func_parameter.view(-1)[[0, 5]] = torch.tensor([1e5, -7e4])
    with pytest.warns(UserWarning, match=r"2 of \d+ table values exceed float16's largest finite "
                                         r"value 65504 \(largest magnitude 100000\)") as record:
        layer.half()
    assert record[0].filename == __file__  # points at the .half() call
    assert torch.isinf(layer.func_parameter).sum() == 2
    with pytest.warns(UserWarning, match=r"2 of \d+ table values exceed"):
        big.half()  # bfloat16 to float16: the same values overflow


def test_find_cell_computes_in_float32_for_16_bit_values():
    borders = torch.linspace(-2, 2, 301)
    v = torch.linspace(-2.5, 2.5, 997).to(torch.bfloat16)
    index, d = find_cell(v, borders, uniform=True)
    ref_index, ref_d = find_cell(v.float(), borders, uniform=True)
    assert d.dtype == torch.float32
    assert torch.equal(index, ref_index) and torch.equal(d, ref_d)
    assert int(index.max()) == 299


@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_gradients_come_back_in_the_layers_dtype(dtype):
    torch.manual_seed(1)
    layer = LMKAN2DLayer(12, 4, 3).to(dtype)
    x = torch.randn(4, 64).to(dtype).requires_grad_(True)
    grad_y = torch.randn(3, 64).to(dtype)
    layer(x).backward(grad_y)
    assert x.grad.dtype == dtype and layer.func_parameter.grad.dtype == dtype
    xd = x.detach().double().requires_grad_(True)
    pd = layer.func_parameter.detach().double().requires_grad_(True)
    yd = _reference.lmkan2d_forward(xd, pd, layer.borders.double())
    gx, gp = torch.autograd.grad(yd, (xd, pd), grad_y.double())
    assert rel_l2(layer.func_parameter.grad.double(), gp) <= OUTPUT_TOL[dtype]
    assert rel_l2(x.grad.double(), gx) <= OUTPUT_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_regularisers_of_16bit_tables_are_computed_in_float32(dtype):
    torch.manual_seed(2)
    for layer in (LMKAN2DLayer(30, 4, 3), LMKAN1DLayer(30, 4, 3)):
        layer.to(dtype)
        r = layer.get_hessian_regularization()
        assert r.dtype == torch.float32 and torch.isfinite(r)
        as_float = type(layer).get_hessian_regularization(
            _with_table(layer, layer.func_parameter.detach().float()))
        torch.testing.assert_close(r, as_float, rtol=1e-6, atol=0)
        r.backward()
        assert layer.func_parameter.grad.dtype == dtype


def _with_table(layer, table):
    """A float32 copy of `layer` holding `table` (the 16-bit values, exactly)."""
    import copy
    twin = copy.deepcopy(layer).float()
    with torch.no_grad():
        twin.func_parameter.copy_(table)
    return twin
