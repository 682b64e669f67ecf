"""CUDA kernels of the 1D layer (lmkan1d_forward / lmkan1d_backward) against the float64 reference.

Runs on a GPU machine only (skipped with the reason elsewhere); a missing kernel fails there.
"""

import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, _reference
from lmKAN.grids import cdf_borders, uniform_borders

from conftest import assert_cuda_kernel, deterministic_algorithms, rel_l2, requires_gpu

pytestmark = requires_gpu

TOL = 1e-5


def _case(num_grids, n_in, n_out, batch, uniform, batch_last, far=False):
    dev = "cuda"
    borders = (uniform_borders(num_grids, 4.0) if uniform else cdf_borders(num_grids)).to(dev)
    params = torch.randn(num_grids + 1, n_out, n_in, device=dev)
    shape = (n_in, batch) if batch_last else (batch, n_in)
    x = 1.5 * torch.randn(*shape, device=dev)
    if far:  # a share of values far outside the grid (linear extrapolation)
        mask = torch.rand(shape, device=dev) < 0.1
        x = torch.where(mask, 40.0 * torch.randn(shape, device=dev), x)
    return x, params, borders


def _reference_all(x, params, borders, uniform, batch_last, grad_y):
    xd = x.double().requires_grad_(True)
    pd = params.double().requires_grad_(True)
    y = _reference.lmkan1d_forward(xd, pd, borders.double(), uniform, batch_last)
    gx, gp = torch.autograd.grad(y, (xd, pd), grad_y.double())
    return y.detach(), gx, gp


# dx is discontinuous at the inner nodes (the slope jumps from one cell to the next), and a
# float32 kernel rounds the cell position ((v - g_0) G / w, or G F(v)) to within ~2e-6 cells:
# an input that close to a node may take the other cell than the float64 reference, and one
# such input among millions moves the rel. L2 of dx by 1e-4..1e-3 (y and dC are continuous
# there and unaffected). At those inputs the derivative is one-sided either way, so the check
# below accepts the slope of either neighbouring cell there and compares all other entries
# as they are. The band (in cells) is ~5x the float32 rounding, which grows with G (a few
# ulp of F, or of (v - g_0) / w, times G): 1e-6 G cells, about 1e-5 of the inputs at G = 31.
def _near_node_band(num_grids):
    return 1e-6 * max(num_grids, 16)


def _dx_at_nodes_either_side(gx, gx_ref, x, params, borders, uniform, batch_last, grad_y):
    """gx_ref with its entries at inputs near an inner node replaced by the
    dx of the neighbouring cell when that one is nearer to the kernel's gx."""
    num_grids = params.shape[0] - 1
    xb = (x.t() if batch_last else x).double()  # [B, N_in]
    gyb = (grad_y.t() if batch_last else grad_y).double()  # [B, N_out]
    b = borders.double()
    if uniform:
        pos = (xb - b[0]) * (num_grids / (b[num_grids] - b[0]))
        inv_h = torch.full((num_grids,), num_grids / (b[num_grids] - b[0]).item(), dtype=torch.float64,
                           device=x.device)
    else:
        cdf = torch.where(xb <= 0, 0.5 * torch.exp(xb.clamp(max=0.0)), 1.0 - 0.5 * torch.exp(-xb.clamp(min=0.0)))
        pos = num_grids * cdf
        inv_h = 1.0 / (b[1:] - b[:-1])
    node = pos.round()
    near = ((pos - node).abs() < _near_node_band(num_grids)) & (node >= 1) & (node <= num_grids - 1)
    if not bool(near.any()):
        return gx_ref
    assert near.double().mean().item() < 1e-3, "too many inputs at nodes for this check"
    s_idx, i_idx = near.nonzero(as_tuple=True)
    p = params.double()
    slopes = (p[1:] - p[:-1]) * inv_h[:, None, None]  # [G, N_out, N_in]
    fixed_t = (gx_ref.t() if batch_last else gx_ref).clone()
    got = (gx.t() if batch_last else gx).double()
    for s, i, k_hi in zip(s_idx.tolist(), i_idx.tolist(), node[s_idx, i_idx].long().tolist()):
        sides = [(gyb[s] * slopes[k, :, i]).sum() for k in (k_hi - 1, k_hi)]
        fixed_t[s, i] = min(sides, key=lambda v: abs(v.item() - got[s, i].item()))
    return fixed_t.t() if batch_last else fixed_t


