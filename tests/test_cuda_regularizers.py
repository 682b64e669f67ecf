"""CUDA kernels of the smoothness regularisers against the float64 reference.

hessian2d (docs/spec.md section 3) and second_diff1d (section 4): value and gradient, relative
L2 <= 1e-5, num_grids 3..64, odd sizes and sizes of 1, NaN parameters, no host sync.
"""
import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer, _reference, ops
from lmKAN.grids import cdf_borders, uniform_borders

from conftest import assert_cuda_kernel, rel_l2, requires_gpu

TOL = 1e-5


def _reference_value_and_grad(fn, params, borders, grad_r):
    p = params.detach().double().requires_grad_(True)
    r = fn(p, borders.double())
    (g,) = torch.autograd.grad(r, p, grad_r.double())
    return r.detach(), g


def _poison_allocator(nbytes):
    """Leave NaN-filled blocks in the caching allocator so unwritten outputs show up."""
    junk = torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")
    del junk


def _check(op, fn, params, borders, scale=1.0):
    name = "hessian2d" if fn is _reference.hessian2d else "second_diff1d"
    assert_cuda_kernel(name)
    assert_cuda_kernel(name + "_backward")
    grad_r = torch.tensor(scale, device="cuda")
    ref_r, ref_g = _reference_value_and_grad(fn, params, borders, grad_r)
    _poison_allocator(params.numel() * 4)
    r = getattr(torch.ops.lmkan, name)(params, borders)
    _poison_allocator(params.numel() * 4)
    g = getattr(torch.ops.lmkan, name + "_backward")(grad_r, params, borders)
    assert r.shape == () and r.dtype == torch.float32 and r.is_cuda
    assert g.shape == params.shape and g.dtype == torch.float32
    assert torch.isfinite(g).all(), "gradient has unwritten (NaN) entries"
    err_r = abs(r.double().item() - ref_r.item()) / max(abs(ref_r.item()), 1e-300)
    assert err_r <= TOL, f"value: relative error {err_r:.3e}"
    err_g = rel_l2(g, ref_g)
    assert err_g <= TOL, f"gradient: relative L2 error {err_g:.3e}"
    return r, g


@requires_gpu
# The gradient kernel's window kinds (csrc/regularizers/): G <= 14 generic only (13: one
# chunk, 14: two), 15: left + right at the edge, 26: left + right, 28 and 42: interior
# windows too, 64: three interior windows.
@pytest.mark.parametrize("num_grids", [3, 4, 5, 7, 8, 13, 14, 15, 16, 26, 27, 28, 29, 31, 42, 64])
@pytest.mark.parametrize("n_out,n_pairs", [(1, 1), (3, 5), (7, 1), (1, 129), (33, 9)])
def test_hessian2d_matches_reference(num_grids, n_out, n_pairs):
    side = num_grids + 1
    params = torch.randn(side, side, n_out, n_pairs, device="cuda") * 1.5
    _check(torch.ops.lmkan.hessian2d, _reference.hessian2d, params, cdf_borders(num_grids, device="cuda"))


@requires_gpu
@pytest.mark.parametrize("num_grids", [3, 4, 5, 8, 16, 26, 31, 33, 64])
@pytest.mark.parametrize("n_out,n_in", [(1, 1), (3, 5), (129, 1), (7, 33)])
@pytest.mark.parametrize("uniform", [False, True])
def test_second_diff1d_matches_reference(num_grids, n_out, n_in, uniform):
    borders = (uniform_borders(num_grids, 4.0, device="cuda") if uniform
               else cdf_borders(num_grids, device="cuda"))
    params = torch.randn(num_grids + 1, n_out, n_in, device="cuda") * 1.5
    _check(torch.ops.lmkan.second_diff1d, _reference.second_diff1d, params, borders)


@requires_gpu
@pytest.mark.parametrize("regulariser", ["hessian2d", "second_diff1d"])
@pytest.mark.parametrize("num_grids,n_out,n_in", [
    (10, 16, 16), (10, 1, 257), (10, 1, 1), (10, 37, 29), (26, 8, 16), (26, 9, 15)])
def test_value_one_block_and_multi_block(regulariser, num_grids, n_out, n_in):
    """Both launches of the value (csrc/regularizers/launch.h, ValueOut): tables of at most 2
    blocks of work (128 functions x one chunk) are summed by one block in one launch, larger
    ones by one block each and a final sum. At G = 10 every table is one chunk: 256
    functions are 2 blocks (one block), 257 are 3 (many); at G = 26 both values have two
    chunks (8 x 16 functions: 1 x 2 blocks; 9 x 15: 2 x 2)."""
    if regulariser == "hessian2d":
        side = num_grids + 1
        params = torch.randn(side, side, n_out, n_in, device="cuda")
        _check(torch.ops.lmkan.hessian2d, _reference.hessian2d, params,
               cdf_borders(num_grids, device="cuda"))
    else:
        params = torch.randn(num_grids + 1, n_out, n_in, device="cuda")
        _check(torch.ops.lmkan.second_diff1d, _reference.second_diff1d, params,
               cdf_borders(num_grids, device="cuda"))


