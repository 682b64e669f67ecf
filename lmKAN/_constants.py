"""The 2D kernels' supported settings: one definition for the layer's argument checks and
the tuner's candidates (lmKAN.tuning must not import the layer module, so they live here).

A block's output tile is 8 * tile_size outputs; block sizes are threads per block. The
C++ side checks both again at launch.
"""

__all__ = ["SUPPORTED_TILE_SIZES", "SUPPORTED_BLOCK_SIZES"]

SUPPORTED_TILE_SIZES = (4, 8, 16)
SUPPORTED_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024)
