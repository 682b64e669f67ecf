"""LMKAN1DLayer (linear-spline KAN, docs/spec.md section 4) and the KANditioned-style KANLayer."""
import torch
from torch import nn

from . import _device, ops
from ._call_plans import may_store_plan, plan_of_call
from ._checks import (INT32_MAX, check_bool, check_choice, check_input, check_int,
                      check_positive_float, check_table_dtype)
from ._layer_base import LookupLayerBase
from .grids import cdf_borders, cell_nodes, uniform_borders

__all__ = ["LMKAN1DLayer", "KANLayer", "INIT_MODES", "GRIDS"]

INIT_MODES = ("random_normal", "identity", "zero")
GRIDS = ("cdf", "uniform")
# KANditioned's `impl` values (its releases differ): accepted by KANLayer, without effect.
KANDITIONED_IMPLS = ("sparse_matmul", "sparse_matmul_csr", "embedding_bag", "embedding")


class LMKAN1DLayer(LookupLayerBase):
    """y[o] = sum over inputs i of f_{o,i}(x[i]), each f piecewise linear on a fixed grid.

    Args:
        num_grids: grid cells G (>= 3); each function has G+1 node values.
        input_dim, output_dim: feature counts (>= 1).
        grid: "cdf" (Laplace-CDF nodes, default) or "uniform" (G+1 nodes on
            [-spline_width/2, spline_width/2]).
        spline_width: width of the uniform grid (ignored by the cdf grid).
        init: "random_normal" (straight lines with unit-norm random slopes per output),
            "identity" (y = x exactly; needs input_dim == output_dim) or "zero".
        batch_last: x is [input_dim, B] (default) or, if False, [..., input_dim].
        deterministic: bitwise-reproducible CUDA backward (fixed-order reduction of the
            parameter gradient instead of atomics, a little slower and a workspace of a few
            parameter-sized buffers); None (default) follows
            torch.are_deterministic_algorithms_enabled() at call time.
        table_dtype: the dtype the table's values are rounded to when the layer runs, as
            LMKAN2DLayer's: None (default) follows autocast's dtype inside an autocast region
            and the parameters' dtype elsewhere; torch.float32 keeps float32 tables under
            autocast; torch.float16 / torch.bfloat16 round the table outside autocast too.
            On CUDA the forward reads the 16-bit table (half the shared-memory bytes) and
            grad_x float32 slopes of the rounded values; cells, weights and sums stay
            float32, and the parameter gradient is accumulated in float32.

    Beyond the end nodes each function extrapolates linearly. `func_parameter` has shape
    [G+1, output_dim, input_dim].
    """

    def __init__(self, num_grids, input_dim, output_dim, grid="cdf", spline_width=4.0,
                 init="random_normal", batch_last=True, deterministic=None, table_dtype=None):
        super().__init__()
        self.num_grids = check_int("num_grids", num_grids, 3)
        self.input_dim = check_int("input_dim", input_dim, 1, maximum=INT32_MAX,
                                   why=" (inputs are counted in 32 bits)")
        self.output_dim = check_int("output_dim", output_dim, 1, maximum=INT32_MAX,
                                    why=" (outputs are counted in 32 bits)")
        self.grid = check_choice("grid", grid, GRIDS)
        self.spline_width = check_positive_float("spline_width", spline_width)
        self.init = check_choice("init", init, INIT_MODES)
        if init == "identity" and self.input_dim != self.output_dim:
            raise ValueError(f"init='identity' needs input_dim == output_dim, got input_dim="
                             f"{self.input_dim} and output_dim={self.output_dim}")
        self.batch_last = check_bool("batch_last", batch_last)
        self.deterministic = check_bool("deterministic", deterministic, (None,))
        self.table_dtype = check_table_dtype(table_dtype)
        self.func_parameter = nn.Parameter(torch.empty(self.num_grids + 1, self.output_dim, self.input_dim))
        self.register_buffer("borders", self.grid_nodes())
        self.reset_parameters()

    def grid_nodes(self):
        """The float32 nodes of this layer's grid (uniform or CDF, num_grids cells)."""
        if self.grid == "uniform":
            return uniform_borders(self.num_grids, self.spline_width)
        return cdf_borders(self.num_grids)

    def grid_description(self):
        if self.grid == "uniform":
            half = self.spline_width / 2
            return (f"the uniform grid of num_grids={self.num_grids} on [{-half:g}, {half:g}] "
                    f"({self.num_grids + 1} nodes, spline_width={self.spline_width:g})")
        return f"the CDF grid of num_grids={self.num_grids} ({self.num_grids + 1} nodes)"

    def reset_parameters(self):
        with torch.no_grad():
            if self.init == "zero":
                self.func_parameter.zero_()
                return
            if self.init == "identity":
                slopes = torch.eye(self.output_dim)
            else:
                slopes = torch.randn(self.output_dim, self.input_dim)
                slopes /= slopes.norm(dim=1, keepdim=True)
            # Node values of the straight line f(v) = slope * v.
            nodes = self._node_positions()[:, None, None] * slopes.to(torch.float64)
            self.func_parameter.copy_(nodes)

    def _node_positions(self):
        """Node positions as the cell formula sees them, in float64 (grids.cell_nodes):
        identity and straight-line inits then reproduce v to rounding."""
        return cell_nodes(self.borders, self.grid == "uniform", torch.float64)

    # Assigning one of these drops the layer's call plans (lmKAN/_call_plans.py).
    PLAN_SETTINGS = frozenset({"batch_last", "deterministic", "grid", "table_dtype"})

    def _forward_general(self, x, params, key):
        """Checks, the shared-memory limit, mixed precision and the backend choice; stores
        the call's plan where later calls may reuse it."""
        x2d, lead = check_input(x, params, self.input_dim, self.batch_last, type(self).__name__)
        borders = self.borders
        kernel_runs = ops.layer_kernel_applies("lmkan1d_forward", x2d, params, borders)
        if x2d.is_cuda and ops.kernel_available("lmkan1d_forward"):
            self._check_fits_on_device(x2d.device)
        deterministic = (torch.are_deterministic_algorithms_enabled() if self.deterministic is None
                         else self.deterministic)
        # the call's table dtype (getattr: None for layers pickled before table_dtype)
        table = ops.call_table_dtype(x2d, params, getattr(self, "table_dtype", None))
        plan = (self.grid == "uniform", self.batch_last, deterministic, table)
        y = ops.lmkan1d(x2d, params, borders, *plan)
        if may_store_plan(key, x, kernel_runs):
            self._call_plans[key] = plan_of_call(x, y, plan)
        return y if lead is None else y.reshape(*lead, self.output_dim)

    def _forward_images(self, x):
        """The layer on batch-last images x [N, input_dim, L] -> [N, output_dim, L]
        (ops.lmkan1d_forward_images: CUDA kernels, no autograd)."""
        self._check_fits_on_device(x.device)
        return ops.lmkan1d_forward_images(x, self.func_parameter, self.borders,
                                          self.grid == "uniform",
                                          getattr(self, "table_dtype", None))

    def _check_fits_on_device(self, device):
        """Raise before launch when num_grids exceeds what the 1D kernels support on `device`."""
        if not ops.kernel_available("lmkan1d_max_num_grids", "CompositeExplicitAutograd"):
            return
        limit = _max_num_grids_1d(device)
        if self.num_grids > limit:
            raise ValueError(f"num_grids={self.num_grids} does not fit in shared memory on "
                             f"{torch.cuda.get_device_name(device)}: the 1D CUDA kernels support "
                             f"num_grids <= {limit}")

    def get_hessian_regularization(self):
        """Squared second difference of every spline on its grid (docs/spec.md section 4)."""
        return ops.second_diff1d(self.func_parameter, self.borders)

    def extra_repr(self):
        return (f"num_grids={self.num_grids}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
                f"grid={self.grid!r}, init={self.init!r}, batch_last={self.batch_last}"
                + ("" if getattr(self, "table_dtype", None) is None
                   else f", table_dtype={self.table_dtype}"))

    def plot_functions(self, path, pairs=None, **kwargs):
        """Save the learned splines as curves to `path` (needs matplotlib); see
        lmKAN.plotting.plot_1d_functions for `pairs` and the other options."""
        from .plotting import plot_1d_functions
        return plot_1d_functions(self, path, pairs=pairs, **kwargs)