@requires_gpu
@pytest.mark.parametrize("num_grids", [200, 3100])
def test_hessian2d_many_nodes(num_grids):
    """G = 200: some middle windows take the generic kind; G = 3100: the gradient kernel's
    per-node coefficients (16 B each) pass 48 KiB of shared memory (opt-in path)."""
    side = num_grids + 1
    params = torch.randn(side, side, 1, 3 if num_grids < 1000 else 1, device="cuda")
    _check(torch.ops.lmkan.hessian2d, _reference.hessian2d, params, cdf_borders(num_grids, device="cuda"))


@requires_gpu
@pytest.mark.parametrize("name,shape", [("hessian2d", (9, 9, 3, 5)), ("hessian2d", (30, 30, 2, 3)),
                                        ("second_diff1d", (9, 3, 5))])
def test_opcheck(name, shape):
    """Schema, C++ autograd registration, fake tensors and AOT dispatch of the ops."""
    params = torch.randn(*shape, device="cuda", requires_grad=True)
    borders = cdf_borders(shape[0] - 1, device="cuda")
    op = getattr(torch.ops.lmkan, name)
    torch.library.opcheck(op, (params, borders))
    grad_r = torch.tensor(0.5, device="cuda")
    torch.library.opcheck(getattr(torch.ops.lmkan, name + "_backward"),
                          (grad_r, params.detach(), borders))


@requires_gpu
def test_compile_fullgraph():
    """torch.compile sees the op and its C++ autograd without a graph break."""
    layer = LMKAN2DLayer(8, 6, 5).cuda()
    with torch.no_grad():
        layer.func_parameter.normal_()

    def loss_fn():
        return 2.0 * layer.get_hessian_regularization()

    compiled = torch.compile(loss_fn, fullgraph=True)
    compiled().backward()
    grad_compiled = layer.func_parameter.grad.clone()
    layer.func_parameter.grad = None
    loss_fn().backward()
    assert rel_l2(grad_compiled, layer.func_parameter.grad) <= TOL


@requires_gpu
def test_hessian2d_large_accuracy():
    """23.9M parameters (G=26, 256x256): the reduction keeps 1e-5."""
    params = torch.randn(27, 27, 256, 128, device="cuda") * 1.5
    _check(torch.ops.lmkan.hessian2d, _reference.hessian2d, params, cdf_borders(26, device="cuda"),
           scale=0.37)


@requires_gpu
def test_second_diff1d_large_accuracy():
    params = torch.randn(32, 1024, 1024, device="cuda") * 1.5
    _check(torch.ops.lmkan.second_diff1d, _reference.second_diff1d, params,
           uniform_borders(31, 4.0, device="cuda"), scale=-2.5)


@requires_gpu
@pytest.mark.parametrize("num_grids,n_out,n_pairs", [(26, 64, 33), (10, 8, 16)])  # many, one block
def test_deterministic(num_grids, n_out, n_pairs):
    params = torch.randn(num_grids + 1, num_grids + 1, n_out, n_pairs, device="cuda")
    borders = cdf_borders(num_grids, device="cuda")
    grad_r = torch.tensor(1.0, device="cuda")
    r1 = torch.ops.lmkan.hessian2d(params, borders)
    r2 = torch.ops.lmkan.hessian2d(params, borders)
    g1 = torch.ops.lmkan.hessian2d_backward(grad_r, params, borders)
    g2 = torch.ops.lmkan.hessian2d_backward(grad_r, params, borders)
    assert torch.equal(r1, r2) and torch.equal(g1, g2)


def _nan_pattern_check(name, fn, params, borders):
    grad_r = torch.tensor(1.0, device="cuda")
    _, ref_g = _reference_value_and_grad(fn, params, borders, grad_r)
    r = getattr(torch.ops.lmkan, name)(params, borders)
    g = getattr(torch.ops.lmkan, name + "_backward")(grad_r, params, borders)
    assert torch.isnan(r)
    assert torch.equal(torch.isnan(g).cpu(), torch.isnan(ref_g).cpu())
    finite = ~torch.isnan(ref_g)
    assert rel_l2(g[finite], ref_g[finite]) <= TOL


