"""Loading the compiled extension lmKAN._C and reporting which backend runs.

Importing lmKAN._C registers the `lmkan::*` ops (csrc/ops.cpp) and the CUDA kernels that
were compiled in. Each op is used for CUDA tensors only if a CUDA kernel is registered for
it; everything else runs the pure-PyTorch reference (lmKAN/_reference.py).
"""
import dataclasses
import functools
import importlib
import json
import os
import warnings

import torch

__all__ = ["BackendInfo", "backend_info", "has_cuda_kernel", "kernel_sources_digest"]

_REBUILD_HINT = ("Rebuild it against the installed torch with "
                 "`pip install --no-build-isolation --force-reinstall --no-deps .` "
                 "from the lmKAN source tree.")
_INSTALL_HINT = ("To get the kernels: install a CUDA toolkit (nvcc) and a CUDA build of torch, "
                 "then run `pip install --no-build-isolation --force-reinstall --no-deps .` "
                 "from the lmKAN source tree (README, Installation).")
_STATUS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_status.json")


def smem_budget_key():
    """The LMKAN_SMEM_BUDGET_KB cap that the kernels' limits depend on (csrc/common/device_limits.h,
    read at every launch): part of the key of every cached limit."""
    return os.environ.get("LMKAN_SMEM_BUDGET_KB", "")


def _build_status():
    """What setup.py recorded about the CUDA extension (setup.py, BuildStatus), or None."""
    try:
        with open(_STATUS_FILE) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and "cuda_extension" in status else None


def kernel_sources_digest():
    """The digest of csrc/ that setup.py recorded when it built the extension (a short sha256,
    see setup.py's _kernel_sources_digest), or "" when no build recorded one."""
    status = _build_status()
    if status is None or status.get("cuda_extension") != "built":
        return ""
    digest = status.get("kernel_sources", "")
    return digest if isinstance(digest, str) else ""


def _missing_reason():
    """Why lmKAN._C is absent, from the build's own record."""
    status = _build_status()
    if status is None:
        return ("lmKAN was installed without its CUDA extension, and without a record of why "
                "(an install older than 0.3.0, or the package copied without its build). "
                + _INSTALL_HINT)
    state, reason = status.get("cuda_extension"), status.get("reason", "no reason recorded")
    if state == "skipped":
        return f"lmKAN was installed without its CUDA extension: {reason}. {_INSTALL_HINT}"
    if state == "built":
        return ("lmKAN's CUDA extension was built but its file is missing from the package "
                f"({reason}). {_REBUILD_HINT}")
    return (f"lmKAN's CUDA extension was not built: {reason}. Run the install with `-v` to see "
            f"the compiler's output. {_INSTALL_HINT}")


# The kernel ops the Python side uses (csrc/ops.cpp defines them), each with the lmKAN.ops
# function that runs it or the pure-PyTorch reference (ops.py's CPU refusals name it). An
# extension built from an older source tree can lack some, which then counts as a stale build.
KERNEL_OPS = {"lmkan2d_forward": "lmkan2d", "lmkan2d_backward": "lmkan2d",
              "lmkan2d_slope_forward": "lmkan2d", "lmkan2d_slope_grad_x": "lmkan2d",
              "lmkan2d_slope_grad_params": "lmkan2d",
              "lmkan1d_forward": "lmkan1d", "lmkan1d_backward": "lmkan1d",
              "lmkan1d_slope_forward": "lmkan1d", "lmkan1d_slope_grad_params": "lmkan1d",
              "hessian2d": "hessian2d", "hessian2d_backward": "hessian2d",
              "hessian2d_sum": "hessian2d_sum", "hessian2d_sum_backward": "hessian2d_sum",
              "second_diff1d": "second_diff1d", "second_diff1d_backward": "second_diff1d"}

