"""The lmKAN ops as Python functions: CUDA kernels where compiled in, reference elsewhere.

Each public function here picks the backend per call: a CUDA float32 tensor runs the
`torch.ops.lmkan.*` kernel when the extension has one for that op; any other tensor (CPU,
float64, or an op without a kernel) runs the differentiable pure-PyTorch reference.
The kernels' `register_fake` registrations (shape propagation for torch.compile) are in
`_op_fakes.py`, imported here.
Their autograd is registered in C++ (csrc/lmkan2d/autograd.cpp, csrc/lmkan1d/autograd.cpp,
csrc/regularizers/autograd.cpp): a Python autograd wrapper's host time was most
of a small training step, so the Python side of each op is one `torch.ops` call.
"""
import contextlib

import torch

from . import _op_fakes  # noqa: F401 (registers the kernel ops' fake implementations)
from . import _reference
from ._checks import TABLE_DTYPES
from ._extension import has_cuda_kernel

__all__ = ["lmkan2d", "lmkan1d", "lmkan2d_forward_images", "lmkan1d_forward_images", "hessian2d",
           "hessian2d_sum", "second_diff1d", "kernel_available", "kernel_applies"]


@torch.compiler.assume_constant_result
def kernel_available(op_name, dispatch_key="CUDA"):
    """has_cuda_kernel as torch.compile sees it: a constant fixed at trace time.

    The answer never changes after import, and the dispatcher query inside it would
    otherwise break the graph (fullgraph=True fails).
    """
    return has_cuda_kernel(op_name, dispatch_key)


def kernel_applies(op_name, *tensors):
    """True for a float32 call of `op_name` on the CUDA kernel: the first tensor is on a CUDA
    device, all are float32, and the kernel is compiled in. lmKAN.tuning times only such
    calls. The kernels also take 16-bit parameters and convert other floating x
    (layer_kernel_applies): those calls run with default launch settings where "auto"."""
    return (tensors[0].is_cuda and all(t.dtype == torch.float32 for t in tensors)
            and kernel_available(op_name))


# Device types with autocast, found at import: torch.amp.is_autocast_available is not
# traceable by torch.compile on every supported torch version.
_AUTOCAST_DEVICE_TYPES = frozenset(
    t for t in ("cpu", "cuda", "xpu", "hpu", "mps", "mtia") if torch.amp.is_autocast_available(t))
_NO_CONTEXT = contextlib.nullcontext()


def table_dtype_of_call(params, table_dtype, autocast_dtype):
    """The dtype a layer call's table is rounded to (README "Mixed precision"): `table_dtype`
    where given; else autocast's dtype for float32 parameters inside an autocast region
    (`autocast_dtype`, None outside one); else the parameters' own dtype."""
    if table_dtype is not None:
        return table_dtype
    if autocast_dtype is not None and params.dtype == torch.float32:
        return autocast_dtype
    return params.dtype


def rounded_table(params, table):
    """params rounded to `table` and back to params' dtype, with the gradient of the rounding
    taken as 1 exactly, as the kernels take it (the backward of a cast would round the
    gradient to `table` too, or overflow float16)."""
    return params + (params.detach().to(table).to(params.dtype) - params.detach())


def _autocast_dtype(x, params):
    """Autocast's dtype where a call on `x` runs inside an autocast region enabled for x's
    device (float64 parameters excepted, as autocast leaves float64 alone), else None."""
    device_type = x.device.type
    if (params.dtype != torch.float64 and device_type in _AUTOCAST_DEVICE_TYPES
            and torch.is_autocast_enabled(device_type)):
        return torch.get_autocast_dtype(device_type)
    return None


def call_table_dtype(x, params, table_dtype):
    """The table dtype of a layer call on `x` (table_dtype_of_call in the current autocast
    state)."""
    return table_dtype_of_call(params, table_dtype, _autocast_dtype(x, params))


def layer_kernel_applies(op_name, x, params, borders):
    """Whether a layer call runs the CUDA kernels: they take float32 borders and
    float32/float16/bfloat16 parameters, and any floating x is converted to float32 for them
    (kernel_applies is the narrower float32-only test of the tuner). The layers store call
    plans for such calls (lmKAN/_call_plans.py)."""
    return (x.is_cuda and params.dtype in TABLE_DTYPES and borders.dtype == torch.float32
            and x.dtype.is_floating_point and kernel_available(op_name))


