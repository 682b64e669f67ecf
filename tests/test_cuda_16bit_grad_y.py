"""A 16-bit grad_y in the 2D layer's backward (README "Mixed precision").

Under autocast the layer's output is 16-bit, so its gradient is too: the layer op returns y
in that dtype (its out_dtype) and lmkan2d_backward takes the 16-bit grad_y, which the sorted
backward reads as 16-bit rows (half the L2 bytes) and every other backward kernel as a
float32 copy. The values of a 16-bit grad_y are exact in float32, so the contract is the
float32 one against the float64 reference with that grad_y, and the result must not depend
on whether grad_y arrives in 16 bits or as its float32 copy.
"""
import pytest
import torch

from lmKAN import LMKAN2DLayer, _reference
from lmKAN.grids import cdf_borders

from conftest import assert_cuda_kernel, cuda_kernel_names, rel_l2, requires_gpu

TOL = 1e-5
SIXTEEN = (torch.float16, torch.bfloat16)


@pytest.fixture(params=["0", "1"], ids=["fma_runs", "tensor_core_runs"])
def runs_kernel(request, monkeypatch):
    """The sorted backward's runs kernel for a bfloat16 grad_y and table, forced either way
    (LMKAN_RUNS_MMA, read at every call): runs_kernel's FMAs or the tensor cores at tiles 8
    and 16, whatever plan_runs would choose for the shape."""
    monkeypatch.setenv("LMKAN_RUNS_MMA", request.param)
    return request.param


