"""The lmKAN ops as Python functions: CUDA kernels where compiled in, reference elsewhere.

Each public function here picks the backend per call: a CUDA float32 tensor runs the
`torch.ops.lmkan.*` kernel when the extension has one for that op; any other tensor (CPU,
float64, or an op without a kernel) runs the differentiable pure-PyTorch reference.
The kernels get `register_fake` (shape propagation for torch.compile) registrations below.
Their autograd is registered in C++ (csrc/lmkan2d/autograd.cpp, csrc/lmkan1d/autograd.cpp,
csrc/regularizers/autograd.cpp): a Python autograd wrapper's host time was most
of a small training step, so the Python side of each op is one `torch.ops` call.
"""
import contextlib

import torch

from . import _reference
from ._checks import TABLE_DTYPES, check_input_features, check_pair_features
from ._extension import _MODULE, KERNEL_OPS, has_cuda_kernel

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


def _dtype_name(dtype):
    """A dtype as the kernels' messages print it (its c10::ScalarType name: "Float", "Half",
    "BFloat16", ...), so a fake's message is the kernel's own; torch's legacy tensor type
    name carries it ("torch.HalfTensor"). Error paths only."""
    return torch.empty((), dtype=dtype).type().removeprefix("torch.").removesuffix("Tensor")


def _check_table_dtype(op, table_dtype):
    """resolve_table_dtype (csrc/common/checks.h), where each op calls it: None (the
    parameters' dtype, checked with them) or float32, float16 or bfloat16."""
    torch._check_type(table_dtype is None or table_dtype in TABLE_DTYPES,
                      lambda: f"{op}: table_dtype must be float32, float16 or bfloat16, got "
                              f"{_dtype_name(table_dtype)}")


def _check_layer_tensors(x, params, borders, params_dims, images=False):
    """The kernels' shape checks (csrc/common/checks.h), for the fake implementations: under
    torch.compile a bad call raises the ValueError that eager raises, at trace time.
    images: x may also be 3-D, [N, N_in, L] (the forward and backward ops;
    csrc/common/images.h)."""
    if images:
        torch._check_value(x.dim() in (2, 3), lambda: f"x must have 2 dimensions ([N_in, B] or "
                                                      f"[B, N_in]) or 3 ([N, N_in, L]: images, "
                                                      f"batch_last), got shape {list(x.shape)}")
    for name, t, dims in (("x", x, 2), ("params", params, params_dims), ("borders", borders, 1)):
        if name == "x" and images:
            continue
        torch._check_value(t.dim() == dims, lambda: f"{name} must have {dims} dimensions, got "
                                                    f"shape {list(t.shape)}")


def _check_images_layout(op, x, batch_last):
    """A 3-D x of a forward op holds images [N, N_in, L], which are batch-last."""
    torch._check_value(x.dim() == 2 or batch_last,
                       lambda: f"{op}: a 3-D x ([N, N_in, L] images) is batch-last; got "
                               f"batch_last=False with x of shape {list(x.shape)}")


# The ops' size limits (csrc/lmkan2d/plan.h kMaxTableSide; ints narrowed in the host code).
MAX_TABLE_SIDE_2D = 4000
INT32_MAX = 2 ** 31 - 1


def _check_2d(op, x, params, borders, batch_last, tile_size, block_size, images=False):
    """lmkan2d_forward's and lmkan2d_backward's shape checks (csrc/lmkan2d/forward.cpp,
    check_common; the table dtype: _check_table_dtype); images: a 3-D x (batch-last
    images)."""
    _check_layer_tensors(x, params, borders, 4, images)
    _check_images_layout(op, x, batch_last)
    torch._check_type(params.dtype in TABLE_DTYPES,
                      lambda: f"params must be float32, float16 or bfloat16, got "
                              f"{_dtype_name(params.dtype)}")
    torch._check_value(tile_size in (4, 8, 16),
                       lambda: f"{op}: tile_size must be 4, 8 or 16, got {tile_size}")
    torch._check_value(32 <= block_size <= 1024 and block_size % 32 == 0,
                       lambda: f"{op}: block_size must be a multiple of 32 in [32, 1024], got "
                               f"{block_size}")
    side = params.shape[0]
    torch._check_value(side >= 4 and params.shape[1] == side,
                       lambda: f"{op}: params must be [G+1, G+1, N_out, N_in/2] with G >= 3, "
                               f"got shape {list(params.shape)}")
    torch._check_value(borders.shape[0] == side,
                       lambda: f"{op}: borders must have G+1={side} entries, got {borders.shape[0]}")
    torch._check_value(side <= MAX_TABLE_SIDE_2D,
                       lambda: f"{op}: num_grids must be at most {MAX_TABLE_SIDE_2D - 1} (the "
                               f"kernels' table offsets are 32-bit), got {side - 1}")
    torch._check_value(params.shape[3] >= 1,
                       lambda: f"{op}: params must hold at least one input pair (N_in/2 >= 1), "
                               f"got shape {list(params.shape)}")
    torch._check_value(params.shape[2] <= INT32_MAX and params.shape[3] <= INT32_MAX,
                       lambda: f"{op}: output_dim and input_dim/2 must be below 2^31, got params "
                               f"shape {list(params.shape)}")
    check_pair_features(op, x, params.shape[3], batch_last)
    torch._check_value(params.shape[2] >= 1,
                       lambda: f"{op}: output_dim must be >= 1, got {params.shape[2]}")


