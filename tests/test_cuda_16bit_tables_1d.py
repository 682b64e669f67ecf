"""16-bit tables of the 1D layer on CUDA (issue 17; README "Mixed precision").

The same contract as the 2D layer's (test_cuda_16bit_tables.py): against the float64
reference evaluated with the table rounded to the 16-bit dtype, y, grad_x and grad_params
keep the float32 contract (relative L2 <= 1e-5), in both layouts, both grids and both
backward modes; 16-bit parameters run the kernels and get their gradient in their own dtype;
autocast and the layers' `table_dtype` pick the table dtype as for the 2D layer.
"""
import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, _reference
from lmKAN.grids import cdf_borders, uniform_borders

from conftest import assert_cuda_kernel, check_table_dtype_policy, rel_l2, requires_gpu
from test_cuda_1d import _assert_dx_close

pytestmark = requires_gpu

TOL = 1e-5
SIXTEEN = (torch.float16, torch.bfloat16)


def _make(num_grids, n_in, n_out, batch, uniform, batch_last, params_dtype=torch.float32,
          scale=1.5):
    borders = (uniform_borders(num_grids, 4.0) if uniform else cdf_borders(num_grids)).cuda()
    params = torch.randn(num_grids + 1, n_out, n_in, device="cuda").to(params_dtype)
    x = scale * torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda")
    return x, params, borders


def _check(num_grids, n_in, n_out, batch, uniform, batch_last, table, deterministic=False,
           params_dtype=torch.float32, scale=1.5):
    assert_cuda_kernel("lmkan1d_forward")
    x, params, borders = _make(num_grids, n_in, n_out, batch, uniform, batch_last, params_dtype,
                               scale)
    table_arg = None if table == params_dtype else table
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last, table_arg)
    grad_y = torch.randn_like(y)
    gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, uniform, batch_last,
                                              deterministic, table_arg)
    assert y.dtype == torch.float32 and gx.dtype == torch.float32 and gp.dtype == params.dtype
    # the float64 reference on the rounded table, with d rounded / d params = 1 exactly
    rounded = params.to(table).double()
    xd = x.double().requires_grad_(True)
    pd = rounded.clone().requires_grad_(True)
    ry = _reference.lmkan1d_forward(xd, pd, borders.double(), uniform, batch_last)
    rgx, rgp = torch.autograd.grad(ry, (xd, pd), grad_y.double())
    gp_tol = TOL if params_dtype == torch.float32 else 2 * torch.finfo(params_dtype).eps
    context = f"G={num_grids}, table={table}, uniform={uniform}, batch_last={batch_last}"
    assert rel_l2(y, ry) <= TOL, f"y: {context}"
    _assert_dx_close(gx, rgx, x, rounded.float(), borders, uniform, batch_last, grad_y)
    assert rel_l2(gp, rgp) <= gp_tol, f"dC: {context}"
    return x, params, borders, y


@pytest.mark.parametrize("table", SIXTEEN, ids=str)
@pytest.mark.parametrize("uniform", (False, True), ids=["cdf", "uniform"])
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("num_grids,n_in,n_out,batch", [(31, 64, 96, 1000), (8, 7, 5, 129),
                                                        (3, 1, 1, 1), (63, 40, 258, 777),
                                                        (100, 9, 131, 260)])
def test_matches_rounded_reference(table, uniform, batch_last, num_grids, n_in, n_out, batch):
    """Shapes: partial output tiles and stages, the largest G (fewest inputs per stage; the
    16-bit stage holds twice the inputs of the float32 one), both dC kernels."""
    _check(num_grids, n_in, n_out, batch, uniform, batch_last, table)


@pytest.mark.parametrize("table", SIXTEEN, ids=str)
def test_deterministic_backward_and_far_inputs(table):
    """Deterministic dC is bitwise stable with a 16-bit table; inputs far outside the grid
    (linear extrapolation) and past 2^20 cells (the forward's separate far pass reads the
    16-bit table too) match the reference."""
    x, params, borders, y = _check(31, 20, 40, 3000, True, False, table, deterministic=True,
                                   scale=40.0)
    grad_y = torch.randn_like(y)
    runs = [torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, False, True, table)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    x[5, 3], x[17, 0] = 3e38, -1e30  # far: single inputs of two samples
    y = torch.ops.lmkan.lmkan1d_forward(x, params * 1e-3, borders, True, False, table)
    ry = _reference.lmkan1d_forward(x.double(), (params * 1e-3).to(table).double(),
                                    borders.double(), True, False)
    assert not y.isnan().any()
    big = ry.abs() > 3.0e38
    assert (y[big].abs() >= 3.0e38).all()
    assert rel_l2(y[~big], ry[~big]) <= TOL


@pytest.mark.parametrize("params_dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
def test_sixteen_bit_parameters(params_dtype, batch_last):
    """16-bit parameters run the kernels with their own table (or a float32 one on request);
    grad_params comes back in their dtype."""
    _check(15, 18, 33, 401, True, batch_last, params_dtype, params_dtype=params_dtype)
    _check(15, 18, 33, 401, False, batch_last, torch.float32, params_dtype=params_dtype)


@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_layer_policy(dtype):
    """Autocast rounds the table to autocast's dtype; table_dtype=float32 keeps float32 under
    autocast; table_dtype=16-bit rounds outside it; .to(dtype) layers use their own."""
    torch.manual_seed(0)
    layer = KANLayer(16, 24).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(0.01 * torch.randn_like(layer.func_parameter))
    x = torch.randn(300, 16, device="cuda")
    params, borders = layer.func_parameter.detach(), layer.borders

    def reference(table):
        return _reference.lmkan1d_forward(x.double(), params.to(table).double(), borders.double(),
                                          True, False)

    assert rel_l2(reference(dtype), reference(torch.float32)) > 10 * TOL  # the cases differ
    y_inference = check_table_dtype_policy(layer, x, reference, dtype, TOL)
    y_inference.sum().backward()  # the plan of this call runs the 16-bit table too
    assert rel_l2(layer(x), reference(dtype)) <= TOL
    half = LMKAN1DLayer(10, 16, 24, batch_last=False).cuda().to(dtype)
    y_half = half(x.to(dtype))
    assert y_half.dtype == dtype
    ref = _reference.lmkan1d_forward(x.to(dtype).double(), half.func_parameter.double(),
                                     half.borders.double(), False, False)
    assert rel_l2(y_half, ref) <= 2 * torch.finfo(dtype).eps
    y_half.float().square().sum().backward()
    assert half.func_parameter.grad.dtype == dtype
    assert torch.isfinite(half.func_parameter.grad).all()


@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_table_error_against_the_exact_table(dtype):
    """The error a 16-bit table costs against the exact float32 table, at the bench shape: the
    rounding's, as the CPU reference gives it for this seed and shape (float16 5.0e-4,
    bfloat16 4.0e-3; README "Mixed precision"), within 10%."""
    torch.manual_seed(1)
    layer = KANLayer(256, 256).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(0.05 * torch.randn_like(layer.func_parameter))
    x = 1.5 * torch.randn(4096, 256, device="cuda")
    exact = layer(x)
    cpu = KANLayer(256, 256)  # the same rounding on the CPU path
    cpu.load_state_dict(layer.state_dict())
    with torch.no_grad():
        exact_cpu = cpu(x.cpu())
        cpu.table_dtype = dtype
        expected = rel_l2(cpu(x.cpu()), exact_cpu)
    layer.table_dtype = dtype
    err = rel_l2(layer(x), exact)
    assert 0.9 * expected <= err <= 1.1 * expected