def _make(num_grids, n_in, n_out, batch, batch_last, dtype, scale=1.5):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * scale
    params = torch.randn(num_grids + 1, num_grids + 1, n_out, n_in // 2, device="cuda")
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    return x, params, cdf_borders(num_grids, device="cuda"), grad_y.to(dtype)


def _reference_grads(x, params, borders, grad_y, batch_last):
    xd = x.double().requires_grad_(True)
    pd = params.double().requires_grad_(True)
    y = _reference.lmkan2d_forward(xd, pd, borders.double(), batch_last)
    return torch.autograd.grad(y, (xd, pd), grad_y.double())


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("tile", (4, 8, 16))
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("deterministic,fast", [(False, True), (False, False), (True, False)],
                         ids=["fast", "normal", "deterministic"])
@pytest.mark.parametrize("num_grids,n_in,n_out,batch", [(5, 6, 7, 37), (8, 34, 256, 1000),
                                                        (26, 64, 129, 333), (12, 20, 512, 2049)])
def test_backward_op_takes_16bit_grad_y(dtype, tile, batch_last, deterministic, fast, num_grids,
                                        n_in, n_out, batch):
    """Sorted backward (16-bit rows; n_out 256 and 512 at tile 16: two tiles per walk),
    deterministic kernels and the small-layer kernels (a float32 copy): the float32 contract,
    and the float32 copy of grad_y gives the same gradients."""
    assert_cuda_kernel("lmkan2d_backward")
    x, params, borders, gy16 = _make(num_grids, n_in, n_out, batch, batch_last, dtype)
    args = (x, params, borders, batch_last, tile, 256, fast, deterministic)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
    gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
    assert gx.dtype == torch.float32 and gp.dtype == torch.float32
    rgx, rgp = _reference_grads(x, params, borders, gy16.float(), batch_last)
    for name, a, r in (("dx", gx, rgx), ("dP", gp, rgp)):
        err = rel_l2(a, r)
        assert err <= TOL, f"{name}: rel L2 {err:.3e}"
    if deterministic:  # the same kernels on the same float32 values
        assert torch.equal(gx, gx32) and torch.equal(gp, gp32)
    else:  # dP's float atomics add in any order; dx's sums are fixed per sample
        assert rel_l2(gx, gx32) <= 1e-6 and rel_l2(gp, gp32) <= 1e-6


@requires_gpu
@pytest.mark.parametrize("tile", (4, 8, 16))
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("fast", (True, False), ids=["fast", "normal"])
@pytest.mark.parametrize("num_grids,n_in,n_out,batch", [(8, 34, 256, 1000), (26, 64, 129, 333),
                                                        (12, 20, 512, 2049), (3, 4, 64, 20001),
                                                        (40, 6, 200, 3000)])
def test_bfloat16_rows_and_table(tile, batch_last, fast, num_grids, n_in, n_out, batch,
                                 runs_kernel):
    """A bfloat16 grad_y with a bfloat16 table (as under autocast), through either runs
    kernel; on tensor cores (backward_runs_mma.cu, tiles 8 and 16) with groups of 16 samples
    in one cell (long runs: G=3), across cells (short runs: G=26, 40) and past the segment's
    end (odd batches). The float32 contract against the reference on the rounded table, and
    the gradients of the float32 copy of grad_y (runs_kernel's FMAs) to float32 rounding."""
    assert_cuda_kernel("lmkan2d_backward")
    torch.manual_seed(num_grids + n_out + tile)
    x, params, borders, gy16 = _make(num_grids, n_in, n_out, batch, batch_last, torch.bfloat16)
    args = (x, params, borders, batch_last, tile, 256, fast, False, torch.bfloat16)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
    gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
    rounded = params.bfloat16().float()
    rgx, rgp = _reference_grads(x, rounded, borders, gy16.float(), batch_last)
    for name, a, r in (("dx", gx, rgx), ("dP", gp, rgp)):
        err = rel_l2(a, r)
        assert err <= TOL, f"{name}: rel L2 {err:.3e}"
    assert rel_l2(gx, gx32) <= 2e-6 and rel_l2(gp, gp32) <= 2e-6


@requires_gpu
def test_bfloat16_rows_keep_an_infinite_grad_y_in_its_cells(runs_kernel):
    """An infinite grad_y entry makes the gradients of its own sample and of its cells
    non-finite, and no others: either runs kernel (the tensor cores' groups span cells) gives
    the finiteness of the FMA runs on the float32 copy of grad_y entry for entry."""
    torch.manual_seed(3)
    x, params, borders, gy16 = _make(26, 8, 128, 3000, True, torch.bfloat16)
    gy16[5, 17] = float("inf")
    gy16[70, 2222] = -float("inf")
    args = (x, params, borders, True, 16, 256, True, False, torch.bfloat16)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
    gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
    assert not torch.isfinite(gp).all() and not torch.isfinite(gx).all()
    assert torch.equal(torch.isfinite(gx), torch.isfinite(gx32))
    assert torch.equal(torch.isfinite(gp), torch.isfinite(gp32))
    finite = torch.isfinite(gx32)
    assert rel_l2(gx[finite], gx32[finite]) <= 2e-6
    finite = torch.isfinite(gp32)
    assert rel_l2(gp[finite], gp32[finite]) <= 2e-6


@requires_gpu
def test_bfloat16_rows_and_table_with_far_inputs_and_images(runs_kernel):
    """Far inputs (corrected after the runs by far_fixup) and images [N, N_in, L] (read in
    place) through either runs kernel."""
    torch.manual_seed(4)
    x, params, borders, gy16 = _make(8, 20, 64, 515, True, torch.bfloat16, scale=40.0)
    args = (x, params, borders, True, 8, 256, True, False, torch.bfloat16)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
    rgx, rgp = _reference_grads(x, params.bfloat16().float(), borders, gy16.float(), True)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL
    n, n_in, n_out, length, g = 3, 10, 256, 77, 9
    x = torch.randn(n, n_in, length, device="cuda")
    params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    borders = cdf_borders(g, device="cuda")
    gy16 = torch.randn(n, n_out, length, device="cuda").bfloat16()
    for tile in (8, 16):
        args = (x, params, borders, True, tile, 256, True, False, torch.bfloat16)
        gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
        gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
        assert gx.shape == x.shape
        assert rel_l2(gx, gx32) <= 2e-6 and rel_l2(gp, gp32) <= 2e-6


@requires_gpu
@pytest.mark.parametrize("tile,num_grids,batch,fast,kernels",
                         [(16, 8, 1 << 16, True, {"mma"}), (16, 26, 1 << 16, True, {"fma"}),
                          (8, 26, 1 << 16, True, {"mma"}), (8, 26, 4096, True, {"fma"}),
                          (4, 8, 1 << 16, True, {"fma"}),
                          # normal mode's chunks of 8 MiB: 32768 bfloat16 rows of 128 outputs
                          (16, 8, 32768 + 1024, False, {"mma", "fma"}),
                          (16, 8, 2 * 32768, False, {"mma"})])
def test_plan_runs_chooses_by_samples_per_cell(monkeypatch, tile, num_grids, batch, fast,
                                               kernels):
    """Without the knob, plan_runs (plan.h) takes the tensor cores at tile 8 from 32 samples
    per cell and at tile 16 from 160, never at tile 4; it decides per chunk of the batch, so a
    short last chunk takes the FMAs. The kernel names show which ran, and the gradients agree
    with the float32 copy of grad_y."""
    monkeypatch.delenv("LMKAN_RUNS_MMA", raising=False)
    torch.manual_seed(5)
    x, params, borders, gy16 = _make(num_grids, 16, 128, batch, True, torch.bfloat16)
    args = (x, params, borders, True, tile, 256, fast, False, torch.bfloat16)
    out = {}
    names = cuda_kernel_names(
        lambda: out.update(zip(("gx", "gp"), torch.ops.lmkan.lmkan2d_backward(gy16, *args))))
    assert any("runs_mma_kernel" in n for n in names) == ("mma" in kernels), names
    assert any("runs_kernel" in n and "mma" not in n for n in names) == ("fma" in kernels), names
    gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
    assert rel_l2(out["gx"], gx32) <= 2e-6 and rel_l2(out["gp"], gp32) <= 2e-6


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_far_inputs_with_16bit_grad_y(dtype):
    """The far-input fixup reads the 16-bit grad_y too."""
    x, params, borders, gy16 = _make(8, 20, 64, 515, True, dtype, scale=40.0)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, x, params, borders, True, 8, 256, True)
    rgx, rgp = _reference_grads(x, params, borders, gy16.float(), True)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_images_with_16bit_grad_y(dtype):
    """Images [N, N_in, L] (the sorted backward reads them in place): a 16-bit grad_y
    [N, N_out, L] gives the gradients of its float32 copy."""
    n, n_in, n_out, length, g = 3, 10, 256, 77, 9
    x = torch.randn(n, n_in, length, device="cuda")
    params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    borders = cdf_borders(g, device="cuda")
    gy16 = torch.randn(n, n_out, length, device="cuda").to(dtype)
    for tile in (8, 16):
        args = (x, params, borders, True, tile, 256, True)
        gx, gp = torch.ops.lmkan.lmkan2d_backward(gy16, *args)
        gx32, gp32 = torch.ops.lmkan.lmkan2d_backward(gy16.float(), *args)
        assert gx.shape == x.shape
        assert rel_l2(gx, gx32) <= 1e-6 and rel_l2(gp, gp32) <= 1e-6


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("batch_last", (True, False), ids=["batch_last", "batch_first"])
def test_layer_under_autocast(dtype, batch_last):
    """Under autocast the op's output is 16-bit (out_dtype), so is the gradient the backward
    gets; the gradients keep the contract against the reference on the rounded table."""
    torch.manual_seed(0)
    layer = LMKAN2DLayer(8, 32, 256, batch_last=batch_last, tile_size_backward=16).cuda()
    x = torch.randn((32, 3000) if batch_last else (3000, 32), device="cuda", requires_grad=True)
    gy16 = torch.randn((256, 3000) if batch_last else (3000, 256), device="cuda").to(dtype)
    for _ in range(2):  # the general path, then the stored call plan
        x.grad, layer.func_parameter.grad = None, None
        with torch.autocast("cuda", dtype=dtype):
            y = layer(x)
        assert y.dtype == dtype
        y.backward(gy16)
        params = layer.func_parameter.detach()
        rounded = params.to(dtype).float()
        rgx, rgp = _reference_grads(x.detach(), rounded, layer.borders, gy16.float(), batch_last)
        assert rel_l2(x.grad, rgx) <= TOL and rel_l2(layer.func_parameter.grad, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_second_derivatives_with_16bit_output(dtype):
    """A force-style loss through a 16-bit y (create_graph): the double backward takes the
    16-bit grad_y (its slope ops read a float32 copy) and returns d/d grad_y in grad_y's
    dtype; everything equals the float32 y's with the same (exact) grad_y (deterministic
    kernels: bitwise), d/d grad_y rounded once."""
    torch.manual_seed(1)
    g, n_in, n_out, batch = 7, 12, 40, 257
    x0 = torch.randn(n_in, batch, device="cuda")
    params0 = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda") * 0.1
    borders = cdf_borders(g, device="cuda")
    gy0 = torch.randn(n_out, batch, device="cuda").to(dtype)
    results = []
    for out_dtype in (None, dtype):
        x = x0.clone().requires_grad_(True)
        params = params0.clone().requires_grad_(True)
        y = torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 256, False, True, None,
                                    out_dtype)
        assert y.dtype == (out_dtype or torch.float32)
        gy = gy0.to(y.dtype).requires_grad_(True)
        (forces,) = torch.autograd.grad(y, x, gy, create_graph=True)
        forces.square().sum().backward()
        assert gy.grad.dtype == y.dtype
        results.append((forces.detach(), params.grad, x.grad, gy.grad))
    (f32, p32, x32, g32), (f16, p16, x16, g16) = results
    assert torch.equal(f16, f32) and torch.equal(p16, p32) and torch.equal(x16, x32)
    assert torch.equal(g16, g32.to(dtype))


@requires_gpu
def test_out_dtype_must_be_a_float_dtype():
    x, params, borders, _ = _make(5, 6, 7, 9, True, torch.float32)
    y = torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 256, False, False, None,
                                torch.float32)
    assert y.dtype == torch.float32
    with pytest.raises(TypeError, match="out_dtype must be None, float32, float16 or bfloat16"):
        torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 256, False, False, None,
                                torch.float64)
