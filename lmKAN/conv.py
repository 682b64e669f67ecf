"""Convolutions of lookup layers: LMKAN2DConv2d and LMKAN1DConv2d (docs/spec.md, section 4b).

The output at each position is the layer applied to the column of
`torch.nn.functional.unfold(x, kernel_size, dilation, padding, stride)` at that position, in
unfold's feature order (channel-major, then kernel row, then kernel column); for the 2D
layer the input pairs are consecutive features of that order. Input `[N, C, H, W]`, output
`[N, out_channels, H', W']` with nn.Conv2d's output size (zero padding).

Each conv module *is* its layer (a subclass) applied to the unfolded columns, so its
parameters, state dict keys (`func_parameter`, `borders`), Hessian regulariser, plotting,
tuning and kernels are the layer's. The layer runs batch-first: a row per output position.

Memory and copies (docs/spec.md, section 4b):
- The output is the layer's [N*H'*W', out] rows viewed as [N, out, H', W']: channels_last
  memory (as nn.Conv2d returns for a channels_last input), no copy.
- A 1x1 convolution (stride 1, no padding) of a channels_last input reads it in place:
  x.permute(0, 2, 3, 1) is already the layer's [N*H*W, C] rows. An NCHW input to it is read
  in place too in eager CUDA calls: x[n] is a batch-last [C, H*W] matrix, and the kernels
  take the N images as such (`_forward_images`; csrc/common/images.h); the output is then
  NCHW (contiguous). The 2D layer trains on them too: its sorted backward (the default,
  not deterministic) reads x and writes grad_x in place, and transposes grad_y into rows
  as it does for any batch-last call; its other backward kernels run on copies. The 1D
  layer reads images in its forward only (no gradient needed: torch.no_grad, frozen
  layers on inputs that do not require grad). Otherwise (1D training, torch.compile / torch.export, the CPU) it costs one copy
  of x into the rows (unfold's columns would be a copy and a transposed copy). Any other
  convolution is unfolded.
- The unfolded columns are a copy of N*H'*W' x C*kh*kw values. Batches whose columns exceed
  `column_budget_mb` run in chunks of images; with gradients, each chunk is checkpointed
  (its columns are recomputed in the backward instead of kept), so the columns held at once
  stay within the budget (twice it while unfold's output is transposed) at the cost of one
  more forward per chunk. Not under torch.compile / torch.export (one unchunked call).
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ops
from ._checks import LOW_PRECISION_DTYPES, check_int, check_positive_float
from .lmkan1d import LMKAN1DLayer
from .lmkan2d import LMKAN2DLayer

__all__ = ["LMKAN2DConv2d", "LMKAN1DConv2d"]

# The forward kernels that read images in place (csrc/common/images.h): the 2D layer's for
# layers of more than 8 outputs (csrc/lmkan2d/plan.h: fewer run a thread per sample), the
# 1D layer's where a warp's 16 samples lie in one image (csrc/lmkan1d/layout.h, kWarpSamples).
SAMPLE_THREADS_MAX_OUTPUTS = 8
IMAGE_SAMPLES_1D = 16

# Unfolded columns held at once by default (MiB): a 3x3 convolution of 64 channels on
# 128 images of 32x32 takes 288 MiB of float32 columns, one chunk.
DEFAULT_COLUMN_BUDGET_MB = 1024


def _pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a tuple of two."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(name, v, minimum) for v in values)


class _ConvOfLayer:
    """The convolution part shared by both conv modules (mixed into a layer class)."""

    def _init_conv(self, in_channels, kernel_size, stride, padding, dilation, column_budget_mb):
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        self.column_budget_mb = (None if column_budget_mb is None
                                 else check_positive_float("column_budget_mb", column_budget_mb))
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def _is_pointwise(self):
        """A 1x1, stride-1, unpadded convolution: the layer on x's NHWC rows, no unfold."""
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _reads_nchw_in_place(self, x):
        """Whether a 1x1 convolution hands x [N, C, H, W] to the kernels as N batch-last images
        [C, H*W] (no copy): an eager call on the CUDA kernels with NCHW-contiguous x
        (channels_last x has its rows view), of a dtype and device the layer takes (else the
        rows path raises the layer's error), where the forward kernel that serves it reads
        images in place (1D layers where H*W is a multiple of 16, 2D layers of more than 8
        outputs: the op copies the others to a plain layout, x in and y out, two copies where
        the rows take one), and, where a gradient is needed, only for the 2D layer: its
        sorted backward reads images in place, and the 1D backward would copy x, grad_y and
        grad_x (three copies where the rows take one)."""
        if not (x.is_cuda and x.is_contiguous()) or torch.compiler.is_compiling():
            return False
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if needs_grad and not isinstance(self, LMKAN2DLayer):
            return False
        params = self.func_parameter
        if x.device != params.device or not (
                x.dtype == params.dtype
                or (x.dtype in LOW_PRECISION_DTYPES and params.dtype == torch.float32)):
            return False
        if isinstance(self, LMKAN2DLayer):
            op, served = "lmkan2d_forward", self.output_dim > SAMPLE_THREADS_MAX_OUTPUTS
        else:
            op, served = "lmkan1d_forward", (x.shape[2] * x.shape[3]) % IMAGE_SAMPLES_1D == 0
        return served and ops.layer_kernel_applies(op, x, params, self.borders)

    def _images_per_chunk(self, x, out_h, out_w):
        """Images whose unfolded columns fit column_budget_mb (at least 1)."""
        image_bytes = out_h * out_w * self.input_dim * x.element_size()  # input_dim = C*kh*kw
        return max(1, int(self.column_budget_mb * 2**20) // image_bytes)

    def _columns_forward(self, x, out_h, out_w):
        """The layer on the unfolded columns of x: [n, out, H', W'] (channels_last memory)."""
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = super().forward(cols.transpose(1, 2))  # rows [n, H'*W', F]: one copy of cols
        return y.reshape(x.shape[0], out_h, out_w, self.output_dim).permute(0, 3, 1, 2)

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
        if self._is_pointwise():
            if self._reads_nchw_in_place(x):  # N images [C, H*W], batch-last: no copy
                y = self._forward_images(x.view(n, self.in_channels, height * width))
                return y.view(n, self.output_dim, height, width)
            # [N*H*W, C] rows: a view of channels_last memory, one copy of NCHW memory (see
            # _reads_nchw_in_place for when images are not taken)
            rows = x.permute(0, 2, 3, 1).reshape(n * height * width, self.in_channels)
            y = super().forward(rows)
            return y.reshape(n, height, width, self.output_dim).permute(0, 3, 1, 2)
        chunk = n if self.column_budget_mb is None else self._images_per_chunk(x, out_h, out_w)
        if chunk >= n or torch.compiler.is_compiling():
            return self._columns_forward(x, out_h, out_w)
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if needs_grad:
            pieces = [checkpoint(self._columns_forward, xc, out_h, out_w, use_reentrant=False)
                      for xc in x.split(chunk)]
        else:
            pieces = [self._columns_forward(xc, out_h, out_w) for xc in x.split(chunk)]
        return torch.cat(pieces)

    def _conv_repr(self):
        text = (f"in_channels={self.in_channels}, out_channels={self.output_dim}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")
        if self.column_budget_mb != DEFAULT_COLUMN_BUDGET_MB:
            text += f", column_budget_mb={self.column_budget_mb}"
        return text


def _no_batch_last(name, kwargs):
    if "batch_last" in kwargs:
        raise TypeError(f"{name} takes no batch_last: its input is [N, C, H, W] and its layer "
                        f"runs batch-first on the unfolded columns")


class LMKAN2DConv2d(_ConvOfLayer, LMKAN2DLayer):
    """A 2D lookup layer applied at every position of a sliding window (nn.Conv2d's geometry).

    Args: num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1
    (ints or pairs), column_budget_mb (the unfolded columns held at once, in MiB; None: no
    bound; see the module docstring), and LMKAN2DLayer's other keyword arguments (tile and
    block sizes, init_scale, backward_fast_mode, deterministic, table_dtype).
    in_channels * kh * kw must be even: the layer takes its inputs in pairs.
    """

    def __init__(self, num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, column_budget_mb=DEFAULT_COLUMN_BUDGET_MB, **layer_kwargs):
        _no_batch_last("LMKAN2DConv2d", layer_kwargs)
        features = _ConvOfLayer._init_conv(self, in_channels, kernel_size, stride, padding,
                                           dilation, column_budget_mb)
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
    (ints or pairs), column_budget_mb (as LMKAN2DConv2d's), and LMKAN1DLayer's other keyword
    arguments (grid, spline_width, init, deterministic, table_dtype).
    """

    def __init__(self, num_grids, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, column_budget_mb=DEFAULT_COLUMN_BUDGET_MB, **layer_kwargs):
        _no_batch_last("LMKAN1DConv2d", layer_kwargs)
        features = _ConvOfLayer._init_conv(self, in_channels, kernel_size, stride, padding,
                                           dilation, column_budget_mb)
        LMKAN1DLayer.__init__(self, num_grids, features, out_channels, batch_last=False,
                              **layer_kwargs)

    def extra_repr(self):
        return f"num_grids={self.num_grids}, {self._conv_repr()}, grid={self.grid!r}"