def _assert_dx_close(gx, gx_ref, x, params, borders, uniform, batch_last, grad_y, tol=TOL):
    expected = _dx_at_nodes_either_side(gx, gx_ref, x, params, borders, uniform, batch_last, grad_y)
    assert rel_l2(gx, expected) <= tol


# (G, N_in, N_out, B): the bench shape; odd input counts (the dx kernel pads to pairs);
# N_out over 2 x 128 (three output tiles: the dx block loops over them) and not a multiple
# of 4 (the forward's scalar stores); a batch that is not a multiple of the 256-sample block;
# G = 1 row slope tables; large G (fewer inputs per stage). dC: G <= 31 takes the
# cell-grouped kernel (16 inputs x 64 outputs per block and chunks of 256 samples on a
# 227 KB device: 7, 33, 19, 9 inputs, 5, 70, 258 outputs and B = 1000, 2049, 515, 300 leave
# partial tiles and chunks), G = 63 and 100 the shared-accumulator kernel.
SHAPES = [(31, 256, 256, 1000), (8, 7, 5, 129), (3, 1, 1, 1), (16, 33, 70, 2049), (63, 40, 96, 777),
          (7, 19, 300, 515), (31, 64, 258, 300), (100, 9, 131, 260)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("deterministic", [False, True])
def test_kernels_match_float64(shape, uniform, batch_last, deterministic):
    assert_cuda_kernel("lmkan1d_forward")
    assert_cuda_kernel("lmkan1d_backward")
    g, n_in, n_out, batch = shape
    if g > torch.ops.lmkan.lmkan1d_max_num_grids(torch.cuda.current_device()):
        pytest.skip(f"num_grids={g} is over this device's limit")
    x, params, borders = _case(g, n_in, n_out, batch, uniform, batch_last, far=True)
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last)
    grad_y = torch.randn_like(y)
    gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, uniform, batch_last,
                                              deterministic)
    y_ref, gx_ref, gp_ref = _reference_all(x, params, borders, uniform, batch_last, grad_y)
    assert rel_l2(y, y_ref) <= TOL
    _assert_dx_close(gx, gx_ref, x, params, borders, uniform, batch_last, grad_y)
    assert rel_l2(gp, gp_ref) <= TOL


# Input splits (csrc/lmkan1d/ops.cpp, split_stages): batches too small to give every SM a
# block split the input pipeline's stages over blocks; the forward's splits write partial
# sums that sum_splits adds in order, dx's write their own inputs. (G, N_in, N_out, B) on
# 132 SMs, float32 tables: 16 splits of one stage (G=8, 8 inputs a stage); 10 forward
# splits of one stage over 2 x 2 blocks (G=31, 4 inputs a stage; 5 with bfloat16 tables);
# 3 splits of 3, 3 and 2 stages (40 sample blocks); no split (157 sample blocks).
@pytest.mark.parametrize("table", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("shape", [(8, 128, 128, 1024), (31, 37, 130, 300), (8, 64, 5, 10000),
                                   (8, 20, 5, 40000)], ids=str)
def test_input_splits(shape, batch_last, table):
    g, n_in, n_out, batch = shape
    x, params, borders = _case(g, n_in, n_out, batch, False, batch_last, far=True)
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, False, batch_last, table)
    again = torch.ops.lmkan.lmkan1d_forward(x, params, borders, False, batch_last, table)
    assert torch.equal(y, again)  # the splits are added in a fixed order
    grad_y = torch.randn_like(y)
    gx, _ = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, False, batch_last,
                                             True, table)
    rounded = params.to(table).to(torch.float32)
    y_ref, gx_ref, _ = _reference_all(x, rounded, borders, False, batch_last, grad_y)
    assert rel_l2(y, y_ref) <= TOL
    _assert_dx_close(gx, gx_ref, x, rounded, borders, False, batch_last, grad_y)