_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _run_layer(x, params, table_dtype, kernel, reference):
    """The mixed-precision policy of both layer ops (README "Mixed precision"): the call's
    table dtype (table_dtype_of_call), then kernel(x32, table, out16) where the kernels apply,
    else reference(x, params) on the table rounded to that dtype. Cells, weights and sums are
    float32 (or float64) either way. The output dtype follows nn.Linear: autocast's dtype
    inside an autocast region enabled for x's device, else x's dtype. out16 is that dtype
    where it is float16 or bfloat16, else None: a kernel op that can return y in it does
    (lmkan2d: y's gradient then reaches its backward in 16 bits); the others return float32."""
    autocast_dtype = _autocast_dtype(x, params)
    out_dtype = x.dtype if autocast_dtype is None else autocast_dtype
    table = table_dtype_of_call(params, table_dtype, autocast_dtype)
    no_autocast = _NO_CONTEXT if autocast_dtype is None else torch.autocast(x.device.type,
                                                                           enabled=False)
    with no_autocast:
        if kernel is not None:
            out16 = out_dtype if out_dtype in _SIXTEEN_BIT else None
            y = kernel(x.to(torch.float32).contiguous(), None if table == params.dtype else table,
                       out16)
        else:
            if table != params.dtype and params.dtype != torch.float64:
                params = rounded_table(params, table)
            y = reference(x.to(params.dtype), params)
    return y.to(out_dtype)


def _check_images_on_kernels(op, x, params, borders, applies):
    """Images (3-D x) have no pure-PyTorch path: the reference takes 2-D inputs."""
    if x.dim() == 3 and not applies:
        raise ValueError(f"{op}: images x [N, N_in, L] run on the CUDA kernels only (a floating "
                         f"CUDA x, float32, float16 or bfloat16 params, float32 borders); got "
                         f"x {x.dtype} on {x.device}, params {params.dtype}, borders "
                         f"{borders.dtype}")


def lmkan2d(x, params, borders, batch_last=True, tile_size=8, block_size=1024,
            backward_tile_size=8, backward_block_size=512, backward_fast_mode=False,
            deterministic=False, table_dtype=None):
    """2D lookup layer (docs/spec.md section 2). x: [N_in, B] or [B, N_in] (2-D), or
    batch-last images [N, N_in, L] (batch_last=True; y is then [N, N_out, L]: docs/spec.md,
    "Layouts"), on the CUDA kernels only.

    deterministic: the CUDA backward uses no float atomics (bitwise reproducible gradients).
    table_dtype: None, torch.float32, torch.float16 or torch.bfloat16, the dtype the table's
    values are rounded to (table_dtype_of_call); cells, weights and sums are float32 either
    way, and the parameter gradient is accumulated in float32 and returned in the
    parameters' dtype. The output dtype follows nn.Linear: autocast's dtype inside an
    autocast region enabled for x's device, else x's dtype.
    """
    def run_kernel(x32, table, out16):
        return torch.ops.lmkan.lmkan2d(
            x32, params.contiguous(), borders.contiguous(), batch_last, tile_size, block_size,
            backward_tile_size, backward_block_size, backward_fast_mode, bool(deterministic), table,
            out16)

    applies = layer_kernel_applies("lmkan2d_forward", x, params, borders)
    _check_images_on_kernels("lmkan2d", x, params, borders, applies)
    return _run_layer(x, params, table_dtype, run_kernel if applies else None,
                      lambda xr, pr: _reference.lmkan2d_forward(xr, pr, borders, batch_last))


def lmkan1d(x, params, borders, uniform_grid=False, batch_last=True, deterministic=None,
            table_dtype=None):
    """1D linear-spline layer (docs/spec.md section 4). x: [N_in, B] or [B, N_in] (2-D), or
    batch-last images [N, N_in, L] as lmkan2d's (its backward runs on batch-last copies).

    deterministic: bitwise-reproducible backward on CUDA (a fixed-order reduction of the
    parameter gradient instead of atomics); None follows
    torch.are_deterministic_algorithms_enabled() at call time.
    table_dtype: as lmkan2d's (the forward reads the rounded table in that dtype; grad_x
    reads float32 slopes of the rounded values).
    """
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    def run_kernel(x32, table, _out16):
        return torch.ops.lmkan.lmkan1d(x32, params.contiguous(), borders.contiguous(),
                                       uniform_grid, batch_last, bool(deterministic), table)

    applies = layer_kernel_applies("lmkan1d_forward", x, params, borders)
    _check_images_on_kernels("lmkan1d", x, params, borders, applies)
    return _run_layer(x, params, table_dtype, run_kernel if applies else None,
                      lambda xr, pr: _reference.lmkan1d_forward(xr, pr, borders, uniform_grid,
                                                                batch_last))