# A constant to torch.compile (fixed per device), so the check does not break the graph.
@torch.compiler.assume_constant_result
def _max_num_grids_1d(device):
    """Largest num_grids of the 1D CUDA kernels on a CUDA device (cached per device)."""
    return _device.max_num_grids_1d(device)


class KANLayer(LMKAN1DLayer):
    """Drop-in for KANditioned's KANLayer: batch-first, uniform grid of num_control_points.

    KANLayer(in_features, out_features, init, num_control_points=32, spline_width=4.0,
    variant="B-spline", impl=..., *, deterministic=None, table_dtype=None)
    is LMKAN1DLayer(num_control_points - 1, in_features, out_features, grid="uniform",
    spline_width=spline_width, init=init, batch_last=False); `deterministic` and
    `table_dtype` as there (keyword-only). KANditioned's arguments keep their positions: `variant` must be
    "B-spline" (the piecewise-linear spline these kernels compute; "parallel_scan" and "DCT"
    are other parameterisations and raise), `impl` names one of KANditioned's
    implementations and has no effect here (one set of kernels serves every call).

    A KANditioned state dict (`kan_weight` [in, K, out] with its buffers `local_bias` and
    `feature_offset`) loads into a KANLayer of the same sizes, num_control_points K and
    spline_width, and gives the same outputs as KANditioned's embedding-bag forward.
    KANditioned's inits put node k at (k - (K-1)/2) * slope, i.e. a slope of
    (K-1)/spline_width in x: its "identity" is y = x (K-1)/spline_width, where lmKAN's
    "identity" is y = x.
    """

    def __init__(self, in_features, out_features, init="random_normal", num_control_points=32,
                 spline_width=4.0, variant="B-spline", impl="sparse_matmul", *,
                 deterministic=None, table_dtype=None):
        num_control_points = check_int("num_control_points", num_control_points, 4)
        if variant != "B-spline":
            raise ValueError(f"variant must be 'B-spline' (KANditioned's piecewise-linear spline, "
                             f"which lmKAN computes); its 'parallel_scan' and 'DCT' variants are "
                             f"not supported, got {variant!r}")
        check_choice("impl", impl, KANDITIONED_IMPLS)
        super().__init__(num_control_points - 1, in_features, out_features, grid="uniform",
                         spline_width=spline_width, init=init, batch_last=False,
                         deterministic=deterministic, table_dtype=table_dtype)
        self.in_features = self.input_dim
        self.out_features = self.output_dim
        self.num_control_points = num_control_points
        self.variant, self.impl = variant, impl

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A KANditioned checkpoint: its table kan_weight [in, K, out] is this layer's
        # func_parameter [K, out, in]; its buffers hold only index arithmetic.
        weight_key = prefix + "kan_weight"
        if weight_key in state_dict and prefix + "func_parameter" not in state_dict:
            state_dict = dict(state_dict)
            weight = state_dict.pop(weight_key)
            for name in ("local_bias", "feature_offset"):
                state_dict.pop(prefix + name, None)
            expected = (self.input_dim, self.num_control_points, self.output_dim)
            if tuple(weight.shape) != expected:
                error_msgs.append(f"{weight_key}: a KANditioned table of shape [in_features, "
                                  f"num_control_points, out_features] = {list(expected)} was "
                                  f"expected, got {list(weight.shape)}")
                return
            state_dict[prefix + "func_parameter"] = weight.permute(1, 2, 0)
            state_dict.setdefault(prefix + "borders", self.grid_nodes())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def visualize_all_mappings(self, save_path=None, pairs=None):
        """KANditioned's method: the (input, output) splines in one figure, saved to
        `save_path` (needs matplotlib). Returns the figure. As plot_functions, it draws the
        first 8 inputs x the first 8 outputs by default (the title says so when the layer
        has more); pairs="all" draws every spline (a 256 -> 256 layer has 65,536)."""
        import os
        import tempfile

        from .plotting import plot_1d_functions
        if save_path is not None:
            return plot_1d_functions(self, save_path, pairs=pairs, title="KAN Layer Mappings")["figure"]
        with tempfile.TemporaryDirectory() as tmp:
            return plot_1d_functions(self, os.path.join(tmp, "mappings.png"), pairs=pairs,
                                     title="KAN Layer Mappings")["figure"]


# The differentiable layer op (csrc/lmkan1d/autograd.cpp) that the layer's call plans run
# (lmKAN/_call_plans.py); None without the extension: every call takes the general path.
LMKAN1DLayer.PLANNED_OP = torch.ops.lmkan.lmkan1d.default if ops.kernel_available("lmkan1d_forward") else None
