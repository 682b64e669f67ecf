"""Mixed precision: float16/bfloat16 inputs and autocast regions (policy: lmKAN.ops._run_layer,
for both layers).

Cells, weights and sums are float32. A layer's table is rounded to autocast's dtype inside
autocast (table_dtype_of_call; the layers' `table_dtype` argument overrides). Output dtype:
outside autocast the input's dtype; inside autocast autocast's dtype, as nn.Linear gives.
Gradients reach the float32 parameters in float32.
"""
import pytest
import torch
from torch import nn

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer, _reference

from conftest import assert_cuda_kernel, requires_gpu

LOW = [torch.bfloat16, torch.float16]


def _layers(device, batch_last):
    return [LMKAN2DLayer(6, 8, 5, batch_last=batch_last).to(device),
            LMKAN1DLayer(6, 8, 5, batch_last=batch_last).to(device)]


def _input(device, batch_last, batch=33):
    return 1.5 * torch.randn((8, batch) if batch_last else (batch, 8), device=device)


def rounding_tolerance(device, dtype):
    """Exact on the CPU (the same float32 computation, rounded once). On CUDA a kernel may sum
    in another order between calls (atomics), so allow one 16-bit rounding step."""
    if device == "cpu":
        return {"rtol": 0, "atol": 0}
    return {"rtol": torch.finfo(dtype).eps, "atol": 1e-5}


def check_low_precision_input(device, dtype, batch_last):
    """A 16-bit input: output in its dtype, equal to the float32 result rounded once."""
    for layer in _layers(device, batch_last):
        x = _input(device, batch_last).to(dtype).requires_grad_(True)
        y = layer(x)
        assert y.dtype == dtype and layer.func_parameter.dtype == torch.float32
        expected = layer(x.detach().float())
        torch.testing.assert_close(y, expected.to(dtype), **rounding_tolerance(device, dtype))
        y.float().square().sum().backward()
        assert x.grad.dtype == dtype
        assert layer.func_parameter.grad.dtype == torch.float32
        assert torch.isfinite(layer.func_parameter.grad).all()


def check_autocast(device, dtype, batch_last):
    """Inside autocast: output in autocast's dtype, computed in float32 from the table rounded
    to autocast's dtype (the result of table_dtype=dtype outside autocast), rounded once,
    like nn.Linear's output dtype."""
    for layer in _layers(device, batch_last):
        x = _input(device, batch_last)
        layer.table_dtype = dtype
        expected = layer(x)
        layer.table_dtype = None
        with torch.autocast(device, dtype=dtype):
            y = layer(x)
            assert y.dtype == nn.Linear(2, 2).to(device)(torch.randn(3, 2, device=device)).dtype
        assert y.dtype == dtype
        torch.testing.assert_close(y, expected.to(dtype), **rounding_tolerance(device, dtype))


def check_autocast_training(device, dtype):
    """A mixed model trained a step under autocast: gradients reach every float32 param."""
    model = nn.Sequential(nn.Linear(6, 8), LMKAN2DLayer(6, 8, 6, batch_last=False),
                          LMKAN1DLayer(6, 6, 3, batch_last=False), nn.Linear(3, 2)).to(device)
    x = torch.randn(40, 6, device=device)
    with torch.autocast(device, dtype=dtype):
        y = model(x)
    assert y.dtype == dtype
    y.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_low_precision_input_cpu(dtype, batch_last):
    check_low_precision_input("cpu", dtype, batch_last)


@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_autocast_bfloat16_cpu(batch_last):
    check_autocast("cpu", torch.bfloat16, batch_last)


def test_autocast_training_cpu():
    check_autocast_training("cpu", torch.bfloat16)


def test_kanlayer_low_precision_cpu():
    layer = KANLayer(4, 3)
    x = torch.randn(2, 7, 4, dtype=torch.bfloat16)
    y = layer(x)
    assert y.shape == (2, 7, 3) and y.dtype == torch.bfloat16


def test_float64_layer_untouched_by_autocast():
    layer = LMKAN2DLayer(5, 4, 3, batch_last=False).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.float64


