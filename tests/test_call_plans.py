"""The layers' lean call path (lmKAN/_call_plans.py): when a plan is stored, reused, dropped.

CPU tests stand in for the kernels: `kernel_runs` is forced true where the layer decides
whether to store a plan, and the layer op the plans call is replaced by one that records
its arguments and runs the reference. GPU tests run the real op and compare with the
general path.
"""
import copy
import pickle

import pytest
import torch

from lmKAN import LMKAN1DLayer, LMKAN2DLayer, _call_plans, _reference, lmkan1d, lmkan2d, ops
from conftest import requires_gpu


class RecordingOp:
    """Stands for torch.ops.lmkan.lmkan2d / lmkan1d: records each call's extra arguments."""

    def __init__(self, reference):
        self.calls = []
        self.autocast_on = []  # per call: whether autocast was on for x's device
        self.reference = reference

    def __call__(self, x, params, borders, *plan):
        # the general path gives the op x in float32: so must a plan
        assert x.dtype == torch.float32
        self.calls.append(plan)
        self.autocast_on.append(torch.is_autocast_enabled(x.device.type))
        # A plan leaves autocast as the caller set it, since the C++ layer ops call no op on
        # autocast's lists (test_cuda_autocast_plan_matches_the_general_path checks that on
        # the real ops); the reference's matmuls are on them, so it turns autocast off itself.
        with torch.autocast(x.device.type, enabled=False):
            return self.reference(x, params, borders, plan)


def _rounded(params, table):
    """The table the op computes with (its last argument: the call's table dtype)."""
    return params if table in (None, params.dtype) else ops.rounded_table(params, table)


def _reference_2d(x, params, borders, plan):
    *plan, out16 = plan  # lmkan2d's out_dtype: y's dtype where it is 16-bit, else None
    y = _reference.lmkan2d_forward(x, _rounded(params, plan[-1]), borders, plan[0])
    return y if out16 is None else y.to(out16)


def _reference_1d(x, params, borders, plan):
    return _reference.lmkan1d_forward(x, _rounded(params, plan[-1]), borders, plan[0], plan[1])


@pytest.fixture
def planned(monkeypatch):
    """Plans stored as if the kernels ran; the plans' op call recorded (both layers)."""
    ops = {"2d": RecordingOp(_reference_2d), "1d": RecordingOp(_reference_1d)}
    store = _call_plans.may_store_plan
    for module, layer, op in ((lmkan2d, LMKAN2DLayer, ops["2d"]), (lmkan1d, LMKAN1DLayer, ops["1d"])):
        monkeypatch.setattr(layer, "PLANNED_OP", op)
        monkeypatch.setattr(module, "may_store_plan",
                            lambda key, x, kernel_runs: store(key, x, True))
    return ops


def _layer_2d(**kwargs):
    return LMKAN2DLayer(5, 6, 3, tile_size_forward=8, block_size_forward=256,
                        tile_size_backward=8, block_size_backward=256, **kwargs)


def test_second_call_runs_the_stored_plan(planned):
    layer, x = _layer_2d(), torch.randn(6, 10)
    y1 = layer(x)
    assert planned["2d"].calls == [] and len(layer._call_plans) == 1
    y2 = layer(x)
    assert planned["2d"].calls == [(True, 8, 256, 8, 256, False, False, torch.float32, None)]
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)


def test_plan_follows_the_layer_settings(planned):
    layer, x = _layer_2d(), torch.randn(6, 10)
    layer(x)
    layer.tile_size_forward = 16  # assigning a setting drops the plans
    assert layer._call_plans == {}
    layer(x)
    layer(x)
    assert planned["2d"].calls == [(True, 16, 256, 8, 256, False, False, torch.float32, None)]
    layer.table_dtype = torch.bfloat16  # the call's table dtype is part of the plan
    assert layer._call_plans == {}
    layer(x)
    layer(x)
    assert planned["2d"].calls[-1] == (True, 16, 256, 8, 256, False, False, torch.bfloat16,
                                       None)