@requires_gpu
@pytest.mark.parametrize("where", [(0, 0), (1, 5), (13, 14), (26, 26), (26, 3), (12, 0)])
def test_hessian2d_nan_only_where_it_depends(where):
    params = torch.randn(27, 27, 3, 5, device="cuda")
    params[where[0], where[1], 1, 2] = float("nan")
    _nan_pattern_check("hessian2d", _reference.hessian2d, params, cdf_borders(26, device="cuda"))


@requires_gpu
@pytest.mark.parametrize("row", [0, 1, 15, 30, 31])
def test_second_diff1d_nan_only_where_it_depends(row):
    params = torch.randn(32, 3, 5, device="cuda")
    params[row, 2, 4] = float("nan")
    _nan_pattern_check("second_diff1d", _reference.second_diff1d, params, uniform_borders(31, 4.0, device="cuda"))


@requires_gpu
def test_layers_autograd_and_noncontiguous():
    layer = LMKAN2DLayer(8, 6, 5).cuda()
    with torch.no_grad():
        layer.func_parameter.normal_()
    r = layer.get_hessian_regularization()
    r.backward(torch.tensor(3.0, device="cuda"))
    ref_r, ref_g = _reference_value_and_grad(_reference.hessian2d, layer.func_parameter,
                                             layer.borders, torch.tensor(3.0, device="cuda"))
    assert abs(r.item() - ref_r.item()) <= TOL * abs(ref_r.item())
    assert rel_l2(layer.func_parameter.grad, ref_g) <= TOL
    # A non-contiguous table (a slice of a wider one) goes through ops.hessian2d.
    wide = torch.randn(9, 9, 5, 8, device="cuda")
    sliced = wide[:, :, :, 1:4]
    assert not sliced.is_contiguous()
    r = ops.hessian2d(sliced, layer.borders)
    assert abs(r.item() - _reference.hessian2d(sliced.double(), layer.borders).item()) <= TOL * abs(r.item())


@requires_gpu
def test_many_layers_no_host_sync():
    """Summing several layers' regularisers, forward and backward, never syncs the host."""
    layers = [LMKAN2DLayer(g, 2 * n, n).cuda() for g, n in ((8, 16), (26, 32), (16, 7))]
    layers += [LMKAN1DLayer(12, 9, 5).cuda(), KANLayer(16, 8)]
    layers[-1].cuda()
    for layer in layers:
        with torch.no_grad():
            layer.func_parameter.normal_()
    assert_cuda_kernel("hessian2d")
    assert_cuda_kernel("second_diff1d_backward")
    # Warm-up outside sync-debug mode (first calls may load modules).
    sum(layer.get_hessian_regularization() for layer in layers).backward()
    for layer in layers:
        layer.func_parameter.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total = sum(layer.get_hessian_regularization() for layer in layers)
        (0.5 * total).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    expected = 0.0
    for layer in layers:
        fn = _reference.hessian2d if isinstance(layer, LMKAN2DLayer) else _reference.second_diff1d
        r, g = _reference_value_and_grad(fn, layer.func_parameter, layer.borders,
                                         torch.tensor(0.5, device="cuda"))
        expected += r.item()
        assert rel_l2(layer.func_parameter.grad, g) <= TOL
    assert abs(total.item() - expected) <= TOL * abs(expected)


def _tables(specs, seed):
    """(params, borders) per (num_grids, n_out, n_pairs) of specs, float32 on the GPU."""
    torch.manual_seed(seed)
    out = []
    for g, n_out, n_pairs in specs:
        params = torch.randn(g + 1, g + 1, n_out, n_pairs, device="cuda") * 1.5
        out.append((params, cdf_borders(g, device="cuda")))
    return out