def _check_1d(x, params, borders, batch_last, images=False):
    """lmkan1d_forward's and lmkan1d_backward's shape checks (csrc/lmkan1d/ops.cpp,
    check_args; the table dtype: _check_table_dtype); images: a 3-D x (batch-last images)."""
    _check_layer_tensors(x, params, borders, 3, images)
    _check_images_layout("lmkan1d", x, batch_last)
    torch._check_type(params.dtype in TABLE_DTYPES,
                      lambda: f"params must be float32, float16 or bfloat16, got "
                              f"{_dtype_name(params.dtype)}")
    torch._check_value(params.shape[0] >= 2,
                       lambda: f"params must have at least 2 node rows (G+1), got shape "
                               f"{list(params.shape)}")
    torch._check_value(borders.shape[0] == params.shape[0],
                       lambda: f"borders must have G+1 = {params.shape[0]} entries "
                               f"(params.size(0)), got {borders.shape[0]}")
    torch._check_value(params.shape[1] >= 1 and params.shape[2] >= 1,
                       lambda: f"params must hold at least one output and one input ([G+1, N_out, "
                               f"N_in]), got shape {list(params.shape)}")
    torch._check_value(max(params.shape) <= INT32_MAX,
                       lambda: f"params dims must be below 2^31, got shape {list(params.shape)}")
    check_input_features(x, params.shape[2], batch_last)


def _check_grad_y(op, grad_y, x, n_out, batch_last, sixteen_bit=False):
    """A backward op's grad_y (csrc/common/checks.h, check_grad_y): float32 (sixteen_bit:
    float16 and bfloat16 too), [N_out, B] (batch_last) or [B, N_out], and [N, N_out, L] for
    images x [N, N_in, L]."""
    if sixteen_bit:
        torch._check_type(grad_y.dtype in TABLE_DTYPES,
                          lambda: f"grad_y must be float32, float16 or bfloat16, got "
                                  f"{_dtype_name(grad_y.dtype)}")
    else:
        torch._check_type(grad_y.dtype == torch.float32,
                          lambda: f"grad_y must be float32, got {_dtype_name(grad_y.dtype)}")
    if x.dim() == 3:
        expected = [x.shape[0], n_out, x.shape[2]]
        torch._check_value(grad_y.dim() == 3 and list(grad_y.shape) == expected,
                           lambda: f"{op}: grad_y of images x {list(x.shape)} must have shape "
                                   f"[N, N_out, L] = {expected}, got {list(grad_y.shape)}")
        return
    torch._check_value(grad_y.dim() == 2, lambda: f"grad_y must have 2 dimensions, got shape "
                                                  f"{list(grad_y.shape)}")
    batch = x.shape[1] if batch_last else x.shape[0]
    rows, cols = (n_out, batch) if batch_last else (batch, n_out)
    torch._check_value(grad_y.shape[0] == rows and grad_y.shape[1] == cols,
                       lambda: f"{op}: grad_y must have shape "
                               f"{'[N_out, B]' if batch_last else '[B, N_out]'} = [{rows}, "
                               f"{cols}], got {list(grad_y.shape)}")


# The regularisers' table checks (csrc/regularizers/common.cu check_table, check_grad_r;
# hessian2d_ops.cpp check_tables).
MAX_REGULARISER_NODES = 4000
TABLE_SHAPE_TEXT = {4: "[G+1, G+1, N_out, N_in/2]", 3: "[G+1, N_out, N_in]"}