@pytest.mark.parametrize("n_out", [96, 130])
def test_dc_with_misaligned_grad_y(n_out):
    """Batch-first grad_y that is contiguous but not 16-byte aligned (a view at an odd
    offset): the grouped dC must take its scalar loads; N_out = 96 would allow float4."""
    g, n_in, batch = 31, 12, 3000
    x, params, borders = _case(g, n_in, n_out, batch, True, False)
    flat = torch.randn(batch * n_out + 1, device="cuda")
    grad_y = flat[1:].view(batch, n_out)
    assert grad_y.is_contiguous() and grad_y.data_ptr() % 16 != 0
    gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, False, False)
    _, gx_ref, gp_ref = _reference_all(x, params, borders, True, False, grad_y)
    _assert_dx_close(gx, gx_ref, x, params, borders, True, False, grad_y)
    assert rel_l2(gp, gp_ref) <= TOL


def test_dx_with_misaligned_batch_last_grad_y():
    """Batch-last grad_y at an odd offset: dx reads whole warps' rows as float4s only where
    grad_y is 16-byte aligned, so this view takes the scalar loads; both give the reference."""
    g, n_in, n_out, batch = 8, 12, 70, 1024
    x, params, borders = _case(g, n_in, n_out, batch, False, True)
    flat = torch.randn(n_out * batch + 1, device="cuda")
    grad_y = flat[1:].view(n_out, batch)
    assert grad_y.is_contiguous() and grad_y.data_ptr() % 16 != 0
    _, gx_ref, gp_ref = _reference_all(x, params, borders, False, True, grad_y)
    for gy in (grad_y, grad_y.clone()):  # misaligned, aligned
        gx, gp = torch.ops.lmkan.lmkan1d_backward(gy, x, params, borders, False, True, False)
        _assert_dx_close(gx, gx_ref, x, params, borders, False, True, gy)
        assert rel_l2(gp, gp_ref) <= TOL


def _check_grouped_dc(g, batch_last, n_in=21, n_out=150, batch=5000):
    """dC against the reference, both modes: partial input and output blocks (8 or 16 inputs,
    64 or 128 outputs), a partial last chunk, several slices, far and NaN inputs."""
    x, params, borders = _case(g, n_in, n_out, batch, True, batch_last, far=True)
    x.view(-1)[7] = float("nan")
    grad_y = torch.randn(*((n_out, batch) if batch_last else (batch, n_out)), device="cuda")
    _, _, gp_ref = _reference_all(x, params, borders, True, batch_last, grad_y)
    nan_input = 7 // batch if batch_last else 7 % n_in
    finite = torch.ones_like(gp_ref, dtype=torch.bool)
    finite[:, :, nan_input] = False
    for deterministic in (False, True):
        _, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, batch_last,
                                                 deterministic)
        assert rel_l2(gp[finite], gp_ref[finite]) <= TOL
        assert torch.isnan(gp[:, :, nan_input]).any()  # the NaN input's cell is poisoned
        assert not torch.isnan(gp[finite]).any()


@pytest.mark.parametrize("budget", ["99", "163", ""])
@pytest.mark.parametrize("batch_last", [True, False])
def test_grouped_dc_at_every_budget(budget, batch_last, monkeypatch):
    """The grouped dC's launch shape that each shared-memory budget picks at G = 31 (layout.h,
    kGroupedConfigs): 8 inputs x chunks of 128 samples within 99 KB, 16 x 128 within 163 KB
    (its node sums flushed in two passes), 16 x 256 on a 227 KB device."""
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", budget)
    _check_grouped_dc(31, batch_last)


# (shape, num_grids): kGroupedConfigs' shapes (layout.h) at the cell counts each serves:
# 16 inputs x 128 outputs (a float4 a lane) up to 16 cells (shape 0); 16 x 64 with chunks of
# 256 (shape 1) and 128 (shape 2), 8 x 64 (shape 3), up to 31 cells.
GROUPED_SHAPES = [(0, 1), (0, 16), (1, 17), (1, 31), (2, 5), (2, 31), (3, 31)]


