"""torch.compile(fullgraph=True) of models that mix lmKAN layers with nn.Linear and BatchNorm1d,
and torch.library.opcheck of every lmKAN op.

CPU: the pure-PyTorch path, compiled with the "aot_eager" backend (Dynamo with fullgraph=True,
so any graph break fails, plus AOT autograd's joint forward/backward trace; seconds per case).
Inductor's C++ code generation adds ~45 s per model on a 2-core machine: the CPU inductor case
runs only with LMKAN_TEST_INDUCTOR=1. CUDA (skipped without a GPU): inductor, the kernels,
and opcheck of each op.
"""
import copy
import os

import pytest
import torch
from torch import nn

from lmKAN import LMKAN1DLayer, LMKAN2DLayer
from lmKAN.grids import cdf_borders, uniform_borders
from lmKAN.regularization import hessian_regularization

from conftest import assert_cuda_kernel, requires_gpu

TOL = 1e-5


class MixedModel(nn.Module):
    """Linear -> BatchNorm1d -> lmKAN 2D -> lmKAN 1D -> Linear; x and y are [B, features]."""

    def __init__(self, batch_last, num_grids=6):
        super().__init__()
        self.batch_last = batch_last
        self.inp = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.kan2d = LMKAN2DLayer(num_grids, 8, 6, batch_last=batch_last)
        self.kan1d = LMKAN1DLayer(num_grids, 6, 4, batch_last=batch_last)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.norm(self.inp(x))
        if self.batch_last:  # the lmKAN layers take [features, B] in this layout
            return self.out(self.kan1d(self.kan2d(h.t())).t())
        return self.out(self.kan1d(self.kan2d(h)))


def training_loss(model, x):
    """Task loss plus the Hessian regularisers, as a training step computes it (the weight
    given to hessian_regularization: under torch.compile it multiplies the sum)."""
    return model(x).square().mean() + hessian_regularization(model, weight=1e-3)


def _run(model, x, compiled_with=None):
    """Loss, the input's gradient and every parameter's gradient (one train-mode step)."""
    fn = training_loss if compiled_with is None else torch.compile(training_loss, fullgraph=True,
                                                                   backend=compiled_with)
    x = x.clone().requires_grad_(True)
    loss = fn(model, x)
    loss.backward()
    return loss.detach(), x.grad, {name: p.grad for name, p in model.named_parameters()}


def assert_compiled_matches_eager(device, backend, batch_last):
    torch._dynamo.reset()
    eager = MixedModel(batch_last).to(device).train()
    compiled = copy.deepcopy(eager)
    x = 1.5 * torch.randn(64, 6, device=device)
    loss_e, gx_e, grads_e = _run(eager, x)
    loss_c, gx_c, grads_c = _run(compiled, x, compiled_with=backend)
    torch.testing.assert_close(loss_c, loss_e, rtol=TOL, atol=TOL)
    torch.testing.assert_close(gx_c, gx_e, rtol=TOL, atol=TOL)
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=TOL, atol=TOL, msg=f"grad of {name}")
    # Train-mode BatchNorm updated its running statistics inside the compiled graph too.
    torch.testing.assert_close(compiled.norm.running_mean, eager.norm.running_mean)
    torch.testing.assert_close(compiled.norm.running_var, eager.norm.running_var)
    # A second call with another batch size reuses or recompiles without a graph break.
    _run(compiled, 1.5 * torch.randn(17, 6, device=device), compiled_with=backend)


@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_compile_fullgraph_matches_eager_cpu(batch_last):
    assert_compiled_matches_eager("cpu", "aot_eager", batch_last)


@pytest.mark.skipif(os.environ.get("LMKAN_TEST_INDUCTOR") != "1",
                    reason="CPU inductor compile takes ~45 s on 2 cores; set LMKAN_TEST_INDUCTOR=1")
def test_compile_inductor_cpu():
    assert_compiled_matches_eager("cpu", "inductor", batch_last=False)