@pytest.mark.parametrize("change", ["no_grad", "shape", "dtype", "deterministic", "no_grad_params"])
def test_a_different_kind_of_call_takes_the_general_path(planned, change):
    layer, x = _layer_2d(), torch.randn(6, 10)
    layer(x)
    if change == "no_grad":
        with torch.no_grad():
            layer(x)
    elif change == "shape":
        x = torch.randn(6, 11)
    elif change == "dtype":
        layer, x = layer.double(), x.double()
    elif change == "deterministic":
        layer.deterministic = True
    elif change == "no_grad_params":
        layer.func_parameter.requires_grad_(False)
    if change != "no_grad":
        layer(x)
    assert planned["2d"].calls == []


def test_gradients_through_the_plan_match(planned):
    layer, x = _layer_2d(), torch.randn(6, 10)
    x1 = x.clone().requires_grad_(True)
    layer(x1).square().sum().backward()
    g1, gp1 = x1.grad, layer.func_parameter.grad.clone()
    layer.zero_grad()
    x2 = x.clone().requires_grad_(True)
    layer(x2).square().sum().backward()
    assert planned["2d"].calls, "the second call should have run its plan"
    torch.testing.assert_close(x2.grad, g1, rtol=0, atol=0)
    torch.testing.assert_close(layer.func_parameter.grad, gp1, rtol=0, atol=0)


def test_bad_input_after_a_plan_gets_the_layers_message(planned):
    layer = _layer_2d()
    layer(torch.randn(6, 10))
    with pytest.raises(ValueError, match=r"LMKAN2DLayer input must have shape \[input_dim=6"):
        layer(torch.randn(4, 10))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer([[0.0] * 10] * 6)