@pytest.mark.parametrize("shape,g", GROUPED_SHAPES)
@pytest.mark.parametrize("batch_last", [True, False])
def test_every_grouped_dc_shape(shape, g, batch_last, monkeypatch):
    """Each launch shape, forced by LMKAN_1D_DC_SHAPE, against the reference."""
    monkeypatch.setenv("LMKAN_1D_DC_SHAPE", str(shape))
    _check_grouped_dc(g, batch_last, n_out=150 if batch_last else 148)


def test_forced_grouped_dc_shape_that_does_not_fit(monkeypatch):
    """A shape that cannot serve the call raises, naming the knob and what did not fit."""
    x, params, borders = _case(31, 4, 8, 300, True, False)
    grad_y = torch.randn(300, 8, device="cuda")
    monkeypatch.setenv("LMKAN_1D_DC_SHAPE", "0")  # 16 cells at most
    with pytest.raises(ValueError, match=r"LMKAN_1D_DC_SHAPE=0 .*16 cells at most.* num_grids 31"):
        torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, False, False)
    monkeypatch.setenv("LMKAN_1D_DC_SHAPE", "one")
    with pytest.raises(ValueError, match=r"LMKAN_1D_DC_SHAPE must be an integer .* got 'one'"):
        torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, False, False)


@pytest.mark.parametrize("batch_last", [True, False])
def test_dc_long_runs_of_one_cell(batch_last):
    """Most samples of every chunk in one cell (runs of hundreds in the grouped dC), the rest
    beyond both ends of the grid (the end cells), over several chunks and slices."""
    g, n_in, n_out, batch = 31, 16, 64, 6000
    x, params, borders = _case(g, n_in, n_out, batch, True, batch_last)
    x = 0.31 + 1e-3 * torch.randn_like(x)
    x = torch.where(torch.rand_like(x) < 0.05, 50.0 * torch.randn_like(x), x)
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, True, batch_last)
    grad_y = torch.randn_like(y)
    for deterministic in (False, True):
        _, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, batch_last,
                                                 deterministic)
        _, _, gp_ref = _reference_all(x, params, borders, True, batch_last, grad_y)
        assert rel_l2(gp, gp_ref) <= TOL


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("batch_last", [True, False])
def test_poisoned_outputs_are_overwritten(uniform, batch_last):
    x, params, borders = _case(31, 64, 48, 700, uniform, batch_last)
    poison = torch.full((48 * 700 + 4096,), float("nan"), device="cuda")
    del poison
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("batch_last", [True, False])
def test_nan_stays_where_it_belongs(uniform, batch_last):
    g, n_in, n_out, batch = 15, 37, 45, 301
    x, params, borders = _case(g, n_in, n_out, batch, uniform, batch_last)
    nan_pos = [(3, 10), (20, 200)]  # (input, sample)
    for i, s in nan_pos:
        if batch_last:
            x[i, s] = float("nan")
        else:
            x[s, i] = float("nan")
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last)
    grad_y = torch.randn_like(y)
    gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, uniform, batch_last)
    y_ref, gx_ref, gp_ref = _reference_all(x, params, borders, uniform, batch_last, grad_y)
    for got, ref in ((y, y_ref), (gx, gx_ref), (gp, gp_ref)):
        assert torch.equal(torch.isnan(got).cpu(), torch.isnan(ref).cpu())
        ok = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(got).cpu(), ok.cpu())
        assert rel_l2(got[ok], ref[ok]) <= TOL


