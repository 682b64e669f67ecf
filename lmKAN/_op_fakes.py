"""The kernel ops' fake implementations (torch.library.register_fake): shape propagation
for torch.compile and torch.export, and each kernel's argument checks written again in Python,
in the kernel's order, so that a bad call raises at trace time the error eager raises
(csrc/common/checks.h and each op's host code). Registered on import where the extension is
loaded; CPU tensors get an error that points to the pure-PyTorch path (lmKAN.ops)."""
import torch

from ._checks import (INT32_MAX, MAX_TABLE_SIDE_2D, TABLE_DTYPES, check_input_features,
                      check_pair_features)
from ._extension import _MODULE, KERNEL_OPS


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
