"""Convolutions of lookup layers: LMKAN2DConv2d and LMKAN1DConv2d (docs/spec.md, section 6).

The output at each position is the layer applied to the column of
`torch.nn.functional.unfold(x, kernel_size, dilation, padding, stride)` at that position, in
unfold's feature order (channel-major, then kernel row, then kernel column); for the 2D
layer the input pairs are consecutive features of that order. Input `[N, C, H, W]`, output
`[N, out_channels, H', W']` with nn.Conv2d's output size (zero padding).

Each conv module *is* its layer (a subclass) applied to the unfolded columns, so its
parameters, state dict keys (`func_parameter`, `borders`), Hessian regulariser, plotting,
tuning and kernels are the layer's. The columns are a copy ([N*H'*W', C*kh*kw], batch-first):
memory grows with kernel_size^2; a chunked or in-kernel gather is issue 20's item 2.
"""
import torch
import torch.nn.functional as F

from ._checks import check_int
from .lmkan1d import LMKAN1DLayer
from .lmkan2d import LMKAN2DLayer

__all__ = ["LMKAN2DConv2d", "LMKAN1DConv2d"]


def _pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a tuple of two."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(name, v, minimum) for v in values)


class _ConvOfLayer:
    """The convolution part shared by both conv modules (mixed into a layer class)."""

    def _init_conv(self, in_channels, kernel_size, stride, padding, dilation):
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def output_size(self, height, width):
        """(H', W'), as nn.Conv2d computes them."""
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in zip(
            (height, width), self.kernel_size, self.stride, self.padding, self.dilation))

    def forward(self, x):
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} input must have shape [N, in_channels={self.in_channels}, "
                             f"H, W], got {shape}")
        n, _, height, width = x.shape
        out_h, out_w = self.output_size(height, width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{name}: input of {height}x{width} is smaller than the dilated "
                             f"kernel {self.kernel_size} with padding {self.padding} "
                             f"(dilation {self.dilation}): output {out_h}x{out_w}")
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = super().forward(cols.transpose(1, 2).reshape(n * out_h * out_w, cols.shape[1]))
        return y.reshape(n, out_h * out_w, self.output_dim).transpose(1, 2).reshape(
            n, self.output_dim, out_h, out_w)

    def _conv_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.output_dim}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")


def _no_batch_last(name, kwargs):
    if "batch_last" in kwargs:
        raise TypeError(f"{name} takes no batch_last: its input is [N, C, H, W] and its layer "
                        f"runs batch-first on the unfolded columns")


class LMKAN2DConv2d(_ConvOfLayer, LMKAN2DLayer):
    """A 2D lookup layer applied at every position of a sliding window (nn.Conv2d's geometry).

    Args: num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1
    (ints or pairs), and LMKAN2DLayer's other keyword arguments (tile and block sizes,
    init_scale, backward_fast_mode, deterministic, table_dtype). in_channels * kh * kw must be
    even: the layer takes its inputs in pairs.
    """

    def __init__(self, num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, **layer_kwargs):
        _no_batch_last("LMKAN2DConv2d", layer_kwargs)
        features = _ConvOfLayer._init_conv(self, in_channels, kernel_size, stride, padding, dilation)
        if features % 2:
            raise ValueError(
                f"LMKAN2DConv2d needs an even in_channels * kernel_height * kernel_width (its "
                f"layer takes inputs in pairs), got {in_channels} * {self.kernel_size[0]} * "
                f"{self.kernel_size[1]} = {features}")
        LMKAN2DLayer.__init__(self, num_grids, features, out_channels, batch_last=False,
                              **layer_kwargs)

    def extra_repr(self):
        return f"num_grids={self.num_grids}, {self._conv_repr()}"


class LMKAN1DConv2d(_ConvOfLayer, LMKAN1DLayer):
    """A 1D linear-spline layer applied at every position of a sliding window.

    Args: num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1
    (ints or pairs), and LMKAN1DLayer's other keyword arguments (grid, spline_width, init,
    deterministic).
    """

    def __init__(self, num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, **layer_kwargs):
        _no_batch_last("LMKAN1DConv2d", layer_kwargs)
        features = _ConvOfLayer._init_conv(self, in_channels, kernel_size, stride, padding, dilation)
        LMKAN1DLayer.__init__(self, num_grids, features, out_channels, batch_last=False,
                              **layer_kwargs)

    def extra_repr(self):
        return f"num_grids={self.num_grids}, {self._conv_repr()}, grid={self.grid!r}"