@pytest.mark.parametrize("uniform, num_grids", [(True, 100), (False, 8), (True, 31)])
@pytest.mark.parametrize("batch_last", [True, False])
def test_huge_finite_inputs_extrapolate_without_nan(uniform, num_grids, batch_last):
    """A finite input far past the end nodes (docs/spec.md, "Robustness") gives the linear
    extrapolation f_i + (x - g_i) s_i, +-inf where it overflows, never inf - inf = NaN: the
    weighted form gave NaN, and on the G = 100 grid d itself overflows past 2.7e37 while the
    result may be finite. Far inputs at scattered (sample, input) positions, some warps without
    any; the gradients stay NaN-free where grad_y is 0."""
    n_in, n_out, batch = 13, 37, 700
    x, params, borders = _case(num_grids, n_in, n_out, batch, uniform, batch_last)
    params *= 0.05  # |f| small enough that sums of one far term and the rest stay finite
    huge = torch.tensor([5e37, -5e37, 3e38, -3e38, 3.4028234e38, -3.4028234e38, 1e30, -2e6],
                        device="cuda")
    xb = x.t() if batch_last else x  # [B, N_in] view of x
    # one far input per chosen sample: two of opposite signs in one sum could be inf - inf
    far_samples = 48 + torch.randperm(batch - 48, device="cuda")[:120]
    far_inputs = torch.randint(0, n_in, (120,), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(120, device="cuda") % len(huge)]
    xb[16:48] = 0.3  # two whole warps (16 samples each) without far inputs, off every node
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, batch_last)
    y_ref = _reference.lmkan1d_forward(x.double(), params.double(), borders.double(), uniform,
                                       batch_last)
    assert not y.isnan().any() and not y_ref.isnan().any()
    # where the float64 result is beyond float32, the kernel gives an infinity of its sign or
    # a float32 value within rounding of the overflow threshold
    big = y_ref.abs() > 3.0e38
    assert torch.equal(torch.sign(y[big]), torch.sign(y_ref[big]).float())
    assert (y[big].abs() >= 3.0e38).all()
    ok = ~big
    rel = ((y[ok].double() - y_ref[ok]).abs() / y_ref[ok].abs().clamp_min(1.0)).max().item()
    assert rel <= 1e-5
    # backward with grad_y 0 on the far samples: their weights (1 - d, d) may be infinite
    # (d overflows on fine grids), and 0 * inf must not reach the parameter gradient
    grad_y = torch.randn_like(y)
    (grad_y.t() if batch_last else grad_y)[far_samples] = 0.0
    _, gx_ref, gp_ref = _reference_all(x, params, borders, uniform, batch_last, grad_y)
    for det in (False, True):
        gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, uniform,
                                                  batch_last, det)
        assert not gx.isnan().any() and not gp.isnan().any()
        assert rel_l2(gp, gp_ref) <= TOL
        _assert_dx_close(gx, gx_ref, x, params, borders, uniform, batch_last, grad_y)


def test_kanlayer_identity_at_huge_inputs():
    """The reported case: KANLayer(2, 2, init="identity") on 5e37 gave NaN on CUDA."""
    layer = KANLayer(2, 2, init="identity").cuda()
    x = torch.tensor([[5e37, -5e37], [3e38, 1.0], [-3e38, 2.5]], device="cuda")
    y = layer(x)
    assert not y.isnan().any()
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_last", [True, False])
def test_deterministic_backward_is_bitwise_reproducible(batch_last):
    """With deterministic=True two backward runs agree bit for bit, at a size where the dC
    kernel splits the batch over many blocks (the atomic path would differ run to run)."""
    g, n_in, n_out, batch = 31, 64, 96, 40000
    x, params, borders = _case(g, n_in, n_out, batch, True, batch_last, far=True)
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, True, batch_last)
    grad_y = torch.randn_like(y)
    runs = [torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, batch_last, True)
            for _ in range(3)]
    for gx, gp in runs[1:]:
        assert torch.equal(gx, runs[0][0])
        assert torch.equal(gp, runs[0][1])
    _, gx_ref, gp_ref = _reference_all(x, params, borders, True, batch_last, grad_y)
    _assert_dx_close(runs[0][0], gx_ref, x, params, borders, True, batch_last, grad_y)
    assert rel_l2(runs[0][1], gp_ref) <= TOL
    # The atomic (non-deterministic) reduction of the same slices, against the reference too.
    gx, gp = torch.ops.lmkan.lmkan1d_backward(grad_y, x, params, borders, True, batch_last, False)
    assert torch.equal(gx, runs[0][0])  # dx has no atomics
    assert rel_l2(gp, gp_ref) <= TOL


