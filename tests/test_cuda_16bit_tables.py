"""16-bit tables of the 2D layer on CUDA (issue 17; README "Mixed precision").

The contract: against the float64 reference evaluated with the table rounded to the 16-bit
dtype, the kernels keep the float32 contract (relative L2 <= 1e-5 for y, grad_x and
grad_params) in every layout, tile size and backward mode; 16-bit parameters (`.half()`,
`.to(torch.bfloat16)`) run the kernels and get their gradient in their own dtype; autocast
and the layer's `table_dtype` pick the table dtype as documented.
"""
import warnings

import pytest
import torch

from lmKAN import LMKAN2DLayer, _reference, max_num_grids, ops
from lmKAN.grids import cdf_borders

from conftest import assert_cuda_kernel, check_table_dtype_policy, rel_l2, requires_gpu

TOL = 1e-5
SIXTEEN = (torch.float16, torch.bfloat16)


def _make(num_grids, n_in, n_out, batch, batch_last, scale=1.5, params_dtype=torch.float32):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * scale
    params = torch.randn(num_grids + 1, num_grids + 1, n_out, n_in // 2, device="cuda")
    return x, params.to(params_dtype), cdf_borders(num_grids, device="cuda")


def _reference_rounded(x, params, borders, grad_y, batch_last, table):
    """y, grad_x, grad_params of the float64 reference with the table rounded to `table`."""
    xd = x.double().requires_grad_(True)
    pd = params.double().requires_grad_(True)
    # the rounded values with d rounded / d pd = 1 exactly (the backward of a cast would
    # round the gradient to the 16-bit dtype, or overflow float16)
    rounded = pd + (pd.detach().to(table).double() - pd.detach())
    y = _reference.lmkan2d_forward(xd, rounded, borders.double(), batch_last)
    gx, gp = torch.autograd.grad(y, (xd, pd), grad_y.double())
    return y.detach(), gx, gp


def _check(num_grids, n_in, n_out, batch, batch_last, tile, table, block=256, fast=False,
           deterministic=False, scale=1.5, params_dtype=torch.float32):
    x, params, borders = _make(num_grids, n_in, n_out, batch, batch_last, scale, params_dtype)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    table_arg = None if table == params_dtype else table
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block, table_arg)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, tile, block,
                                              fast, deterministic, table_arg)
    assert y.dtype == torch.float32 and gx.dtype == torch.float32 and gp.dtype == params.dtype
    ry, rgx, rgp = _reference_rounded(x, params, borders, grad_y, batch_last, table)
    # a 16-bit gradient is the float32 one rounded once: its own rounding on top of 1e-5
    gp_tol = TOL if params_dtype == torch.float32 else 2 * torch.finfo(params_dtype).eps
    for name, a, r, tol in (("y", y, ry, TOL), ("dx", gx, rgx, TOL), ("dP", gp, rgp, gp_tol)):
        err = rel_l2(a, r)
        assert err <= tol, (f"{name}: rel L2 {err:.3e} (G={num_grids}, tile={tile}, table={table}, "
                            f"batch_last={batch_last}, deterministic={deterministic})")
    return y, ry


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
@pytest.mark.parametrize("tile", (4, 8, 16))
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("num_grids,n_in,n_out,batch", [(5, 6, 7, 37), (16, 34, 70, 1000),
                                                        (26, 64, 129, 333), (8, 2, 1, 1)])
