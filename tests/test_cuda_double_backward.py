"""Second derivatives through the CUDA ops (issue 19, item 2; docs/spec.md, "Second
derivatives"). The backward ops of both layers have their own autograd
(csrc/lmkan1d/autograd.cpp, csrc/lmkan2d/autograd.cpp): second derivatives with respect to x,
the parameters and the upstream gradient match the float64 reference. The regularisers'
backward ops do not have one: a backward with create_graph=True through them raises instead
of returning a silently wrong graph, and so does a third derivative through a layer."""
import copy

import pytest
import torch

from lmKAN import KANLayer, LMKAN1DLayer, LMKAN2DLayer

from conftest import assert_cuda_kernel, rel_l2, requires_gpu

pytestmark = requires_gpu

MESSAGE = r"second derivatives \(a backward with create_graph=True through this op\) are not implemented"
THIRD = r"third derivatives \(a backward with create_graph=True through this op\) are not implemented"


def _loss(kind, layer, x):
    if kind in ("2d", "1d"):
        return layer(x).square().sum()
    return layer.get_hessian_regularization()  # the 2D Hessian or the 1D second difference


@pytest.mark.parametrize("kind", ["hessian2d", "second_diff1d"])
def test_create_graph_raises_and_first_derivatives_still_work(kind):
    assert_cuda_kernel("lmkan2d_forward")
    torch.manual_seed(0)
    layer = (LMKAN2DLayer(5, 6, 7) if kind == "hessian2d" else LMKAN1DLayer(5, 6, 7)).cuda()
    x = torch.randn(6, 33, device="cuda", requires_grad=True)
    inputs = [layer.func_parameter] + ([x] if kind in ("2d", "1d") else [])
    with pytest.raises(RuntimeError, match=MESSAGE):
        torch.autograd.grad(_loss(kind, layer, x), inputs, create_graph=True)
    # create_graph=False: the first derivatives, as without the failed call
    first = torch.autograd.grad(_loss(kind, layer, x), inputs)
    again = torch.autograd.grad(_loss(kind, layer, x), inputs)
    for a, b in zip(first, again):
        assert a.abs().sum() > 0 and rel_l2(a, b) <= 1e-6


def _second_derivatives(layer, x, gy, r, q):
    """d/d(x, params, gy) of <grad_x, r> + <grad_params, q>, grad_x and grad_params taken with
    create_graph=True: every term of the backward op's own derivatives."""
    params = layer.func_parameter
    gx, gp = torch.autograd.grad(layer(x), (x, params), gy, create_graph=True)
    loss = (gx * r).sum() + (gp * q).sum()
    return torch.autograd.grad(loss, (x, params, gy))


def _assert_second_derivatives_match(layer, reference, table, x, gy, r, q):
    """The CUDA layer's second derivatives against a float64 CPU reference layer holding its
    table (rounded to `table` where one is used): finite, every term exercised, <= 1e-5."""
    got = _second_derivatives(layer, x, gy, r, q)
    with torch.no_grad():
        values = layer.func_parameter.detach()
        reference.func_parameter.copy_((values if table is None else values.to(table)).double())
    xd = x.detach().cpu().double().requires_grad_(True)
    gyd = gy.detach().cpu().double().requires_grad_(True)
    want = _second_derivatives(reference, xd, gyd, r.cpu().double(), q.cpu().double())
    for name, a, b in zip(("x", "params", "grad_y"), got, want):
        assert torch.isfinite(a).all(), name
        assert b.abs().sum() > 0, name  # every term is exercised
        assert rel_l2(a.cpu(), b) <= 1e-5, (name, rel_l2(a.cpu(), b))


