"""LMKAN2DLayer's kernels on inputs far outside the grid, infinite or NaN (docs/spec.md,
"Robustness"): no NaN where the reference has none, the far-input fix-up of the backward."""
import pytest
import torch

from lmKAN import _reference
from lmKAN.grids import cdf_borders
from lmKAN.lmkan2d import max_num_grids

from conftest import cuda_kernel_names, rel_l2, requires_gpu
from cases_2d import (TILES, TOL, make_case, reference_all, run_kernels, run_backward,
                      check_case)


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
def test_far_outside_grid(tile):
    check_case(8, 20, 12, 515, True, tile, False, scale=40.0)
    check_case(8, 20, 12, 515, False, tile, True, scale=40.0)


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
def test_nan_inputs(batch_last):
    x, params, borders = make_case(8, 10, 7, 67, batch_last)
    xt = x if batch_last else x.t()
    xt[3, 5] = float("nan")   # feature 3 (pair 1) of sample 5
    xt[0, 9] = float("inf")
    xt[1, 9] = -float("inf")
    grad_y = torch.randn((7, 67) if batch_last else (67, 7), device="cuda")
    y, gx, gp = run_kernels(x, params, borders, grad_y, batch_last, 8, 64, False)
    ry, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    # y: NaN exactly where the reference has NaN (sample 5 via the NaN, sample 9 via inf).
    assert torch.equal(y.isnan(), ry.isnan()) and torch.equal(y.isfinite(), ry.isfinite())
    assert y.isnan().any()
    fin = ry.isfinite()
    assert rel_l2(y[fin], ry[fin]) <= TOL
    # dx: sample 9 (infinite inputs) sums infinities in an order-dependent way: skip it.
    keep = torch.ones(67, dtype=torch.bool, device="cuda")
    keep[9] = False
    gxb, rgxb = (gx.t(), rgx.t()) if batch_last else (gx, rgx)
    gxb, rgxb = gxb[keep], rgxb[keep]
    assert torch.equal(gxb.isnan(), rgxb.isnan()) and gxb.isnan().any()
    fin = rgxb.isfinite()
    assert rel_l2(gxb[fin], rgxb[fin]) <= TOL
    # dP: pair 0 holds the infinite sample; pair 1 must be NaN where the reference is.
    gp1, rgp1 = gp[..., 1:], rgp[..., 1:]
    assert torch.equal(gp1.isnan(), rgp1.isnan()) and gp1.isnan().any()
    fin = rgp1.isfinite()
    assert rel_l2(gp1[fin], rgp1[fin]) <= TOL


@requires_gpu
@pytest.mark.parametrize("case", ["sample_lanes", "sample_lanes_bf16", "output_lanes",
                                  "sample_threads"])
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("tile", TILES)
def test_far_inputs_forward_without_nan(case, batch_last, tile):
    """Finite inputs far past the grid (docs/spec.md, "Robustness"): the forward kernels give
    the float64 value, +-inf where it overflows, never NaN (the float32 bilinear weights gave
    inf - inf). One far input per chosen sample, at scattered (sample, input) positions, two
    whole warps without any; every forward kernel (the output-lanes kernel serves num_grids
    past the shared-memory limit, sample_threads_*.cu layers of at most 8 outputs) and a
    16-bit table. Every tile: from tile 8 the threads of a sample share its cells (one input
    each), so a far input reaches the other thread's loop and its fix-up by a shuffle."""
    table = torch.bfloat16 if case.endswith("bf16") else None
    g = max_num_grids(tile, "forward", "cuda") + 3 if case == "output_lanes" else 8
    n_in, n_out, batch = 10, 3 if case == "sample_threads" else 37, 700
    torch.manual_seed(7)
    borders = cdf_borders(g, device="cuda")
    params = 0.05 * torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    params[:, :, 0] *= 1000.0  # output 0's far values overflow float32, the others' stay finite
    x = torch.randn(*((n_in, batch) if batch_last else (batch, n_in)), device="cuda")
    xb = x.t() if batch_last else x  # [B, N_in] view
    huge = torch.tensor([5e37, -5e37, 3e38, -3e38, 1e30, -2e7, 1e12, -1e9], device="cuda")
    far_samples = 48 + torch.randperm(batch - 48, device="cuda")[:150]
    far_inputs = torch.randint(0, n_in, (150,), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(150, device="cuda") % len(huge)]
    xb[16:48] = 0.3
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, 256, table)
    table_values = params if table is None else params.to(table)
    y_ref = _reference.lmkan2d_forward(x.double(), table_values.double(), borders.double(),
                                       batch_last)
    assert not y.isnan().any() and not y_ref.isnan().any()
    big = y_ref.abs() > 3.0e38
    assert big.any() and (~big).any()
    assert torch.equal(torch.sign(y[big]), torch.sign(y_ref[big]).float())
    assert (y[big].abs() >= 3.0e38).all()
    # Samples without a far input: the float32 contract. Elsewhere each finite value to 1e-5
    # of the larger of its own size and its output's rms over those samples (output 0's
    # terms are 1000x larger: a small sum of them carries their float32 rounding).
    yb, rb = (y.t(), y_ref.t()) if batch_last else (y, y_ref)
    far_rows = torch.zeros(batch, dtype=torch.bool, device="cuda")
    far_rows[far_samples] = True
    assert rel_l2(yb[~far_rows], rb[~far_rows]) <= TOL
    scale = rb[~far_rows].pow(2).mean(0).sqrt()
    ok = ~(rb.abs() > 3.0e38)
    rel = ((yb.double() - rb).abs() / torch.maximum(rb.abs(), scale.expand_as(rb)))[ok]
    assert rel.max().item() <= 1e-5


