"""LMKAN2DLayer: the lookup multivariate KAN layer (SPEC.md section 2)."""
import math

import torch
from torch import nn

from . import ops
from ._checks import check_choice, check_input, check_int
from .grids import cdf_borders

__all__ = ["LMKAN2DLayer", "SUPPORTED_TILE_SIZES", "SUPPORTED_BLOCK_SIZES"]

SUPPORTED_TILE_SIZES = (4, 8, 16)
SUPPORTED_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024)


class LMKAN2DLayer(nn.Module):
    """y[o] = sum over input pairs p of f_{o,p}(x[2p], x[2p+1]), each f a bilinear table.

    Args:
        num_grids: grid cells G per input (>= 3); each function has (G+1)^2 values.
        input_dim: number of input features (even: inputs are taken in pairs).
        output_dim: number of outputs.
        block_size_forward, block_size_backward: CUDA threads per block.
        tile_size_forward, tile_size_backward: outputs per shared-memory table tile (4, 8, 16).
        init_scale: parameters start as U(-s/sqrt(input_dim), s/sqrt(input_dim)).
        backward_fast_mode: a backward that uses more shared memory for more speed.
        batch_last: x is [input_dim, B] and y [output_dim, B] (default, as the original
            lmKAN); False: x is [..., input_dim] and y [..., output_dim] like nn.Linear.

    `func_parameter` has shape [G+1, G+1, output_dim, input_dim/2]; the buffer `borders`
    holds the grid nodes. State dicts of the original lmKAN layer load unchanged.
    """

    def __init__(self, num_grids, input_dim, output_dim, block_size_forward=1024,
                 block_size_backward=512, tile_size_forward=8, tile_size_backward=8,
                 init_scale=0.1, backward_fast_mode=False, batch_last=True):
        super().__init__()
        self.num_grids = check_int("num_grids", num_grids, 3)
        self.input_dim = check_int("input_dim", input_dim, 2, even=True)
        self.output_dim = check_int("output_dim", output_dim, 1)
        self.block_size_forward = check_choice("block_size_forward", block_size_forward, SUPPORTED_BLOCK_SIZES)
        self.block_size_backward = check_choice("block_size_backward", block_size_backward, SUPPORTED_BLOCK_SIZES)
        self.tile_size_forward = check_choice("tile_size_forward", tile_size_forward, SUPPORTED_TILE_SIZES)
        self.tile_size_backward = check_choice("tile_size_backward", tile_size_backward, SUPPORTED_TILE_SIZES)
        self.backward_fast_mode = bool(backward_fast_mode)
        self.batch_last = bool(batch_last)
        self.init_scale = float(init_scale)
        side = self.num_grids + 1
        self.func_parameter = nn.Parameter(torch.empty(side, side, self.output_dim, self.input_dim // 2))
        self.register_buffer("borders", cdf_borders(self.num_grids))
        self.reset_parameters()

    def reset_parameters(self):
        bound = self.init_scale / math.sqrt(self.input_dim)
        with torch.no_grad():
            self.func_parameter.uniform_(-bound, bound)

    def forward(self, x):
        x2d, lead = check_input(x, self.func_parameter, self.input_dim, self.batch_last, "LMKAN2DLayer")
        if x2d.is_cuda:
            needs_backward = torch.is_grad_enabled() and (x2d.requires_grad or self.func_parameter.requires_grad)
            self._check_fits_on_device(x2d.device, needs_backward)
        y = ops.lmkan2d(x2d, self.func_parameter, self.borders, self.batch_last,
                        self.tile_size_forward, self.block_size_forward,
                        self.tile_size_backward, self.block_size_backward, self.backward_fast_mode)
        return y if lead is None else y.reshape(*lead, self.output_dim)

    def get_hessian_regularization(self):
        """Smoothness penalty R (SPEC.md section 3): a differentiable 0-dim tensor."""
        return ops.hessian2d(self.func_parameter, self.borders)

    def _check_fits_on_device(self, device, needs_backward):
        """Raise before launch when num_grids exceeds what a tile size supports on `device`."""
        if not ops.kernel_available("lmkan2d_max_num_grids", "CompositeExplicitAutograd"):
            return
        checks = [("forward", "tile_size_forward", self.tile_size_forward)]
        if needs_backward:
            mode = "backward_fast" if self.backward_fast_mode else "backward"
            checks.append((mode, "tile_size_backward", self.tile_size_backward))
        for mode, arg, tile in checks:
            limit = max_num_grids(tile, mode, device)
            if self.num_grids > limit:
                fitting = [t for t in SUPPORTED_TILE_SIZES if max_num_grids(t, mode, device) >= self.num_grids]
                hint = (f"use {arg}={fitting[-1]}" if fitting
                        else f"no tile size fits num_grids={self.num_grids} in {mode} mode")
                raise ValueError(f"num_grids={self.num_grids} does not fit in shared memory with "
                                 f"{arg}={tile} ({mode}) on {torch.cuda.get_device_name(device)}: "
                                 f"the largest supported is {limit}; {hint}")

    def extra_repr(self):
        return (f"num_grids={self.num_grids}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
                f"tile_size_forward={self.tile_size_forward}, tile_size_backward={self.tile_size_backward}, "
                f"backward_fast_mode={self.backward_fast_mode}, batch_last={self.batch_last}")

    def plot_functions(self, path, pairs=None, **kwargs):
        """Save the learned tables as heatmaps f(x1, x2) to `path` (needs matplotlib); see
        lmKAN.plotting.plot_2d_functions for `pairs` ((pair, output)) and the other options."""
        from .plotting import plot_2d_functions
        return plot_2d_functions(self, path, pairs=pairs, **kwargs)


_MAX_NUM_GRIDS_CACHE = {}


# A constant to torch.compile (fixed per device): the layer's check stays in the graph's
# trace without a break.
@torch.compiler.assume_constant_result
def max_num_grids(tile_size, mode, device):
    """Largest num_grids the CUDA kernels support for a tile size and mode on a device.

    mode: "forward", "backward" or "backward_fast".
    """
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (tile_size, mode, index)
    if key not in _MAX_NUM_GRIDS_CACHE:
        _MAX_NUM_GRIDS_CACHE[key] = torch.ops.lmkan.lmkan2d_max_num_grids(tile_size, mode, index)
    return _MAX_NUM_GRIDS_CACHE[key]