# The arguments each op's schema names (csrc/ops.cpp): the Python side passes them by
# position, so a build whose schema differs (an argument added since, as hessian2d_sum's
# weight) is stale too, and falls back with a warning instead of failing on every call.
OP_ARGUMENTS = {
    "lmkan2d": ("x", "params", "borders", "batch_last", "tile_size", "block_size",
                "backward_tile_size", "backward_block_size", "backward_fast_mode",
                "deterministic", "table_dtype", "out_dtype"),
    "lmkan2d_forward": ("x", "params", "borders", "batch_last", "tile_size", "block_size",
                        "table_dtype"),
    "lmkan2d_backward": ("grad_y", "x", "params", "borders", "batch_last", "tile_size",
                         "block_size", "fast_mode", "deterministic", "table_dtype",
                         "grad_params"),
    "lmkan2d_slope_forward": ("x", "weights", "params", "borders", "batch_last", "table_dtype"),
    "lmkan2d_slope_grad_x": ("grad_y", "x", "weights", "params", "borders", "batch_last",
                             "table_dtype"),
    "lmkan2d_slope_grad_params": ("grad_y", "x", "weights", "params", "borders", "batch_last",
                                  "deterministic"),
    "lmkan1d": ("x", "params", "borders", "uniform_grid", "batch_last", "deterministic",
                "table_dtype"),
    "lmkan1d_forward": ("x", "params", "borders", "uniform_grid", "batch_last", "table_dtype"),
    "lmkan1d_backward": ("grad_y", "x", "params", "borders", "uniform_grid", "batch_last",
                         "deterministic", "table_dtype", "grad_params"),
    "lmkan1d_slope_forward": ("x", "weights", "params", "borders", "uniform_grid", "batch_last",
                              "table_dtype"),
    "lmkan1d_slope_grad_params": ("grad_y", "x", "weights", "params", "borders", "uniform_grid",
                                  "batch_last", "deterministic"),
    "hessian2d": ("params", "borders"),
    "hessian2d_backward": ("grad_r", "params", "borders"),
    "hessian2d_sum": ("params", "borders", "weight"),
    "hessian2d_sum_backward": ("grad_r", "params", "borders", "weight"),
    "second_diff1d": ("params", "borders"),
    "second_diff1d_backward": ("grad_r", "params", "borders"),
}


def _stale_ops():
    """What the loaded extension lacks: the ops of OP_ARGUMENTS it did not register, or
    registered with other arguments, one description each."""
    stale = []
    for name, expected in OP_ARGUMENTS.items():
        try:
            schema = torch._C._dispatch_find_schema_or_throw(f"lmkan::{name}", "").schema()
        except RuntimeError:
            stale.append(f"{name} (missing)")
            continue
        found = tuple(a.name for a in schema.arguments)
        if found != expected:
            stale.append(f"{name} (arguments {', '.join(found)}; expected {', '.join(expected)})")
    return stale


def _load():
    """Return (module or None, reason string, whether a stale build was found)."""
    try:
        module = importlib.import_module("lmKAN._C")
    except ModuleNotFoundError:
        return None, _missing_reason(), False
    except (ImportError, OSError) as exc:
        return None, (f"lmKAN's CUDA extension failed to load ({exc}); it was probably built "
                      f"for another torch or CUDA version. {_REBUILD_HINT}"), True
    built = (module.torch_version, module.cuda_version)
    running = (torch.__version__, torch.version.cuda)
    if built != running:
        return None, (f"lmKAN's CUDA extension was built for torch {built[0]} / CUDA {built[1]} "
                      f"but torch {running[0]} / CUDA {running[1]} is running. {_REBUILD_HINT}"), True
    stale = _stale_ops()
    if stale:
        return None, (f"lmKAN's CUDA extension ({module.__file__}) was built from an older lmKAN "
                      f"source; these ops differ: {'; '.join(stale)}. {_REBUILD_HINT}"), True
    return module, f"CUDA extension loaded ({module.__file__})", False


_MODULE, _REASON, _STALE = _load()
if _STALE:
    warnings.warn(_REASON + " Falling back to the pure-PyTorch path.", RuntimeWarning, stacklevel=2)
elif _MODULE is None and torch.cuda.is_available():
    warnings.warn(_REASON + " Until then CUDA tensors use the slower pure-PyTorch path.",
                  RuntimeWarning, stacklevel=2)

@functools.lru_cache(maxsize=None)
def has_cuda_kernel(op_name: str, dispatch_key: str = "CUDA") -> bool:
    """True when the extension is loaded and `lmkan::op_name` has a kernel for the key.

    Cached: kernels register when lmKAN._C is imported and never change afterwards, and
    this is asked on every layer call.
    """
    if _MODULE is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lmkan::{op_name}", dispatch_key)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """Which backend lmKAN uses and why."""

    extension_loaded: bool
    reason: str
    cuda_kernels: tuple
    gpu_available: bool
    torch_version: str

    @property
    def cuda_backend_active(self) -> bool:
        """True when CUDA tensors run at least one hand-written kernel."""
        return self.extension_loaded and self.gpu_available and bool(self.cuda_kernels)

    def __str__(self):
        kernels = ", ".join(self.cuda_kernels) if self.cuda_kernels else "none"
        return (f"lmKAN backend: {'CUDA kernels' if self.cuda_backend_active else 'pure PyTorch'}\n"
                f"  extension: {self.reason}\n"
                f"  CUDA kernels compiled in: {kernels}\n"
                f"  GPU visible: {self.gpu_available} (torch {self.torch_version})")


def backend_info() -> BackendInfo:
    """Report whether the CUDA extension is loaded, which ops have kernels, and why not."""
    return BackendInfo(
        extension_loaded=_MODULE is not None,
        reason=_REASON,
        cuda_kernels=tuple(op for op in KERNEL_OPS if has_cuda_kernel(op)),
        gpu_available=torch.cuda.is_available(),
        torch_version=torch.__version__,
    )