def _check_table(params, borders, dims):
    """One table of hessian2d (dims 4) or second_diff1d (dims 3), in check_table's order."""
    shape = TABLE_SHAPE_TEXT[dims]
    torch._check_type(params.dtype == torch.float32,
                      lambda: f"params must be float32, got {_dtype_name(params.dtype)}")
    torch._check_type(borders.dtype == torch.float32,
                      lambda: f"borders must be float32, got {_dtype_name(borders.dtype)}")
    torch._check_value(params.dim() == dims, lambda: f"params must have shape {shape}, got shape "
                                                     f"{list(params.shape)}")
    torch._check_value(borders.dim() == 1, lambda: f"borders must have 1 dimensions, got shape "
                                                   f"{list(borders.shape)}")
    nodes = borders.shape[0]
    torch._check_value(3 <= nodes <= MAX_REGULARISER_NODES,
                       lambda: f"borders must hold G+1 nodes with 3 <= G+1 <= "
                               f"{MAX_REGULARISER_NODES}, got {nodes}")
    torch._check_value(all(params.shape[d] == nodes for d in range(dims - 2)),
                       lambda: f"params must have shape {shape} with G+1 = borders.size(0) = "
                               f"{nodes}, got shape {list(params.shape)}")


def _check_tables(op, params_list, borders_list):
    """hessian2d_sum's lists of 2D tables (hessian2d_ops.cpp, check_tables)."""
    torch._check_value(len(params_list) == len(borders_list) and len(params_list) > 0,
                       lambda: f"{op}: params and borders must be lists of the same, non-zero "
                               f"length, got {len(params_list)} and {len(borders_list)}")
    for params, borders in zip(params_list, borders_list):
        _check_table(params, borders, 4)


def _check_grad_r(grad_r):
    torch._check_type(grad_r.dtype == torch.float32,
                      lambda: f"grad_r must be float32, got {_dtype_name(grad_r.dtype)}")
    torch._check_value(grad_r.numel() == 1, lambda: f"grad_r must be a 0-dim tensor (one "
                                                    f"element), got shape {list(grad_r.shape)}")


def _check_weights(op, x, weights):
    """The second-derivative ops' weights: x's shape (csrc/common/checks.h, check_like_x)."""
    torch._check_value(weights.shape == x.shape, lambda: f"{op}: weights must have x's shape "
                                                         f"{list(x.shape)}, got "
                                                         f"{list(weights.shape)}")


def _layer_output(x, n_out, batch_last):
    if x.dim() == 3:  # images [N, N_in, L] -> [N, N_out, L]
        return x.new_empty((x.shape[0], n_out, x.shape[2]))
    batch = x.shape[1] if batch_last else x.shape[0]
    return x.new_empty((n_out, batch) if batch_last else (batch, n_out))