def _assert_far_backward(gx, gp, rgx, rgp):
    """grad_x and grad_params of a backward with far inputs against the float64 reference:
    no NaN, and the far-dominated entries (|value| > 1e3) and the others apart, each within
    the contract (both kinds must be present)."""
    for got, want in ((gx, rgx), (gp, rgp)):
        assert not got.isnan().any()
        large = want.abs() > 1e3
        assert large.any() and (~large).any()
        assert rel_l2(got[large], want[large]) <= TOL
        assert rel_l2(got[~large], want[~large]) <= TOL


@requires_gpu
@pytest.mark.parametrize("batch_last", [True, False])
def test_far_flags_from_the_cell_sort(batch_last):
    """The sorted backward's cell sort writes far_fixup.cu's flags (one byte per 256 samples
    and pair) as it classifies the inputs, so no flags kernel runs: far inputs across three
    sort chunks (18 output tiles at tile 8: rows of 1,152 floats, 1,792-sample chunks in
    normal mode) and in the ragged last flag chunk, against the float64 reference, the
    far-dominated entries (|value| > 1e3) and the others apart."""
    torch.manual_seed(9)
    batch, n_in, n_out = 5000, 6, 17 * 64 + 3
    x, params, borders = make_case(8, n_in, n_out, batch, batch_last)
    params *= 0.05
    xb = x.t() if batch_last else x
    huge = torch.tensor([2e7, -3e7, 1e9, -1e12, 5e14, -4e8], device="cuda")
    far_samples = torch.cat([torch.randperm(batch - 8, device="cuda")[:60],
                             torch.tensor([1791, 1792, batch - 1], device="cuda")])
    far_inputs = torch.randint(0, n_in, (len(far_samples),), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(len(far_samples), device="cuda") % len(huge)]
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")

    def step():
        return run_backward(grad_y, x, params, borders, batch_last, 8, 256, False)
    names = cuda_kernel_names(step)
    assert any("bucket_kernel" in n for n in names), sorted(names)
    assert not any("far_flags_kernel" in n for n in names), sorted(names)
    gx, gp = step()
    _, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    _assert_far_backward(gx, gp, rgx, rgp)


@requires_gpu
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("g, n_in, n_out", [(8, 10, 37), (8, 10, 200), (60, 10, 9), (8, 10, 1),
                                            (8, 130, 5)], ids=str)
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("batch", [700, 701, 1300, 1301],
                         ids=["inline", "inline_odd_misaligned", "flags", "flags_odd_misaligned"])
def test_far_inputs_backward_without_nan(batch, batch_last, g, n_in, n_out, deterministic):
    """Far inputs in the backward: every backward kernel takes them at d = 0 and far_fixup.cu
    replaces their pairs' grad_x and corrects grad_params in float64: no NaN, and both match
    the float64 reference, the far-dominated entries (|value| > 1e3) and the others apart.
    Shapes: the cell-sorted backward, several output tiles, num_grids past the shared
    memory of the deterministic kernels, and one output (sample_threads_*.cu: grad_x alone
    when deterministic, grad_x with grad_params when not). Batches 700 and 701 (3 chunks of
    256) are classified by the fixup kernel itself; 1300 and 1301 (6 chunks) by the flags
    kernel first (the sorted backward, not deterministic: by its cell sort at any batch).
    Odd batches with x one float past a 16-byte boundary take the flags kernel's scalar
    loads (and, batch-first, the last chunk's tail). 130 inputs batch-last:
    the flags kernel splits the rows of its 6 chunks over 8 blocks (18 rows each, the last
    4)."""
    torch.manual_seed(8)
    x, params, borders = make_case(g, n_in, n_out, batch, batch_last)
    if batch % 2:  # the same values at a storage offset of one float: not 16-byte aligned
        x = torch.empty(x.numel() + 1, device="cuda")[1:].view(x.shape).copy_(x)
    params *= 0.05
    xb = x.t() if batch_last else x
    huge = torch.tensor([2e7, -3e7, 1e9, -1e12, 5e14, -4e8], device="cuda")
    far_samples = 48 + torch.randperm(batch - 48, device="cuda")[:120]
    far_inputs = torch.randint(0, n_in, (120,), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(120, device="cuda") % len(huge)]
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    gx, gp = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8, 256,
                                              False, deterministic)
    _, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    _assert_far_backward(gx, gp, rgx, rgp)
    if deterministic:
        again = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8, 256,
                                                 False, True)
        assert torch.equal(gx, again[0]) and torch.equal(gp, again[1])
