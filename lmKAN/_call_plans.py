"""The layers' lean call path: one key, one dict lookup and one op call per steady-state call.

A layer call does a good deal of Python before its op runs: input checks, resolving "auto"
launch settings, the shared-memory warning, the mixed-precision policy, picking the backend.
On a small layer that Python cost more than the GPU work (LMKAN2DLayer(26, 128, 128) at
B=1024 on the H200: 76 us per no-grad call, of which the op itself was ~40; docs/decisions.md,
"Per-call cost"). Its outcome depends only on what `call_key` collects, so the first call of
each kind runs the general path and stores the op's remaining arguments (its *plan*) under
that key; later calls of that kind look the plan up and call the op directly.

A plan is stored only for calls that run the CUDA kernels, on a 2-D input, outside
torch.compile tracing, CUDA graph capture and lmKAN.tune() sessions: every other call takes
the general path every time. Calls inside autocast, or with a 16-bit x or 16-bit parameters,
have plans too: autocast's dtype is part of the key, and such a plan also holds the casts
the general path does around the op (x to float32, y to the output dtype) where they change
a dtype. The general path also turns autocast off around its op call (it serves the
pure-PyTorch path too); a plan does not: it calls the C++ layer op only, which calls no op
on autocast's lists (its results are the same with autocast on or off,
tests/test_call_plans.py), and the context cost ~3.4 us per call (docs/decisions.md,
"Per-call cost"). A layer drops its plans when a setting they depend on is assigned
(PlannedCalls.__setattr__), when the tuning cache's memory is cleared (its generation is
part of the key), and when pickled.

What is read once per key rather than per call: LMKAN_TUNING (a change applies to call kinds
a layer has not seen yet, or after lmKAN.tuning.clear_memory_cache()).
"""
import torch
from torch import nn

from .ops import _AUTOCAST_DEVICE_TYPES, _SIXTEEN_BIT
from .tuning.cache import MEMORY_GENERATION
from .tuning.session import SESSION

__all__ = ["PlannedCalls", "call_key", "may_store_plan", "plan_of_call"]


def call_key(x, params, deterministic):
    """What decides a call's op arguments, or None when the call must take the general path
    (x not a plain tensor, torch.compile tracing, an lmKAN.tune() session)."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling() or SESSION.force is not None:
        return None
    device_type = x.device.type
    autocast = (torch.get_autocast_dtype(device_type) if device_type in _AUTOCAST_DEVICE_TYPES
                and torch.is_autocast_enabled(device_type) else None)
    return (x.shape, x.dtype, x.device, params.dtype, params.device,
            torch.is_grad_enabled() and (x.requires_grad or params.requires_grad),
            torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic,
            autocast, MEMORY_GENERATION[0])


def may_store_plan(key, x, kernel_runs):
    """Whether the general path's op arguments for `key` may serve later calls of that key:
    the call ran the CUDA kernels on a 2-D x, outside CUDA graph capture (where "auto"
    settings are not timed: the next eager call resolves them)."""
    return (key is not None and kernel_runs and x.dim() == 2
            and not (x.is_cuda and torch.cuda.is_current_stream_capturing()))


def plan_of_call(x, y, args, takes_out_dtype=False):
    """The plan to store for a general-path call on x that returned y, whose op arguments
    after (x, params, borders) were `args`: (args, cast_x, y_dtype), the casts lmKAN.ops'
    _run_layer did around the op: the op takes x in float32 (cast_x: x is not float32
    already), and y leaves in the call's output dtype, y.dtype (y_dtype: that dtype where the
    op's own output is not already in it, else None). Casts that would return their input
    are left out of the plan (~1.3 us of host each). takes_out_dtype: the op's last argument
    is y's dtype (lmkan2d's out_dtype: it returns y in that dtype), appended to args as
    _run_layer passes it: the output dtype where it is 16-bit, else None."""
    out_dtype = y.dtype
    op_out = torch.float32
    if takes_out_dtype:
        op_out_16 = out_dtype if out_dtype in _SIXTEEN_BIT else None
        args = (*args, op_out_16)
        op_out = op_out_16 or torch.float32
    return (args, x.dtype != torch.float32, None if out_dtype == op_out else out_dtype)


class PlannedCalls(nn.Module):
    """Base of the layers: holds `_call_plans` (call key -> plan: the op arguments after x,
    params and borders, with the casts around the op, plan_of_call), runs a call from its
    plan where there is one, and drops the plans when an attribute in PLAN_SETTINGS is
    assigned.

    A layer class sets PLAN_SETTINGS, PLANNED_OP (its differentiable layer op, None without
    the extension: then no plan is ever stored) and `_forward_general(x, params, key)`, which
    calls `may_store_plan` to decide whether to keep the call's plan and `plan_of_call` to
    make it.
    """

    PLAN_SETTINGS = frozenset()
    PLANNED_OP = None

    def __init__(self):
        super().__init__()
        self._call_plans = {}

    def forward(self, x):
        params = self._parameters["func_parameter"]
        key = call_key(x, params, self.deterministic)
        plan = self._call_plans.get(key)
        if plan is not None:  # a call like an earlier one: its op arguments, no Python checks
            # the general path's casts (those that change a dtype); not its autocast-off
            # context (module docstring)
            args, cast_x, y_dtype = plan
            y = self.PLANNED_OP(x.to(torch.float32) if cast_x else x, params,
                                self._buffers["borders"], *args)
            return y if y_dtype is None else y.to(y_dtype)
        return self._forward_general(x, params, key)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self.PLAN_SETTINGS and "_call_plans" in self.__dict__:
            self._call_plans.clear()

    def __getstate__(self):
        # Plans name device indices and this process's cache generation: not carried over.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_call_plans"] = {}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_call_plans" not in self.__dict__:  # pickled before the lean path existed
            self._call_plans = {}

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half(), ...: the parameters' dtype and device are in the key, but a
        # conversion may also replace them; start afresh.
        self._call_plans.clear()
        return super()._apply(fn, *args, **kwargs)