@pytest.mark.parametrize("grid", ["cdf", "uniform"])
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("table", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_1d_second_derivatives_match_float64(grid, batch_last, table):
    """Odd sizes, inputs past the grid (extrapolation), a 16-bit table (the slopes of the
    rounded values, against the reference on the rounded table)."""
    assert_cuda_kernel("lmkan1d_slope_forward")
    torch.manual_seed(1)
    layer = LMKAN1DLayer(13, 21, 35, grid=grid, batch_last=batch_last, table_dtype=table).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(0.3 * torch.randn_like(layer.func_parameter))
    shape = (21, 301) if batch_last else (301, 21)
    x = (3.0 * torch.randn(*shape, device="cuda")).requires_grad_(True)  # some past the grid
    gy = torch.randn((35, 301) if batch_last else (301, 35), device="cuda", requires_grad=True)
    r, q = torch.randn_like(x), torch.randn_like(layer.func_parameter)
    reference = LMKAN1DLayer(13, 21, 35, grid=grid, batch_last=batch_last).double()
    _assert_second_derivatives_match(layer, reference, table, x, gy, r, q)


@pytest.mark.parametrize("deterministic", [False, True])
def test_1d_force_training_step(deterministic):
    """The force loss of an energy model (forces = -dE/dx by autograd, create_graph=True):
    its parameter gradient matches the float64 reference; deterministic mode is bitwise
    stable."""
    torch.manual_seed(2)
    layer = KANLayer(12, 1, deterministic=deterministic).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(0.2 * torch.randn_like(layer.func_parameter))
    x = torch.randn(517, 12, device="cuda", requires_grad=True)
    target = torch.randn(517, 12, device="cuda")

    def force_loss_grad(model, xin, tgt):
        energy = model(xin).sum()
        forces = -torch.autograd.grad(energy, xin, create_graph=True)[0]
        return torch.autograd.grad((forces - tgt).square().mean(), model.func_parameter)[0]

    got = force_loss_grad(layer, x, target)
    reference = KANLayer(12, 1).double()
    reference.load_state_dict(layer.state_dict())
    want = force_loss_grad(reference, x.detach().cpu().double().requires_grad_(True),
                           target.cpu().double())
    assert got.abs().sum() > 0
    assert rel_l2(got.cpu(), want) <= 1e-5
    if deterministic:
        assert torch.equal(got, force_loss_grad(layer, x, target))


# (num_grids, N_in, N_out, B): G = 5 keeps the slope kernels' table and accumulators in shared
# memory, G = 40 reads the table and accumulates through global memory; N_out = 70 spans two
# 64-output tiles (the mixed term is summed over tiles in a fixed order); N_out = 1 and 5 take
# the few-outputs mixed term and slope dP (sample_threads_*.cu); odd batches.
SHAPES_2D = [(5, 14, 70, 301), (40, 6, 9, 133), (5, 14, 1, 301), (26, 10, 5, 777)]


@pytest.mark.parametrize("shape", SHAPES_2D, ids=str)
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("table", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_2d_second_derivatives_match_float64(shape, batch_last, table):
    """d/d(x, params, grad_y) of <grad_x, r> + <grad_params, q>: the slope forward, the mixed
    second derivatives, the slope parameter gradient and the lookups of q, against the float64
    reference (the table rounded to the 16-bit dtype where one is used); inputs past the grid."""
    assert_cuda_kernel("lmkan2d_slope_forward")
    num_grids, n_in, n_out, batch = shape
    torch.manual_seed(3)
    layer = LMKAN2DLayer(num_grids, n_in, n_out, batch_last=batch_last, table_dtype=table).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(0.3 * torch.randn_like(layer.func_parameter))
    x_shape = (n_in, batch) if batch_last else (batch, n_in)
    x = (2.5 * torch.randn(*x_shape, device="cuda")).requires_grad_(True)
    gy = torch.randn(*((n_out, batch) if batch_last else (batch, n_out)), device="cuda",
                     requires_grad=True)
    r, q = torch.randn_like(x), torch.randn_like(layer.func_parameter)
    reference = LMKAN2DLayer(num_grids, n_in, n_out, batch_last=batch_last).double()
    _assert_second_derivatives_match(layer, reference, table, x, gy, r, q)


def test_2d_mixed_term_alone():
    """The x part of d<grad_x, r>/dx is the pairs' mixed second derivatives only: with r on the
    first input of each pair it lands on the second input, and the first input's is 0."""
    torch.manual_seed(4)
    layer = LMKAN2DLayer(7, 4, 5).cuda()
    with torch.no_grad():
        layer.func_parameter.add_(torch.randn_like(layer.func_parameter))
    x = torch.randn(4, 97, device="cuda", requires_grad=True)
    gx = torch.autograd.grad(layer(x).sum(), x, create_graph=True)[0]
    r = torch.zeros_like(x)
    r[0::2] = torch.randn(2, 97, device="cuda")
    dx = torch.autograd.grad((gx * r).sum(), x)[0]
    assert torch.equal(dx[0::2], torch.zeros_like(dx[0::2]))
    assert dx[1::2].abs().sum() > 0


def _perturbed_net_and_data(model, batch):
    """model(dtype, device) -> network: a CUDA float32 one with perturbed parameters, inputs
    [batch, 12] that require grad, and force targets."""
    net = model()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(batch, 12, device="cuda", requires_grad=True)
    return net, x, torch.randn(batch, 12, device="cuda")


def _assert_matches_float64(got, model, net, grads_of, x, target):
    """got = grads_of(net, x, target) against the same on a float64 CPU copy of net."""
    reference = model(torch.float64, "cpu")
    reference.load_state_dict(net.state_dict())
    want = grads_of(reference, x.detach().cpu().double().requires_grad_(True),
                    target.cpu().double())
    for a, b in zip(got, want):
        assert b.abs().sum() > 0
        assert rel_l2(a.cpu(), b) <= 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
def test_2d_force_training_step(deterministic):
    """A force loss through two 2D layers (forces = -dE/dx, create_graph=True): the parameter
    gradients match the float64 reference; deterministic mode is bitwise stable."""
    torch.manual_seed(5)

    def model(dtype=torch.float32, device="cuda"):
        return torch.nn.Sequential(
            LMKAN2DLayer(6, 12, 16, batch_last=False, deterministic=deterministic),
            torch.nn.Tanh(),
            LMKAN2DLayer(6, 16, 1, batch_last=False, deterministic=deterministic)).to(device, dtype)

    net, x, target = _perturbed_net_and_data(model, 517)

    def force_loss_grads(m, xin, tgt):
        energy = m(xin).sum()
        forces = -torch.autograd.grad(energy, xin, create_graph=True)[0]
        return torch.autograd.grad((forces - tgt).square().mean(), list(m.parameters()))

    got = force_loss_grads(net, x, target)
    _assert_matches_float64(got, model, net, force_loss_grads, x, target)
    if deterministic:
        again = force_loss_grads(net, x, target)
        assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_force_step_runs_no_lookups_on_tables_of_zeros(kind):
    """A force loss does not use the first backward's parameter-gradient output: it reaches
    the backward op's autograd undefined (not materialized as zeros), so no forward and no
    backward runs on a table of zeros. A two-layer model's energy-and-force step then calls
    the forward op twice (once per layer; a third call was the first layer's upstream term
    on zeros); the gradients match the float64 reference."""
    torch.manual_seed(6)

    def model(dtype=torch.float32, device="cuda"):
        if kind == "1d":
            layers = KANLayer(12, 16), torch.nn.Tanh(), KANLayer(16, 1)
        else:
            layers = (LMKAN2DLayer(6, 12, 16, batch_last=False), torch.nn.Tanh(),
                      LMKAN2DLayer(6, 16, 1, batch_last=False))
        return torch.nn.Sequential(*layers).to(device, dtype)

    net, x, target = _perturbed_net_and_data(model, 301)

    def step_grads(m, xin, tgt):
        energy = m(xin)
        forces = -torch.autograd.grad(energy.sum(), xin, create_graph=True)[0]
        loss = energy.square().mean() + (forces - tgt).square().mean()
        return torch.autograd.grad(loss, list(m.parameters()))

    step_grads(net, x, target)  # the first call tunes "auto" settings (many forward calls)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = step_grads(net, x, target)
    forward_op = f"lmkan::lmkan{kind}_forward"
    assert sum(e.count for e in prof.key_averages() if e.key == forward_op) == 2
    _assert_matches_float64(got, model, net, step_grads, x, target)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("kind, num_grids", [("1d", 7), ("2d", 6), ("2d", 40)])
def test_backward_op_grad_x_alone(kind, num_grids, batch_last, deterministic):
    """grad_params=False (the first backward of a force loss, and grad_x of the forward on a
    table in second derivatives): the backward ops give grad_x alone, the float64
    reference's to 1e-5, and an empty second output. 2D: G = 6 takes the output-rows grad_x
    in place of the cell-sorted backward, G = 40 the kernels past the shared memory."""
    torch.manual_seed(7)
    n_in, n_out, batch = 14, 70, 301
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda")
    gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    if kind == "1d":
        layer = LMKAN1DLayer(num_grids, n_in, n_out, grid="uniform", batch_last=batch_last).cuda()
        params, borders = layer.func_parameter.detach(), layer.borders
        args = (True, batch_last, deterministic, None)  # uniform grid
        op = torch.ops.lmkan.lmkan1d_backward
    else:
        layer = LMKAN2DLayer(num_grids, n_in, n_out, batch_last=batch_last).cuda()
        params, borders = layer.func_parameter.detach(), layer.borders
        args = (batch_last, 8, 512, False, deterministic, None)
        op = torch.ops.lmkan.lmkan2d_backward
    gx, empty = op(gy, x, params, borders, *args, False)
    assert empty.shape == (0,)
    torch.library.opcheck(op, (gy, x, params, borders, *args, False),
                          test_utils=("test_schema", "test_faketensor"))
    reference = copy.deepcopy(layer).double()  # the pure-PyTorch path
    xd = x.double().requires_grad_(True)
    want = torch.autograd.grad(reference(xd), xd, gy.double())[0]
    assert rel_l2(gx, want) <= 1e-5
    if deterministic:
        assert torch.equal(gx, op(gy, x, params, borders, *args, False)[0])


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_third_derivatives_raise(kind):
    """Second derivatives work; a graph of them (create_graph=True once more) is refused."""
    layer = (LMKAN1DLayer(5, 6, 7) if kind == "1d" else LMKAN2DLayer(5, 6, 7)).cuda()
    x = torch.randn(6, 33, device="cuda", requires_grad=True)
    gx = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)[0]
    second = torch.autograd.grad(gx.sin().sum(), layer.func_parameter, retain_graph=True)[0]
    assert second.abs().sum() > 0
    with pytest.raises(RuntimeError, match=THIRD):
        torch.autograd.grad(gx.sin().sum(), layer.func_parameter, create_graph=True)


@pytest.mark.parametrize("kind, n_out", [("1d", 9), ("2d", 9), ("2d", 1)])
def test_nan_input_stays_local_in_second_derivatives(kind, n_out):
    """A NaN in input 0 of one sample (docs/spec.md, "Robustness"): the second derivatives are
    NaN only where they depend on it: that sample's column of d/d grad_y, its entries of d/dx
    for input 0 (2D: the pair of inputs 0 and 1), the parameters of input 0 (pair 0). 2D with
    one output: the few-outputs kernels (sample_threads_*.cu)."""
    torch.manual_seed(6)
    layer = (LMKAN2DLayer(6, 8, n_out) if kind == "2d" else LMKAN1DLayer(6, 8, n_out)).cuda()
    x = torch.randn(8, 67, device="cuda")
    x[0, 5] = float("nan")
    x.requires_grad_(True)
    gy = torch.randn(n_out, 67, device="cuda", requires_grad=True)
    r, q = torch.randn_like(x), torch.randn_like(layer.func_parameter)
    dx, dp, dgy = _second_derivatives(layer, x, gy, r, q)
    assert dgy[:, 5].isnan().all()
    others = torch.ones(67, dtype=torch.bool, device="cuda")
    others[5] = False
    assert torch.isfinite(dgy[:, others]).all()
    touched = 2 if kind == "2d" else 1  # inputs whose derivatives see input 0's value
    assert torch.isfinite(dx[:, others]).all() and torch.isfinite(dx[touched:, 5]).all()
    assert torch.isfinite(dp[..., 1:]).all()  # the other inputs' (pairs') parameters