def test_matches_rounded_reference(table, tile, batch_last, num_grids, n_in, n_out, batch):
    assert_cuda_kernel("lmkan2d_forward")
    _check(num_grids, n_in, n_out, batch, batch_last, tile, table)


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
@pytest.mark.parametrize("block", (32, 64, 512, 1024))
def test_block_sizes_and_buffer_ring(table, block):
    """Blocks of 1 .. 32 warps: the staged ring's depth and the samples per block vary."""
    _check(12, 40, 65, 2049, True, 8, table, block=block)


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
@pytest.mark.parametrize("deterministic,fast", [(True, False), (True, True), (False, True)])
def test_backward_modes(table, deterministic, fast):
    """grad_x reads the same rounded table in every backward kernel."""
    _check(10, 30, 140, 517, True, 8, table, fast=fast, deterministic=deterministic)
    _check(10, 30, 20, 517, False, 4, table, fast=fast, deterministic=deterministic)


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
def test_past_the_shared_memory_limit(table):
    """num_grids whose 16-bit slice does not fit in shared memory: the output-lanes kernel
    reads a float32 copy of the rounded table, so the result is the same function."""
    _check(130, 4, 40, 300, True, 16, table)


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
@pytest.mark.parametrize("tile", (4, 8, 16))
def test_forward_limit_follows_the_table_dtype(table, tile):
    """max_num_grids(..., table_dtype) reports the plan's 16-bit forward limit (half the
    staged bytes: higher than float32's); at it the forward still stages the table, one past
    it the output-lanes kernel takes over, both against the rounded reference; the backward
    modes' limits do not depend on the table dtype; the layer warns past the 16-bit limit only."""
    assert_cuda_kernel("lmkan2d_forward")
    limit32 = max_num_grids(tile, "forward", "cuda")
    limit16 = max_num_grids(tile, "forward", "cuda", table)
    assert limit16 > limit32
    assert max_num_grids(tile, "forward", "cuda", torch.float32) == limit32
    for mode in ("backward", "backward_fast", "backward_deterministic"):
        assert max_num_grids(tile, mode, "cuda", table) == max_num_grids(tile, mode, "cuda")
    for g in (limit16, limit16 + 1):
        _check(g, 4, 8 * tile + 3, 70, True, tile, table)
    for g, warns in ((limit16, False), (limit16 + 1, True)):
        # 10 outputs: layers of at most 8 have kernels of their own, with higher limits
        layer = LMKAN2DLayer(g, 4, 10, tile_size_forward=tile, table_dtype=table).cuda()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                layer(torch.randn(4, 16, device="cuda"))
        slow = [w for w in caught if "exceeds the largest num_grids" in str(w.message)]
        assert bool(slow) == warns, [str(w.message) for w in caught]
        if warns:
            assert f"{table} tables" in str(slow[0].message) and str(limit16) in str(slow[0].message)
    with pytest.raises(TypeError, match="table_dtype"):
        max_num_grids(tile, "forward", "cuda", torch.float64)


@requires_gpu
@pytest.mark.parametrize("params_dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
def test_sixteen_bit_parameters(params_dtype, batch_last):
    """16-bit parameters run the kernels with their own table; grad_params in their dtype."""
    _check(9, 18, 33, 401, batch_last, 8, params_dtype, params_dtype=params_dtype)
    _check(9, 18, 33, 401, batch_last, 8, torch.float32, params_dtype=params_dtype)


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
def test_far_outside_grid_and_nan(table):
    _check(8, 20, 12, 515, True, 8, table, scale=40.0)
    x, params, borders = _make(8, 10, 7, 67, True)
    x[3, 5] = float("nan")
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 256, table)
    ry, _, _ = _reference_rounded(x, params, borders, torch.zeros_like(y), True, table)
    assert torch.equal(y.isnan(), ry.isnan()) and y.isnan().any()
    fin = ry.isfinite()
    assert rel_l2(y[fin], ry[fin]) <= TOL


@requires_gpu
@pytest.mark.parametrize("table", SIXTEEN, ids=str)
def test_deterministic_is_bitwise_stable(table):
    x, params, borders = _make(12, 24, 70, 1500, False)
    grad_y = torch.randn(1500, 70, device="cuda")
    runs = [(torch.ops.lmkan.lmkan2d_forward(x, params, borders, False, 8, 256, table),
             *torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, False, 8, 256, False,
                                               True, table)) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_layer_policy(dtype):
    """Autocast picks autocast's dtype for the table; table_dtype=float32 keeps float32 under
    autocast; table_dtype=16-bit rounds outside it; .to(dtype) layers use their own."""
    torch.manual_seed(0)
    layer = LMKAN2DLayer(10, 16, 24, batch_last=False).cuda()
    x = torch.randn(300, 16, device="cuda")
    params, borders = layer.func_parameter.detach(), layer.borders

    def reference(table):
        return _reference.lmkan2d_forward(x.double(), params.to(table).double(), borders.double(),
                                          False)

    check_table_dtype_policy(layer, x, reference, dtype, TOL)
    layer.table_dtype = None
    half = LMKAN2DLayer(10, 16, 24, batch_last=False).cuda().to(dtype)
    y_half = half(x.to(dtype))
    assert y_half.dtype == dtype
    ref = _reference.lmkan2d_forward(x.to(dtype).double(), half.func_parameter.double(),
                                     half.borders.double(), False)
    assert rel_l2(y_half, ref) <= 2 * torch.finfo(dtype).eps
    y_half.float().square().sum().backward()
    assert half.func_parameter.grad.dtype == dtype
    assert torch.isfinite(half.func_parameter.grad).all()


@requires_gpu
def test_table_error_is_the_rounding():
    """Against the exact float32 table, a 16-bit table's error is the rounding's: of the order
    of each dtype's unit roundoff (README "Mixed precision" lists the measured values)."""
    torch.manual_seed(0)
    x, params, borders = _make(16, 128, 128, 4096, True, params_dtype=torch.float32)
    exact = _reference.lmkan2d_forward(x.double(), params.double(), borders.double())
    for table, bound in ((torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
        y = ops.lmkan2d(x, params, borders, True, 8, 256, table_dtype=table)
        err = rel_l2(y, exact)
        assert torch.finfo(table).eps / 16 < err <= bound, (table, err)
