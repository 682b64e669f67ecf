"""What a tuned choice is for: the 2D layer's settings, their defaults, and the TuningKey.

Holds AUTO, DEFAULTS_2D, LaunchConfig2D (the five kernel settings of one call),
MODE_FIELDS (which settings each mode searches), the batch buckets, and TuningKey with
make_key (a layer's call -> key) and parse_key (its string in the cache file -> key).
The device part of a key comes from the package's one per-device cache (lmKAN._device).
"""
from typing import NamedTuple

import torch

from .._device import device_signature
from .._extension import kernel_sources_digest
from .._version import __version__

__all__ = ["AUTO", "DEFAULTS_2D", "BATCH_BUCKET_CAP", "LaunchConfig2D", "MODE_FIELDS",
           "TuningKey", "batch_bucket", "make_key", "parse_key", "deterministic_now",
           "device_signature"]

AUTO = "auto"

# The lmkan_version of every key: the package version and, when the build recorded it, the
# digest of the kernel sources it was built from ("0.9.0+kernels.1a2b3c4d5e6f"), so that an
# in-place rebuild after a kernel change times afresh instead of reusing the old timings.
_KERNELS = kernel_sources_digest()
LMKAN_BUILD = f"{__version__}+kernels.{_KERNELS}" if _KERNELS else __version__

# Batches share a cache entry per power of two, up to this cap; larger batches are timed
# on their first BATCH_BUCKET_CAP samples (the kernels are saturated well before).
BATCH_BUCKET_CAP = 1 << 16

# The 2D layer's (and the original lmKAN's) defaults, used wherever "auto" is not timed.
DEFAULTS_2D = {"tile_size_forward": 8, "block_size_forward": 1024, "tile_size_backward": 8,
               "block_size_backward": 512, "backward_fast_mode": False}


class LaunchConfig2D(NamedTuple):
    """The kernel settings of one 2D layer call, in the order ops.lmkan2d takes them."""
    tile_size_forward: int
    block_size_forward: int
    tile_size_backward: int
    block_size_backward: int
    backward_fast_mode: bool


# Per mode: the layer attribute of each searched setting, and its name in a cache entry.
MODE_FIELDS = {
    "forward": (("tile_size_forward", "tile_size"), ("block_size_forward", "block_size")),
    "backward": (("tile_size_backward", "tile_size"), ("block_size_backward", "block_size"),
                 ("backward_fast_mode", "fast_mode")),
}


class TuningKey(NamedTuple):
    """Everything a timed choice depends on; `as_string()` is its key in the JSON file."""
    gpu: str
    capability: str
    torch_version: str
    lmkan_version: str
    layer: str
    input_dim: int
    output_dim: int
    num_grids: int
    batch_bucket: int
    layout: str
    mode: str
    dtype: str
    searched: str  # e.g. "tile_size=auto,block_size=auto,fast_mode=False"

    def as_string(self):
        return "|".join(f"{name}={value}" for name, value in zip(self._fields, self))


_INT_FIELDS = {"input_dim", "output_dim", "num_grids", "batch_bucket"}


def batch_bucket(batch):
    """The power of two at or above `batch`, capped at BATCH_BUCKET_CAP."""
    return min(1 << max(int(batch) - 1, 0).bit_length(), BATCH_BUCKET_CAP)


def deterministic_now(layer):
    """Whether the layer's backward runs the deterministic kernels on this call."""
    now = getattr(layer, "_deterministic_now", None)
    return bool(now()) if now is not None else False


def make_key(layer, x, mode, table=torch.float32):
    """The TuningKey of a 2D layer's call on the 2-D input `x` for mode forward/backward; a
    call whose table is rounded to 16 bits (`table`) is its own key ("float32+table=bfloat16"),
    a float32 table keeps the key it always had."""
    gpu, capability = device_signature(x.device)
    batch = x.shape[1] if layer.batch_last else x.shape[0]
    searched = ",".join(f"{entry}={getattr(layer, attr)}" for attr, entry in MODE_FIELDS[mode])
    if mode == "backward" and deterministic_now(layer):  # other kernels run: tuned separately
        searched += ",deterministic=True"
    return TuningKey(gpu, capability, torch.__version__, LMKAN_BUILD, "LMKAN2DLayer",
                     layer.input_dim, layer.output_dim, layer.num_grids, batch_bucket(batch),
                     "batch_last" if layer.batch_last else "batch_first", mode,
                     _dtype_field(x.dtype, table), searched)


def _dtype_field(x_dtype, table):
    name = str(x_dtype).replace("torch.", "")
    return name if table == torch.float32 else f"{name}+table={str(table).replace('torch.', '')}"


def parse_key(text):
    """The TuningKey of an `as_string()` text, or None if it is not one."""
    fields = dict(part.split("=", 1) for part in text.split("|") if "=" in part)
    try:
        values = [fields[name] for name in TuningKey._fields]
    except KeyError:
        return None
    try:
        return TuningKey(*(int(v) if n in _INT_FIELDS else v
                           for n, v in zip(TuningKey._fields, values)))
    except ValueError:
        return None