def test_layer_follows_torch_deterministic_setting():
    """deterministic=None follows torch.use_deterministic_algorithms at call time."""
    layer = KANLayer(64, 96, "random_normal").cuda()
    x = (1.5 * torch.randn(30000, 64, device="cuda")).requires_grad_(True)
    grad_y = torch.randn(30000, 96, device="cuda")
    grads = []
    with deterministic_algorithms():
        for _ in range(2):
            gx, gp = torch.autograd.grad(layer(x), (x, layer.func_parameter), grad_y)
            grads.append((gx, gp))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])
    explicit = KANLayer(64, 96, "random_normal", deterministic=True).cuda()
    explicit.load_state_dict(layer.state_dict())
    gx, gp = torch.autograd.grad(explicit(x), (x, explicit.func_parameter), grad_y)
    assert torch.equal(gp, grads[0][1])


def test_layers_autograd_on_cuda():
    for layer, x in (
        (LMKAN1DLayer(12, 50, 30, grid="cdf").cuda(), 1.5 * torch.randn(50, 333, device="cuda")),
        (LMKAN1DLayer(12, 50, 30, grid="uniform", batch_last=False).cuda(),
         1.5 * torch.randn(4, 83, 50, device="cuda")),
        (KANLayer(64, 96, "random_normal").cuda(), 1.5 * torch.randn(517, 64, device="cuda")),
    ):
        with torch.no_grad():
            layer.func_parameter.add_(0.3 * torch.randn_like(layer.func_parameter))
        x.requires_grad_(True)
        y = layer(x)
        grad_y = torch.randn_like(y)
        gx, gp = torch.autograd.grad(y, (x, layer.func_parameter), grad_y)
        xd = x.detach().double().requires_grad_(True)
        pd = layer.func_parameter.detach().double().requires_grad_(True)
        x2d = xd if layer.batch_last else xd.reshape(-1, layer.input_dim)
        y_ref = _reference.lmkan1d_forward(x2d, pd, layer.borders.double(), layer.grid == "uniform",
                                           layer.batch_last)
        y_ref = y_ref if layer.batch_last else y_ref.reshape(y.shape)
        gx_ref, gp_ref = torch.autograd.grad(y_ref, (xd, pd), grad_y.double())
        assert rel_l2(y, y_ref) <= TOL
        assert rel_l2(gx, gx_ref) <= TOL
        assert rel_l2(gp, gp_ref) <= TOL


def test_identity_init_is_exact_on_cuda():
    layer = KANLayer(40, 40, "identity").cuda()
    x = 3.0 * torch.randn(999, 40, device="cuda")
    assert rel_l2(layer(x), x) <= 1e-6


def test_noncontiguous_input_and_opcheck():
    x, params, borders = _case(7, 9, 11, 64, True, False)
    wide = torch.randn(64, 20, device="cuda")
    wide[:, ::2] = torch.randn(64, 10, device="cuda")[:, :10]
    xs = wide[:, :18:2]  # non-contiguous [64, 9]
    y = torch.ops.lmkan.lmkan1d_forward(xs, params, borders, True, False)
    y_ref = _reference.lmkan1d_forward(xs.double(), params.double(), borders.double(), True, False)
    assert rel_l2(y, y_ref) <= TOL
    torch.library.opcheck(torch.ops.lmkan.lmkan1d_forward, (x, params, borders, True, False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.lmkan.lmkan1d, (x, params, borders, True, False, True),
                          test_utils=("test_schema", "test_faketensor"))
    gy = torch.randn(64, 11, device="cuda")
    torch.library.opcheck(torch.ops.lmkan.lmkan1d_backward,
                          (gy, x, params, borders, True, False, True),
                          test_utils=("test_schema", "test_faketensor"))


@requires_gpu
def test_layer_rejects_too_large_num_grids_before_launch():
    """The layer asks the kernels' limit and raises a ValueError in Python; at the limit
    itself forward and backward run."""
    assert_cuda_kernel("lmkan1d_forward")
    limit = torch.ops.lmkan.lmkan1d_max_num_grids(torch.cuda.current_device())
    assert 64 <= limit < 4000  # about 104 on an H100 (the dC accumulator bounds it)
    x = torch.randn(4, 8, device="cuda", requires_grad=True)
    at_limit = LMKAN1DLayer(limit, 4, 3).cuda()
    at_limit(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match=f"num_grids={limit + 1} .* num_grids <= {limit}"):
        LMKAN1DLayer(limit + 1, 4, 3).cuda()(x)