def lmkan2d_forward_images(x, params, borders, tile_size=8, block_size=1024, table_dtype=None):
    """The 2D layer on batch-last images: x [N, N_in, L] -> y [N, N_out, L], where image n is
    the batch-last matrix x[n] (an NCHW tensor viewed with L = H*W, read in place; docs/spec.md,
    "Layouts"). CUDA kernels only and forward only: no autograd (lmkan2d takes images with
    its autograd; lmKAN.conv's 1D layer uses lmkan1d_forward_images where no gradient is
    needed). Mixed precision as lmkan2d's."""
    def run_kernel(x32, table, _out16):
        return torch.ops.lmkan.lmkan2d_forward(x32, params.contiguous(), borders.contiguous(),
                                               True, tile_size, block_size, table)

    return _run_layer(x, params, table_dtype, run_kernel, None)


def lmkan1d_forward_images(x, params, borders, uniform_grid=False, table_dtype=None):
    """The 1D layer on batch-last images x [N, N_in, L] -> y [N, N_out, L], as
    lmkan2d_forward_images (CUDA kernels only, forward only)."""
    def run_kernel(x32, table, _out16):
        return torch.ops.lmkan.lmkan1d_forward(x32, params.contiguous(), borders.contiguous(),
                                               uniform_grid, True, table)

    return _run_layer(x, params, table_dtype, run_kernel, None)


# The regularisers' ops, resolved once (None without the kernels): a layer calls them every
# training step, so the per-call Python work is kept to the tests below and one op call.
# The ops accept non-contiguous tables (the kernels' host code makes them contiguous).
_HESSIAN2D_OP = (torch.ops.lmkan.hessian2d.default
                 if has_cuda_kernel("hessian2d") and has_cuda_kernel("hessian2d_backward") else None)
_HESSIAN2D_SUM_OP = (torch.ops.lmkan.hessian2d_sum.default
                     if has_cuda_kernel("hessian2d_sum") and has_cuda_kernel("hessian2d_sum_backward")
                     else None)
_SECOND_DIFF1D_OP = (torch.ops.lmkan.second_diff1d.default
                     if has_cuda_kernel("second_diff1d") and has_cuda_kernel("second_diff1d_backward")
                     else None)


def _regulariser_kernel_applies(op, params, borders):
    return (op is not None and params.is_cuda and params.dtype == torch.float32
            and borders.dtype == torch.float32)


def hessian2d(params, borders):
    """Hessian smoothness regulariser of a 2D table (docs/spec.md section 3), a 0-dim tensor."""
    if _regulariser_kernel_applies(_HESSIAN2D_OP, params, borders):
        return _HESSIAN2D_OP(params, borders)
    return _reference.hessian2d(params, borders)


def hessian2d_sum(params_list, borders_list, weight=1.0):
    """weight times the sum of hessian2d over 2D tables (a model's 2D layers), a 0-dim tensor.

    Tables on one CUDA device in float32 take one op call: one value launch and one final
    sum for up to 8 tables, one gradient launch in the backward (where a call per table takes
    two or three launches and an add each: a small training step is bound by its launches);
    a number weight is applied inside those launches (one table too: the single-table
    kernels). A tensor weight, or any weight under torch.compile, multiplies the op's sum
    (the op's float argument would detach a tensor and sync the host, and a traced float
    would be specialised). Any other mix of tables is the sum of hessian2d per table, in
    order, times the weight.
    """
    params_list, borders_list = list(params_list), list(borders_list)
    if len(params_list) != len(borders_list) or not params_list:
        raise ValueError(f"hessian2d_sum: params_list and borders_list must be lists of the same, "
                         f"non-zero length, got {len(params_list)} and {len(borders_list)}")
    device = params_list[0].device
    multiply = isinstance(weight, torch.Tensor) or weight != 1.0
    if all(
            _regulariser_kernel_applies(_HESSIAN2D_SUM_OP, p, b) and p.device == device
            for p, b in zip(params_list, borders_list)):
        if not (isinstance(weight, torch.Tensor) or torch.compiler.is_compiling()):
            return _HESSIAN2D_SUM_OP(params_list, borders_list, float(weight))
        total = _HESSIAN2D_SUM_OP(params_list, borders_list, 1.0)
        return weight * total if multiply else total
    total = hessian2d(params_list[0], borders_list[0])
    for params, borders in zip(params_list[1:], borders_list[1:]):
        total = total + hessian2d(params, borders)
    return weight * total if multiply else total


def second_diff1d(params, borders):
    """Second-difference regulariser of a 1D table (docs/spec.md section 4), a 0-dim tensor."""
    if _regulariser_kernel_applies(_SECOND_DIFF1D_OP, params, borders):
        return _SECOND_DIFF1D_OP(params, borders)
    return _reference.second_diff1d(params, borders)