def test_no_plan_where_the_general_path_must_run(planned):
    layer = LMKAN2DLayer(5, 6, 3, batch_last=False)
    layer(torch.randn(2, 5, 6))  # 3-D batch-first input: reshaped by the general path
    assert layer._call_plans == {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        layer(torch.randn(5, 6))
    assert layer._call_plans == {}


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_autocast_and_16bit_calls_run_plans_with_the_general_paths_casts(planned, kind):
    torch.manual_seed(0)
    layer = _layer_2d() if kind == "2d" else LMKAN1DLayer(5, 6, 3)
    x = torch.randn(6, 10)
    calls = planned[kind].calls
    # (autocast dtype or None, x dtype): each a kind of call of its own, output as nn.Linear's
    for autocast, x_dtype, out_dtype in [(torch.bfloat16, torch.float32, torch.bfloat16),
                                         (torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                         (torch.float16, torch.float32, torch.float16),
                                         (None, torch.bfloat16, torch.bfloat16),
                                         (None, torch.float32, torch.float32)]:
        xc = x.to(x_dtype).detach().requires_grad_(True)
        outputs, grads = [], []
        for _ in range(2):  # the first call takes the general path and stores the plan
            before = len(calls)
            if autocast is None:
                y = layer(xc)
            else:
                with torch.autocast("cpu", dtype=autocast):
                    y = layer(xc)
            assert y.dtype == out_dtype
            outputs.append(y.detach())
            layer.zero_grad()
            xc.grad = None
            y.float().square().sum().backward()
            grads.append((xc.grad, layer.func_parameter.grad.clone()))
        assert len(calls) == before + 1, (autocast, x_dtype)  # the second call ran the plan
        # no autocast-off context around the planned op (~3.4 us a call)
        assert planned[kind].autocast_on[-1] == (autocast is not None)
        # and only the casts that change a dtype (the 2D op returns y in out_dtype itself)
        _, cast_x, y_dtype = list(layer._call_plans.values())[-1]
        assert cast_x == (x_dtype != torch.float32)
        assert y_dtype == (None if kind == "2d" or out_dtype == torch.float32 else out_dtype)
        table = autocast if autocast is not None else torch.float32
        if kind == "2d":  # the op returns y in a 16-bit output dtype itself (out_dtype, last)
            assert calls[-1][-2:] == (table, None if out_dtype == torch.float32 else out_dtype)
        else:
            assert calls[-1][-1] == table
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
        for g1, g0 in zip(grads[1], grads[0]):
            assert g1.dtype == g0.dtype
            torch.testing.assert_close(g1, g0, rtol=0, atol=0)
    assert len(layer._call_plans) == 5


def test_plans_are_not_pickled_or_kept_across_conversions(planned):
    layer, x = _layer_2d(), torch.randn(6, 10)
    layer(x)
    assert pickle.loads(pickle.dumps(layer))._call_plans == {}
    assert copy.deepcopy(layer)._call_plans == {}
    assert len(layer._call_plans) == 1
    layer.float()  # any .to()/.cuda()/.half() conversion
    assert layer._call_plans == {}


def test_tuning_cache_clear_makes_plans_stale(planned):
    from lmKAN import tuning
    layer, x = _layer_2d(), torch.randn(6, 10)
    layer(x)
    tuning.clear_memory_cache()
    layer(x)
    assert planned["2d"].calls == []


def test_1d_layer_plans(planned):
    layer = LMKAN1DLayer(7, 4, 3, grid="uniform", batch_last=False)
    x = torch.randn(9, 4)
    y1 = layer(x)
    y2 = layer(x)
    assert planned["1d"].calls == [(True, False, False, torch.float32)]
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    layer.batch_last = True
    assert layer._call_plans == {}


def _cuda_layer(kind, batch_last):
    torch.manual_seed(0)
    layer_cls = LMKAN2DLayer if kind == "2d" else LMKAN1DLayer
    return layer_cls(6, 10, 70, batch_last=batch_last).cuda()


def _first_and_planned_calls(layer, x, autocast=None):
    """(y, grad_x, grad_params) of two training calls: the first takes the general path and
    fills the plan, the second runs it (forward under autocast of that dtype, if given)."""
    results = []
    for _ in range(2):
        xg = x.clone().requires_grad_(True)
        layer.zero_grad()
        with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            y = layer(xg)
        y.float().square().sum().backward()
        results.append((y.detach(), xg.grad, layer.func_parameter.grad.clone()))
    return results


@requires_gpu
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_cuda_plan_matches_the_general_path(kind, batch_last):
    layer = _cuda_layer(kind, batch_last)
    x = torch.randn((10, 300) if batch_last else (300, 10), device="cuda")
    (y0, gx0, gp0), (y1, gx1, gp1) = _first_and_planned_calls(layer, x)
    with torch.no_grad():
        first, planned = layer(x), layer(x)
    assert len(layer._call_plans) == 2  # with and without grad
    assert y0.shape == ((70, 300) if batch_last else (300, 70))
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(planned, first, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-6)  # atomics
    torch.testing.assert_close(gp1, gp0, rtol=1e-6, atol=1e-6)


@requires_gpu
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_cuda_autocast_plan_matches_the_general_path(kind, x_dtype):
    # The general path calls the op with autocast off, the plan with autocast on: equal
    # results (bitwise y) show that the op calls nothing autocast would cast.
    layer = _cuda_layer(kind, False)
    x = torch.randn(300, 10, device="cuda").to(x_dtype)
    (y0, gx0, gp0), (y1, gx1, gp1) = _first_and_planned_calls(layer, x, torch.bfloat16)
    assert len(layer._call_plans) == 1
    assert y0.dtype == y1.dtype == torch.bfloat16
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    assert gx1.dtype == x_dtype
    tol = 1e-6 if x_dtype == torch.float32 else 1e-2  # float atomics, then rounded to x's dtype
    torch.testing.assert_close(gx1, gx0, rtol=tol, atol=tol)
    torch.testing.assert_close(gp1, gp0, rtol=1e-6, atol=1e-6)