def _register():
    """Fake registrations for the kernel ops whose schemas the extension declares. The layer
    ops lmkan2d and lmkan1d need none: below autograd they run lmkan2d_forward /
    lmkan1d_forward (csrc/*/autograd.cpp), whose fakes are these."""
    lib = "lmkan::"

    # --- 2D layer -------------------------------------------------------------------
    # Each fake makes its kernel's checks in the kernel's order (the first failing check
    # names the error): shapes, then table_dtype (resolve_table_dtype), then grad_y,
    # except where noted.
    @torch.library.register_fake(lib + "lmkan2d_forward")
    def _(x, params, borders, batch_last, tile_size, block_size, table_dtype=None):
        _check_2d("lmkan2d_forward", x, params, borders, batch_last, tile_size, block_size,
                  images=True)
        _check_table_dtype("lmkan2d_forward", table_dtype)
        return _layer_output(x, params.shape[2], batch_last)

    @torch.library.register_fake(lib + "lmkan2d_backward")
    def _(grad_y, x, params, borders, batch_last, tile_size, block_size, fast_mode,
          deterministic=False, table_dtype=None, grad_params=True):
        _check_2d("lmkan2d_backward", x, params, borders, batch_last, tile_size, block_size,
                  images=True)
        _check_table_dtype("lmkan2d_backward", table_dtype)
        _check_grad_y("lmkan2d_backward", grad_y, x, params.shape[2], batch_last,
                      sixteen_bit=True)
        return torch.empty_like(x), _grad_params_like(params, grad_params)

    # the pieces of lmkan2d_backward's derivatives (csrc/lmkan2d/autograd.cpp): tile 8,
    # block 512 (csrc/lmkan2d/layout.h, kSlopeTile)
    def _check_slopes(op, x, weights, params, borders, batch_last):
        _check_2d(op, x, params, borders, batch_last, 8, 512)
        _check_weights(op, x, weights)

    @torch.library.register_fake(lib + "lmkan2d_slope_forward")
    def _(x, weights, params, borders, batch_last, table_dtype=None):
        _check_slopes("lmkan2d_slope_forward", x, weights, params, borders, batch_last)
        _check_table_dtype("lmkan2d_slope_forward", table_dtype)
        return _layer_output(x, params.shape[2], batch_last)

    @torch.library.register_fake(lib + "lmkan2d_slope_grad_x")
    def _(grad_y, x, weights, params, borders, batch_last, table_dtype=None):
        _check_slopes("lmkan2d_slope_grad_x", x, weights, params, borders, batch_last)
        _check_grad_y("lmkan2d_slope_grad_x", grad_y, x, params.shape[2], batch_last)
        _check_table_dtype("lmkan2d_slope_grad_x", table_dtype)  # after grad_y, as there
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "lmkan2d_slope_grad_params")
    def _(grad_y, x, weights, params, borders, batch_last, deterministic=False):
        _check_slopes("lmkan2d_slope_grad_params", x, weights, params, borders, batch_last)
        _check_grad_y("lmkan2d_slope_grad_params", grad_y, x, params.shape[2], batch_last)
        return torch.empty_like(params)

    # --- 1D layer -------------------------------------------------------------------
    @torch.library.register_fake(lib + "lmkan1d_forward")
    def _(x, params, borders, uniform_grid, batch_last, table_dtype=None):
        _check_1d(x, params, borders, batch_last, images=True)
        _check_table_dtype("lmkan1d_forward", table_dtype)
        return _layer_output(x, params.shape[1], batch_last)

    @torch.library.register_fake(lib + "lmkan1d_backward")
    def _(grad_y, x, params, borders, uniform_grid, batch_last, deterministic=False,
          table_dtype=None, grad_params=True):
        _check_1d(x, params, borders, batch_last, images=True)
        _check_table_dtype("lmkan1d_backward", table_dtype)
        _check_grad_y("lmkan1d_backward", grad_y, x, params.shape[1], batch_last)
        return torch.empty_like(x), _grad_params_like(params, grad_params)

    # the pieces of lmkan1d_backward's derivatives (csrc/lmkan1d/autograd.cpp)
    @torch.library.register_fake(lib + "lmkan1d_slope_forward")
    def _(x, weights, params, borders, uniform_grid, batch_last, table_dtype=None):
        _check_1d(x, params, borders, batch_last)
        _check_weights("lmkan1d_slope_forward", x, weights)
        _check_table_dtype("lmkan1d_slope_forward", table_dtype)
        return _layer_output(x, params.shape[1], batch_last)

    @torch.library.register_fake(lib + "lmkan1d_slope_grad_params")
    def _(grad_y, x, weights, params, borders, uniform_grid, batch_last, deterministic=False):
        _check_1d(x, params, borders, batch_last)
        _check_grad_y("lmkan1d_slope_grad_params", grad_y, x, params.shape[1], batch_last)
        _check_weights("lmkan1d_slope_grad_params", x, weights)
        return torch.empty_like(params)

    # --- regularisers ------------------------------------------------------------------
    for name, table_dims in (("hessian2d", 4), ("second_diff1d", 3)):
        _register_regulariser_fakes(lib + name, table_dims)
    @torch.library.register_fake(lib + "hessian2d_sum")
    def _(params, borders, weight=1.0):
        _check_tables("hessian2d_sum", params, borders)
        return params[0].new_empty(())

    @torch.library.register_fake(lib + "hessian2d_sum_backward")
    def _(grad_r, params, borders, weight=1.0):
        _check_tables("hessian2d_sum_backward", params, borders)
        _check_grad_r(grad_r)
        return [p.new_empty(p.shape) for p in params]

    # --- CPU tensors: say where the CPU path is ---------------------------------------------
    for name, layer_op in KERNEL_OPS.items():
        torch.library.impl(lib + name, "CPU")(_cpu_refusal(name, layer_op))


def _grad_params_like(params, grad_params):
    """The backward ops' second output: like params, or empty (shape [0]) for grad_params=False
    (grad_x alone)."""
    return torch.empty_like(params) if grad_params else params.new_empty((0,))


def _cpu_refusal(name, layer_op):
    """The CPU 'kernel' of a CUDA-only op: an error that points to the CPU path (torch's own
    would only say that the op has no CPU kernel)."""
    def refuse(*args, **kwargs):
        raise NotImplementedError(
            f"torch.ops.lmkan.{name} runs on CUDA tensors only (its kernels are CUDA kernels); "
            f"on the CPU, lmKAN runs its pure-PyTorch reference: call the layers, or "
            f"lmKAN.ops.{layer_op}(...), which picks the kernel or the reference per call")
    return refuse


def _register_regulariser_fakes(qualname, table_dims):
    @torch.library.register_fake(qualname)
    def _(params, borders):
        _check_table(params, borders, table_dims)
        return params.new_empty(())

    # The kernel returns a contiguous gradient whatever the strides of params.
    @torch.library.register_fake(qualname + "_backward")
    def _(grad_r, params, borders):
        _check_table(params, borders, table_dims)
        _check_grad_r(grad_r)
        return params.new_empty(params.shape)


if _MODULE is not None:
    _register()