@requires_gpu
@pytest.mark.parametrize("specs", [
    # two tiny tables: 2 blocks of work in all, the one-block launch switching tables
    [(5, 1, 3), (10, 2, 1)],
    # the small training step's tables (8 + 2 blocks of work), one launch of each kind
    [(10, 64, 16), (10, 8, 32)],
    # different num_grids: 1 and 2 column chunks, generic and edge windows, an odd width
    [(3, 7, 1), (26, 33, 9), (13, 1, 129), (64, 3, 5)],
    # more than 8 tables: two launches into one sum
    [(4 + i % 5, 1 + i, 2 + (i * 7) % 11) for i in range(11)],
    # one table (a model of one 2D layer): the single-table kernels, the weight inside
    [(26, 33, 9)],
], ids=["one_block", "small_step", "mixed_grids", "eleven_tables", "one_table"])
@pytest.mark.parametrize("weight", [1.0, 0.37])
def test_hessian2d_sum_matches_reference(specs, weight):
    """hessian2d_sum over several tables: the value against weight times the sum of the
    float64 references, every table's gradient against weight times its reference, relative
    1e-5; the gradients written in full (allocator poisoned with NaN)."""
    assert_cuda_kernel("hessian2d_sum")
    assert_cuda_kernel("hessian2d_sum_backward")
    tables = _tables(specs, seed=len(specs))
    params, borders = [p for p, _ in tables], [b for _, b in tables]
    grad_r = torch.tensor(0.75, device="cuda")
    _poison_allocator(sum(p.numel() for p in params) * 4)
    r = torch.ops.lmkan.hessian2d_sum(params, borders, weight)
    _poison_allocator(sum(p.numel() for p in params) * 4)
    grads = torch.ops.lmkan.hessian2d_sum_backward(grad_r, params, borders, weight)
    assert r.shape == () and r.dtype == torch.float32 and len(grads) == len(params)
    expected = 0.0
    for p, b, g in zip(params, borders, grads):
        ref_r, ref_g = _reference_value_and_grad(_reference.hessian2d, p, b, grad_r)
        expected += weight * ref_r.item()
        assert g.shape == p.shape and torch.isfinite(g).all(), "unwritten gradient entries"
        assert rel_l2(g, weight * ref_g) <= TOL
    assert abs(r.double().item() - expected) <= TOL * abs(expected)
    # deterministic: the same bits again
    assert torch.equal(torch.ops.lmkan.hessian2d_sum(params, borders, weight), r)


@requires_gpu
def test_hessian_regularization_sums_2d_layers_in_one_call(monkeypatch):
    """hessian_regularization(model) gives every 2D layer (a conv too) to one hessian2d_sum
    call and adds the other layers' terms: the value and every layer's gradient as with one
    call per layer; a subclass that overrides get_hessian_regularization keeps its own."""
    from lmKAN import LMKAN2DConv2d
    from lmKAN.regularization import hessian_regularization

    class Scaled2D(LMKAN2DLayer):
        def get_hessian_regularization(self):
            return 3.0 * super().get_hessian_regularization()

    torch.manual_seed(5)
    model = torch.nn.Sequential(LMKAN2DLayer(10, 32, 64), LMKAN1DLayer(7, 64, 16),
                                LMKAN2DLayer(26, 16, 8), LMKAN2DConv2d(5, 2, 3, 1),
                                Scaled2D(4, 8, 4)).cuda()
    for m in model:
        with torch.no_grad():
            m.func_parameter.normal_()
    calls = []
    original = ops.hessian2d_sum
    monkeypatch.setattr(ops, "hessian2d_sum",
                        lambda p, b, w=1.0: calls.append(len(p)) or original(p, b, w))
    total = hessian_regularization(model)
    assert calls == [3]  # the three 2D layers without an override
    weighted = hessian_regularization(model, weight=0.25)  # the weight inside the launches
    assert calls == [3, 3]
    assert abs(weighted.item() - 0.25 * total.item()) <= 1e-6 * abs(total.item())
    total.backward(torch.tensor(0.5, device="cuda"))
    got = [m.func_parameter.grad.clone() for m in model]
    model.zero_grad(set_to_none=True)
    separate = sum(m.get_hessian_regularization() for m in model)
    separate.backward(torch.tensor(0.5, device="cuda"))
    assert abs(total.item() - separate.item()) <= 1e-6 * abs(separate.item())
    for m, g in zip(model, got):
        assert rel_l2(g, m.func_parameter.grad) <= 1e-6


@requires_gpu
def test_hessian2d_sum_tensor_weight_keeps_its_gradient():
    """lmKAN.ops.hessian2d_sum with a tensor weight on CUDA multiplies the op's sum (the op's
    float argument would detach it): the weight gets the unweighted sum as its gradient, and
    the tables weight times their gradients."""
    torch.manual_seed(6)
    params = [torch.randn(9, 9, 5, 3, device="cuda", requires_grad=True) for _ in range(2)]
    borders = [cdf_borders(8, device="cuda")] * 2
    weight = torch.tensor(0.4, device="cuda", requires_grad=True)
    r = ops.hessian2d_sum(params, borders, weight)
    unweighted = ops.hessian2d_sum([p.detach() for p in params], borders)
    gw, *gp = torch.autograd.grad(r, [weight] + params)
    assert torch.allclose(gw, unweighted, rtol=1e-6)
    for p, g in zip(params, gp):
        (expected,) = torch.autograd.grad(ops.hessian2d_sum([p], [borders[0]]), p)
        assert rel_l2(g, 0.4 * expected) <= 1e-6
