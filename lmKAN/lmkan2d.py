"""LMKAN2DLayer: the lookup multivariate KAN layer (docs/spec.md section 2)."""
import math
import warnings

import torch
from torch import nn

from . import _device, ops, tuning
from ._call_plans import may_store_plan, plan_of_call
from ._checks import (INT32_MAX, MAX_TABLE_SIDE_2D, check_bool, check_choice, check_input,
                      check_int, check_real, check_table_dtype)
from ._constants import SUPPORTED_BLOCK_SIZES, SUPPORTED_TILE_SIZES
from ._layer_base import LookupLayerBase
from .grids import cdf_borders

__all__ = ["LMKAN2DLayer", "SUPPORTED_TILE_SIZES", "SUPPORTED_BLOCK_SIZES", "MAX_NUM_GRIDS"]

# The largest num_grids of a 2D layer: the ops take at most 4000 grid nodes (their table
# offsets are 32-bit; csrc/lmkan2d/plan.h, kMaxTableSide). Such a table has 16 million cells
# per function.
MAX_NUM_GRIDS = MAX_TABLE_SIDE_2D - 1


class LMKAN2DLayer(LookupLayerBase):
    """y[o] = sum over input pairs p of f_{o,p}(x[2p], x[2p+1]), each f a bilinear table.

    Args:
        num_grids: grid cells G per input (3 .. 3999); each function has (G+1)^2 values.
        input_dim: number of input features (even: inputs are taken in pairs).
        output_dim: number of outputs.
        block_size_forward, block_size_backward: CUDA threads per block.
        tile_size_forward, tile_size_backward: 4, 8 or 16: a block's output tile is
            8 * tile_size outputs (see Kernels below).
        init_scale: parameters start as U(-s/sqrt(input_dim), s/sqrt(input_dim)).
        backward_fast_mode: a faster backward that needs more memory: 3x longer
            cell-sorted chunks (not deterministic), or all of an SM's shared memory for the
            grad_params blocks (deterministic). See Kernels below.
            Tile sizes, block sizes and backward_fast_mode accept "auto" (the default for
            tile and block sizes): timed once per GPU model and shape on the first CUDA
            call, then cached on disk (lmKAN.tuning; lmKAN.tune() does it ahead of time).
        batch_last: x is [input_dim, B] and y [output_dim, B] (default, as the original
            lmKAN); False: x is [..., input_dim] and y [..., output_dim] like nn.Linear.
        deterministic: True: the backward uses no float atomics (partials are summed in a
            fixed order), so gradients are bitwise reproducible; False: atomics where they
            are faster; None (default): follow torch.are_deterministic_algorithms_enabled()
            at each call.
        table_dtype: the dtype the table's values are rounded to when the layer runs: None
            (default) follows autocast's dtype inside an autocast region and the
            parameters' dtype elsewhere (float32 as before; float16/bfloat16 after
            `.half()` / `.to(torch.bfloat16)`); torch.float32 keeps float32 tables under
            autocast; torch.float16 or torch.bfloat16 rounds the table outside autocast too
            (16-bit inference of a float32 layer). Cells, weights and sums stay float32; on
            CUDA the forward reads 16-bit tables as such (half the shared-memory bytes).
            README, "Mixed precision", has the measured speed and error of each.

    Kernels: every 2D kernel works on output tiles of 8 * tile_size outputs, the table
    packed so that one cell's values for a tile are one contiguous row.
    - Forward: a block of block_size threads owns one output tile and block_size * 4 /
      tile_size samples; a thread owns one sample and 32 outputs of the tile (its cell,
      weights and 32 accumulators in registers) and loops over the input pairs, each
      pair's table slice staged in shared memory by bulk copies into a ring of up to 4
      buffers. A thread reads its rows as float4 chunks in a lane-dependent (XOR) order,
      so a warp's reads hit every bank equally whatever the cells.
    - grad_x of the deterministic backward, and the forward past the shared-memory limit:
      a lane owns tile_size / 4 consecutive outputs, a warp reads one whole table row per
      corner; grad_x keeps grad_y in registers (at most 512 threads) and adds over output
      tiles with atomics.
    - Backward (not deterministic, both modes): the batch goes in chunks whose grad_y rows
      take 8 MB (normal) or 24 MB (fast mode); each (pair, chunk) is counting-sorted by
      cell into global memory, then a warp walks a segment of the sorted samples for every
      output tile, keeping the cell's 4 corner gradients (grad_params, flushed by float
      atomics when the cell changes) and table differences (grad_x) in registers. Extra
      memory: a batch-first copy of grad_y (zero-padded to whole tiles), the packed table,
      a packed grad_params and the sorted chunk (16 bytes per pair and sample of a chunk,
      at most 256 MB). Shapes where that copy would be wasteful (fewer outputs than a tile
      with more than 1 GiB of padded copy) or num_grids > ~239 run the kernels below.
    - Deterministic backward: grad_x by the forward's scheme (one output tile) or a kernel
      that walks the tiles in a fixed order; grad_params: a block owns one (pair, output
      tile), counting-sorts each chunk of samples by cell and accumulates a run of samples
      of one cell in registers (at most 8 warps, 16 at tile 16); fast mode lets it use all
      of an SM's shared memory where the normal mode keeps two blocks per SM. Where its
      accumulator does not fit, a per-warp accumulator kernel runs instead.
    Past the largest num_grids the kernels serve at full speed (lmKAN.max_num_grids(tile, mode,
    device)) the kernels read the table and accumulate grad_params through global memory
    (L2) instead: correct, slower; the layer warns once. With deterministic=True and more
    than one output tile, grad_x runs a kernel that walks every tile in a fixed order.

    `func_parameter` has shape [G+1, G+1, output_dim, input_dim/2]; the buffer `borders`
    holds the grid nodes. State dicts of the original lmKAN layer load unchanged.
    """

    def __init__(self, num_grids, input_dim, output_dim, block_size_forward=tuning.AUTO,
                 block_size_backward=tuning.AUTO, tile_size_forward=tuning.AUTO,
                 tile_size_backward=tuning.AUTO, init_scale=0.1, backward_fast_mode=False,
                 batch_last=True, deterministic=None, table_dtype=None):
        super().__init__()
        self.num_grids = check_int("num_grids", num_grids, 3, maximum=MAX_NUM_GRIDS,
                                   why=" (the CUDA kernels' table offsets are 32-bit)")
        self.input_dim = check_int("input_dim", input_dim, 2, even=True, maximum=2 * INT32_MAX,
                                   why=" (input pairs are counted in 32 bits)")
        self.output_dim = check_int("output_dim", output_dim, 1, maximum=INT32_MAX,
                                    why=" (outputs are counted in 32 bits)")
        self.block_size_forward = _auto_or_choice("block_size_forward", block_size_forward, SUPPORTED_BLOCK_SIZES)
        self.block_size_backward = _auto_or_choice("block_size_backward", block_size_backward, SUPPORTED_BLOCK_SIZES)
        self.tile_size_forward = _auto_or_choice("tile_size_forward", tile_size_forward, SUPPORTED_TILE_SIZES)
        self.tile_size_backward = _auto_or_choice("tile_size_backward", tile_size_backward, SUPPORTED_TILE_SIZES)
        self.backward_fast_mode = check_bool("backward_fast_mode", backward_fast_mode, (tuning.AUTO,))
        self.batch_last = check_bool("batch_last", batch_last)
        self.deterministic = check_bool("deterministic", deterministic, (None,))
        self.table_dtype = check_table_dtype(table_dtype)
        self._warned_slow_fallback = False
        # What resolving the "auto" settings keeps between calls (lmKAN.tuning writes there,
        # never into the layer); not in the state dict.
        self._launch_resolver = tuning.LaunchResolver()
        self.init_scale = check_real("init_scale", init_scale, 0.0)
        side = self.num_grids + 1
        self.func_parameter = nn.Parameter(torch.empty(side, side, self.output_dim, self.input_dim // 2))
        self.register_buffer("borders", self.grid_nodes())
        self.reset_parameters()

    def grid_nodes(self):
        """The float32 nodes of this layer's grid (the CDF grid of num_grids cells)."""
        return cdf_borders(self.num_grids)

    def grid_description(self):
        return f"the CDF grid of num_grids={self.num_grids} ({self.num_grids + 1} nodes)"

    def reset_parameters(self):
        bound = self.init_scale / math.sqrt(self.input_dim)
        with torch.no_grad():
            self.func_parameter.uniform_(-bound, bound)

    # Assigning one of these drops the layer's call plans (lmKAN/_call_plans.py).
    PLAN_SETTINGS = frozenset({"tile_size_forward", "block_size_forward", "tile_size_backward",
                               "block_size_backward", "backward_fast_mode", "batch_last",
                               "deterministic", "table_dtype"})

    def _forward_general(self, x, params, key):
        """Checks, "auto" resolution, the shared-memory warning, mixed precision and the
        backend choice; stores the call's plan where later calls may reuse it."""
        x2d, lead = check_input(x, params, self.input_dim, self.batch_last, "LMKAN2DLayer")
        borders = self.borders
        needs_backward = torch.is_grad_enabled() and (x2d.requires_grad or params.requires_grad)
        # the call's table dtype (getattr: None for layers pickled before table_dtype)
        table = ops.call_table_dtype(x2d, params, getattr(self, "table_dtype", None))
        config = self._launch_resolver.config(self, x2d, needs_backward, table)  # "auto" -> values
        kernel_runs = ops.layer_kernel_applies("lmkan2d_forward", x2d, params, borders)
        if kernel_runs:
            self._check_fits_on_device(x2d.device, needs_backward, config, table)
        plan = (self.batch_last, *config, self._deterministic_now(), table)
        y = ops.lmkan2d(x2d, params, borders, *plan)
        if may_store_plan(key, x, kernel_runs):
            self._call_plans[key] = plan_of_call(x, y, plan, takes_out_dtype=True)
        return y if lead is None else y.reshape(*lead, self.output_dim)

    def _forward_images(self, x):
        """The layer on batch-last images x [N, input_dim, L] -> [N, output_dim, L] (the CUDA
        kernels read and write them in place: the forward, and the backward where its sorted
        kernel serves; docs/kernels.md, "Images"), with autograd, the launch settings and the
        shared-memory warning of a call on those N*L samples."""
        params = self.func_parameter
        needs_backward = torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
        table = ops.call_table_dtype(x, params, getattr(self, "table_dtype", None))
        config = self._launch_resolver.config(self, _images_stand_in(x, self.batch_last),
                                              needs_backward, table)
        self._check_fits_on_device(x.device, needs_backward, config, table)
        return ops.lmkan2d(x, params, self.borders, True, *config, self._deterministic_now(),
                           table)

    def __setstate__(self, state):
        # A layer pickled whole by lmKAN <= 0.3.0 has no resolver; it kept the same state in
        # its own attributes (_tuning_memo, dropped here; _tuned_choices, carried over).
        state = dict(state)
        state.pop("_tuning_memo", None)
        choices = state.pop("_tuned_choices", None)
        super().__setstate__(state)  # PlannedCalls: an empty plan memo
        if getattr(self, "_launch_resolver", None) is None:
            self._launch_resolver = tuning.LaunchResolver()
            self._launch_resolver.choices.update(choices or {})

    def get_hessian_regularization(self):
        """Smoothness penalty R (docs/spec.md section 3): a differentiable 0-dim tensor."""
        return ops.hessian2d(self.func_parameter, self.borders)

    def _deterministic_now(self):
        forced = getattr(self, "deterministic", None)  # None also for layers pickled before it
        return torch.are_deterministic_algorithms_enabled() if forced is None else forced

    def _check_fits_on_device(self, device, needs_backward, config, table):
        """Warn once when num_grids exceeds what the kernels of this call serve at full speed
        on `device` (lmKAN.max_num_grids at this layer's output_dim: layers of at most 8
        outputs have kernels of their own): they then read the table from global memory
        (correct, slower).

        A tile size the user set is checked as set; one that "auto" chose is not the user's
        doing, so "auto" warns only when no tile size serves num_grids at full speed.
        config: the call's tuning.LaunchConfig2D ("auto" already resolved); table: the
        call's table dtype (the forward's limit depends on it)."""
        if getattr(self, "_warned_slow_fallback", False) or not ops.kernel_available(
                "lmkan2d_max_num_grids", "CompositeExplicitAutograd"):
            return
        checks = [("forward", "tile_size_forward", config.tile_size_forward, table)]
        if needs_backward:
            mode = ("backward_deterministic" if self._deterministic_now()
                    else "backward_fast" if config.backward_fast_mode else "backward")
            checks.append((mode, "tile_size_backward", config.tile_size_backward, None))
        for mode, arg, tile, table_dtype in checks:
            if getattr(self, arg) == tuning.AUTO:
                limit = max(max_num_grids(t, mode, device, table_dtype, self.output_dim)
                            for t in SUPPORTED_TILE_SIZES)
                setting = f"any {arg}"
            else:
                limit = max_num_grids(tile, mode, device, table_dtype, self.output_dim)
                setting = f"{arg}={tile}"
            if table_dtype not in (None, torch.float32):
                setting += f" and {table_dtype} tables"
            if self.num_grids > limit:
                self._warned_slow_fallback = True
                warnings.warn(f"LMKAN2DLayer: num_grids={self.num_grids} exceeds the largest num_grids "
                              f"served at full speed with {setting} ({mode}) on "
                              f"{torch.cuda.get_device_name(device)}, which is {limit}; expected "
                              f"slower: the table is read from L2 instead of shared memory",
                              stacklevel=3)
                return

    def extra_repr(self):
        return (f"num_grids={self.num_grids}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
                f"{self._launch_resolver.describe(self)}, batch_last={self.batch_last}, "
                f"deterministic={self.deterministic}"
                + ("" if getattr(self, "table_dtype", None) is None
                   else f", table_dtype={self.table_dtype}"))

    def plot_functions(self, path, pairs=None, **kwargs):
        """Save the learned tables as heatmaps f(x1, x2) to `path` (needs matplotlib); see
        lmKAN.plotting.plot_2d_functions for `pairs` ((pair, output)) and the other options."""
        from .plotting import plot_2d_functions
        return plot_2d_functions(self, path, pairs=pairs, **kwargs)


def _images_stand_in(x, batch_last):
    """A zero-copy 2-D view of the images x [N, F, L] shaped as the layer's input for their
    N*L samples ([F, N*L] batch-last, [N*L, F] batch-first), for the launch resolver, which
    reads an input's shape, dtype and device and, where it times, its values: a view of x's
    memory (its samples' columns are not one), in bounds since (N + F - 1) L <= N F L."""
    n, features, length = x.shape
    if batch_last:
        return x.as_strided((features, n * length), (length, 1))
    return x.as_strided((n * length, features), (1, length))


def _auto_or_choice(name, value, supported):
    """"auto" (resolved per call by lmKAN.tuning) or one of the supported ints."""
    if isinstance(value, str) and value == tuning.AUTO:
        return tuning.AUTO
    return check_choice(name, value, supported)


# A constant to torch.compile (fixed per device): the layer's check stays in the graph's
# trace without a break.
@torch.compiler.assume_constant_result
def max_num_grids(tile_size, mode, device, table_dtype=None, output_dim=None):
    """Largest num_grids the CUDA kernels support for a tile size and mode on a device.

    mode: "forward", "backward", "backward_fast" or "backward_deterministic". Past the
    "forward" and "backward_deterministic" limits the table (and the parameter gradient) go
    through L2 instead of shared memory: correct, slower. "backward" and "backward_fast" (not
    deterministic) read the table through L2 at any num_grids by design and are bounded by
    their cell histogram; past it they run the deterministic kernels' L2 variants.
    table_dtype: the table of the call (docs/spec.md section 5, "Mixed precision"; None: float32). A
    float16/bfloat16 table stages half the bytes, so its "forward" limit is higher; the
    backward modes read a float32 table whatever the table dtype.
    output_dim: the layer's outputs. Layers of at most 8 outputs run kernels of their own
    (a thread per sample, the tile size unused) whose limits are higher; None, or more
    outputs: the limits of the wider layers' kernels.
    """
    check_choice("tile_size", tile_size, SUPPORTED_TILE_SIZES)
    check_choice("mode", mode, MAX_NUM_GRIDS_MODES)
    check_table_dtype(table_dtype)
    if output_dim is not None:
        output_dim = check_int("output_dim", output_dim, 1)
    return _device.max_num_grids_2d(tile_size, mode, device, table_dtype, output_dim)


MAX_NUM_GRIDS_MODES = ("forward", "backward", "backward_fast", "backward_deterministic")


# The differentiable layer op (csrc/lmkan2d/autograd.cpp) that the layer's call plans run
# (lmKAN/_call_plans.py); None without the extension: every call takes the general path.
LMKAN2DLayer.PLANNED_OP = torch.ops.lmkan.lmkan2d.default if ops.kernel_available("lmkan2d_forward") else None
