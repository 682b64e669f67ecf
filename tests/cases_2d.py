"""LMKAN2DLayer's CUDA test cases: inputs, the float64 reference and the kernels' results
compared with it (tests/test_cuda_2d*.py)."""
import torch

from lmKAN import _reference
from lmKAN.grids import cdf_borders

from conftest import rel_l2

TILES = (4, 8, 16)
TOL = 1e-5


def make_case(num_grids, n_in, n_out, batch, batch_last, device="cuda", scale=1.5):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device=device) * scale
    params = torch.randn(num_grids + 1, num_grids + 1, n_out, n_in // 2, device=device)
    borders = cdf_borders(num_grids, device=device)
    return x, params, borders


def reference_all(x, params, borders, grad_y, batch_last):
    xd = x.double().requires_grad_(True)
    pd = params.double().requires_grad_(True)
    y = _reference.lmkan2d_forward(xd, pd, borders.double(), batch_last)
    gx, gp = torch.autograd.grad(y, (xd, pd), grad_y.double())
    return y.detach(), gx, gp


def run_kernels(x, params, borders, grad_y, batch_last, tile, block, fast, bwd_block=None,
             deterministic=False):
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block)
    gx, gp = run_backward(grad_y, x, params, borders, batch_last, tile, bwd_block or block, fast,
                       deterministic)
    return y, gx, gp


def run_backward(grad_y, x, params, borders, batch_last, tile, block, fast, deterministic=False):
    return torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, tile, block,
                                            fast, deterministic)


def check_case(num_grids, n_in, n_out, batch, batch_last, tile, fast, block=256, scale=1.5,
           deterministic=False, forward=True):
    """Kernels against the float64 reference; forward=False checks the backward op alone."""
    x, params, borders = make_case(num_grids, n_in, n_out, batch, batch_last, scale=scale)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    if forward:
        y, gx, gp = run_kernels(x, params, borders, grad_y, batch_last, tile, block, fast,
                             deterministic=deterministic)
    else:
        y = None
        gx, gp = run_backward(grad_y, x, params, borders, batch_last, tile, block, fast,
                              deterministic)
    ry, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    assert gx.shape == x.shape and gp.shape == params.shape
    if batch == 0:
        assert gp.abs().sum().item() == 0
        return
    results = (("dx", gx, rgx), ("dP", gp, rgp)) + ((("y", y, ry),) if forward else ())
    for name, a, r in results:
        assert a.shape == r.shape
        err = rel_l2(a, r)
        assert err <= TOL, (f"{name}: rel L2 {err:.3e} (G={num_grids}, tile={tile}, fast={fast}, "
                            f"deterministic={deterministic})")