def _weighted_step_counts(device):
    """A compiled (fullgraph) step whose Hessian weight changes every call, as a schedule's
    does: its losses against eager's, and how many frames dynamo compiled for 4 weights."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    model = MixedModel(batch_last=False).to(device).train()
    x = 1.5 * torch.randn(16, 6, device=device)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(lambda m, x, w: m(x).square().mean() + hessian_regularization(m, weight=w),
                         fullgraph=True, backend=counter)
    pairs = []
    for w in (1e-3, 2e-3, 3e-3, 5e-4):
        pairs.append((step(model, x, w), model(x).square().mean() + hessian_regularization(model, weight=w)))
    return pairs, counter.frame_count


def test_compiled_step_with_a_changing_weight_cpu():
    """A float weight becomes symbolic after its first value: no graph break (fullgraph) and
    no compile per value (the finiteness check is skipped while tracing)."""
    pairs, frames = _weighted_step_counts("cpu")
    for compiled, eager in pairs:
        torch.testing.assert_close(compiled, eager, rtol=TOL, atol=TOL)
    assert frames <= 2, frames


def test_compile_eval_mode_no_grad_cpu():
    torch._dynamo.reset()
    model = MixedModel(batch_last=False).eval()
    x = torch.randn(9, 6)
    with torch.no_grad():
        expected = model(x)
        actual = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL)


# --- CUDA: inductor over the kernels, and opcheck of each op ---------------------------

@requires_gpu
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager_cuda(batch_last, backend):
    assert_cuda_kernel("lmkan2d_forward")
    assert_cuda_kernel("lmkan1d_forward")
    assert_compiled_matches_eager("cuda", backend, batch_last)


def _opcheck_cases():
    """(op name, argument tuple) for every lmKAN op, on small CUDA tensors."""
    dev, g, n_in, n_out, batch = "cuda", 6, 8, 5, 37
    cdf, uni = cdf_borders(g).to(dev), uniform_borders(g, 4.0).to(dev)
    p2 = torch.randn(g + 1, g + 1, n_out, n_in // 2, device=dev)
    p1 = torch.randn(g + 1, n_out, n_in, device=dev)
    cdf5, p2b = cdf_borders(5).to(dev), torch.randn(6, 6, 3, 7, device=dev)
    cases = []
    for batch_last in (True, False):
        shape_x = (n_in, batch) if batch_last else (batch, n_in)
        shape_y = (n_out, batch) if batch_last else (batch, n_out)
        x = 1.5 * torch.randn(shape_x, device=dev)
        gy = torch.randn(shape_y, device=dev)
        cases += [
            ("lmkan2d", (x.requires_grad_(True), p2.clone().requires_grad_(True), cdf,
                         batch_last, 8, 256, 8, 256, False)),
            ("lmkan2d", (x.detach(), p2, cdf, batch_last, 4, 128, 16, 64, True, True)),
            ("lmkan2d_forward", (x.detach(), p2, cdf, batch_last, 8, 256)),
            ("lmkan2d_backward", (gy, x.detach(), p2, cdf, batch_last, 8, 256, False)),
            # 16-bit tables, and 16-bit parameters (grad_params in their dtype)
            ("lmkan2d", (x.detach().requires_grad_(True), p2.clone().requires_grad_(True), cdf,
                         batch_last, 8, 256, 8, 256, False, False, torch.bfloat16)),
            ("lmkan2d", (x.detach().requires_grad_(True),
                         p2.half().clone().requires_grad_(True), cdf, batch_last, 16, 256, 8,
                         256, False, True)),
            ("lmkan2d_forward", (x.detach(), p2, cdf, batch_last, 4, 256, torch.float16)),
            ("lmkan2d_backward", (gy, x.detach(), p2.bfloat16(), cdf, batch_last, 8, 256, False,
                                  True, None)),
            # a 16-bit output (as under autocast): its gradient reaches the backward in 16 bits
            ("lmkan2d", (x.detach().requires_grad_(True), p2.clone().requires_grad_(True), cdf,
                         batch_last, 8, 256, 16, 256, True, False, torch.bfloat16,
                         torch.bfloat16)),
            ("lmkan2d_backward", (gy.half(), x.detach(), p2, cdf, batch_last, 16, 256, True)),
            ("lmkan1d", (x.detach().requires_grad_(True), p1.clone().requires_grad_(True),
                         uni, True, batch_last)),
            ("lmkan1d", (x.detach().requires_grad_(True), p1.clone().requires_grad_(True),
                         cdf, False, batch_last, True)),
            ("lmkan1d_forward", (x.detach(), p1, cdf, False, batch_last)),
            ("lmkan1d_backward", (gy, x.detach(), p1, uni, True, batch_last)),
        ]
    cases += [
        ("hessian2d", (p2.clone().requires_grad_(True), cdf)),
        ("hessian2d_backward", (torch.tensor(0.7, device=dev), p2, cdf)),
        ("second_diff1d", (p1.clone().requires_grad_(True), cdf)),
        ("second_diff1d_backward", (torch.tensor(0.7, device=dev), p1, cdf)),
        # two tables of different num_grids, one gradient each
        ("hessian2d_sum", ([p2.clone().requires_grad_(True), p2b.clone().requires_grad_(True)],
                           [cdf, cdf5])),
        ("hessian2d_sum_backward", (torch.tensor(0.7, device=dev), [p2, p2b], [cdf, cdf5])),
        ("hessian2d_sum_backward", (torch.tensor(0.7, device=dev), [p2, p2b], [cdf, cdf5], 0.3)),
        ("hessian2d_sum", ([p2.clone().requires_grad_(True), p2b.clone().requires_grad_(True)],
                           [cdf, cdf5], 0.3)),  # weighted
    ]
    return cases


OP_NAMES = ["lmkan2d", "lmkan2d_forward", "lmkan2d_backward", "lmkan1d", "lmkan1d_forward",
            "lmkan1d_backward",
            "hessian2d", "hessian2d_backward", "hessian2d_sum", "hessian2d_sum_backward",
            "second_diff1d", "second_diff1d_backward"]


@requires_gpu
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_opcheck_cuda(op_name):
    # the layer ops lmkan2d / lmkan1d run the forward kernel op below autograd
    assert_cuda_kernel(op_name + "_forward" if op_name in ("lmkan2d", "lmkan1d") else op_name)
    cases = [args for name, args in _opcheck_cases() if name == op_name]
    assert cases
    for args in cases:
        torch.library.opcheck(getattr(torch.ops.lmkan, op_name), args)
