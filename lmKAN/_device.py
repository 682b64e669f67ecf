"""The one per-device cache of lmKAN's Python side: facts about a CUDA device that are
asked for on many calls and do not change while the process runs.

- device_signature: (GPU name, "major.minor"), part of every tuning key (lmKAN.tuning).
- max_num_grids_2d / max_num_grids_1d: the largest num_grids each kernel family serves
  from shared memory (the layers' checks before launch). The kernels read
  LMKAN_SMEM_BUDGET_KB at every launch, so the budget is part of these entries' keys.

Every entry sits in one dict keyed by (fact, device index, details...); the layers wrap the
limits with torch.compiler.assume_constant_result where they are called under torch.compile.
"""
import torch

from ._extension import smem_budget_key

__all__ = ["device_index", "device_signature", "max_num_grids_2d", "max_num_grids_1d"]

_FACTS = {}  # (fact name, device index, *details) -> value


def device_index(device):
    """The CUDA device index of `device` (a torch.device, its string or an int); the current
    device where it names none ("cuda"). ValueError for a device that is not a CUDA device,
    or a CUDA device this machine does not have."""
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be a CUDA device (torch.device, 'cuda', 'cuda:N' or an "
                        f"index), got {type(device).__name__} ({device!r})")
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device: the num_grids limits are those of the "
                         f"CUDA kernels (the CPU path has none), got {device}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available on this machine")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s)")
    return index


def _cached(key, compute, *args):
    """_FACTS[key], computed by compute(*args) on the first request. Two threads may both
    compute a missing entry; they get the same value, so the race is harmless."""
    try:
        return _FACTS[key]
    except KeyError:
        value = _FACTS[key] = compute(*args)
        return value


def device_signature(device):
    """(GPU name, "major.minor" compute capability) of a CUDA device."""
    index = device_index(device)
    return _cached(("signature", index), _ask_signature, index)


def _ask_signature(index):
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def max_num_grids_2d(tile_size, mode, device, table_dtype=None, output_dim=None):
    """The 2D kernels' limit for a tile size, mode, table dtype (None: float32) and layer
    width (None: the wide layers'; lmKAN.lmkan2d.max_num_grids)."""
    index = device_index(device)
    table = None if table_dtype in (None, torch.float32) else table_dtype
    return _cached(("max_num_grids_2d", index, tile_size, mode, table, output_dim,
                    smem_budget_key()), _ask_limit_2d, tile_size, mode, index, table, output_dim)


def max_num_grids_1d(device):
    """The 1D kernels' limit (LMKAN1DLayer's check)."""
    index = device_index(device)
    return _cached(("max_num_grids_1d", index, smem_budget_key()), _ask_limit_1d, index)


# The ops are looked up when first asked (they exist only where the extension is built).
def _ask_limit_2d(tile_size, mode, index, table_dtype, output_dim):
    return torch.ops.lmkan.lmkan2d_max_num_grids(tile_size, mode, index, table_dtype, output_dim)


def _ask_limit_1d(index):
    return torch.ops.lmkan.lmkan1d_max_num_grids(index)