def test_other_dtype_mismatches_still_rejected():
    with pytest.raises(TypeError, match="dtype"):
        LMKAN2DLayer(5, 4, 3, batch_last=False)(torch.randn(6, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):  # upcasting applies to float32 tables only
        LMKAN1DLayer(5, 4, 3, batch_last=False).double()(torch.randn(6, 4, dtype=torch.bfloat16))


def test_autocast_compiled_cpu():
    torch._dynamo.reset()
    layer = LMKAN2DLayer(6, 8, 5, batch_last=False)
    x = _input("cpu", False)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(x)
    assert y.dtype == torch.bfloat16
    expected = LMKAN2DLayer(6, 8, 5, batch_last=False, table_dtype=torch.bfloat16)
    expected.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, expected(x).to(torch.bfloat16), rtol=0, atol=0)


def _reference_of(layer, x, params):
    if isinstance(layer, LMKAN2DLayer):
        return _reference.lmkan2d_forward(x, params, layer.borders, False)
    return _reference.lmkan1d_forward(x, params, layer.borders, layer.grid == "uniform", False)


@pytest.mark.parametrize("table", LOW, ids=str)
@pytest.mark.parametrize("make", [lambda **kw: LMKAN2DLayer(7, 10, 6, batch_last=False, **kw),
                                  lambda **kw: LMKAN1DLayer(7, 10, 6, batch_last=False, **kw),
                                  lambda **kw: KANLayer(10, 6, **kw)], ids=["2d", "1d", "kan"])
def test_table_dtype_rounds_the_table_cpu(table, make):
    """table_dtype outside autocast: the float32 computation on the table rounded to `table`;
    table_dtype=float32 under autocast: the float32 table."""
    torch.manual_seed(0)
    layer = make(table_dtype=table)
    with torch.no_grad():
        layer.func_parameter.add_(0.01 * torch.randn_like(layer.func_parameter))
    assert f"table_dtype={table}" in repr(layer)
    x = torch.randn(50, 10)
    rounded = layer.func_parameter.detach().to(table).float()
    expected = _reference_of(layer, x, rounded)
    assert not torch.equal(expected, _reference_of(layer, x, layer.func_parameter.detach()))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.table_dtype = torch.float32
    with torch.autocast("cpu", dtype=table):
        y = layer(x)
    exact = _reference_of(layer, x, layer.func_parameter.detach())
    torch.testing.assert_close(y, exact.to(table), rtol=0, atol=0)
    # gradients through the rounding reach the float32 parameters unrounded: grad_params
    # does not depend on the table, so it equals the float32 table's exactly
    layer.table_dtype = table
    layer(x).sum().backward()
    rounded_grad = layer.func_parameter.grad
    layer.func_parameter.grad = None
    layer.table_dtype = None
    layer(x).sum().backward()
    assert rounded_grad.dtype == torch.float32
    torch.testing.assert_close(rounded_grad, layer.func_parameter.grad, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.float64, torch.int32, "bfloat16", 16])
def test_table_dtype_checked(bad):
    for make in (LMKAN2DLayer, LMKAN1DLayer):
        with pytest.raises(TypeError, match="table_dtype must be None, torch.float32"):
            make(5, 4, 3, table_dtype=bad)
    with pytest.raises(TypeError, match="table_dtype must be None, torch.float32"):
        KANLayer(4, 3, table_dtype=bad)


# --- CUDA (the kernels run in float32 under every 16-bit case) ---------------------------

@requires_gpu
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_low_precision_input_cuda(dtype, batch_last):
    assert_cuda_kernel("lmkan2d_forward")
    check_low_precision_input("cuda", dtype, batch_last)


@requires_gpu
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_autocast_cuda(dtype, batch_last):
    check_autocast("cuda", dtype, batch_last)


@requires_gpu
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_autocast_training_cuda(dtype):
    check_autocast_training("cuda", dtype)


def test_meta_device_input():
    """Devices without autocast support (meta: shape-only runs) skip the autocast query."""
    layer = LMKAN2DLayer(4, 4, 3, batch_last=False).to("meta")
    assert layer(torch.randn(5, 4, device="meta")).shape == (5, 3)
