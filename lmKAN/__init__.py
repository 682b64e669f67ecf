"""lmKAN: fast lookup-table Kolmogorov-Arnold Network layers for PyTorch.

LMKAN2DLayer (bilinear 2D tables over input pairs), LMKAN1DLayer (linear splines), the
KANditioned-style KANLayer, and their convolutions LMKAN2DConv2d / LMKAN1DConv2d; CUDA kernels where the extension is built, pure PyTorch
elsewhere. `backend_info()` says which backend runs and why; `tune(model, x)` picks the 2D
kernels' tile and block sizes ahead of time (else done on the first CUDA call).
"""
from ._extension import BackendInfo, backend_info
from ._version import __version__
from .conv import LMKAN1DConv2d, LMKAN2DConv2d
from .lmkan1d import KANLayer, LMKAN1DLayer
from .lmkan2d import LMKAN2DLayer, max_num_grids
from .tuning import tune

__all__ = ["LMKAN2DLayer", "LMKAN1DLayer", "KANLayer", "LMKAN2DConv2d", "LMKAN1DConv2d",
           "backend_info", "BackendInfo",
           "max_num_grids", "tune", "__version__"]
