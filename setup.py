"""Build script: the pure-Python package always, the CUDA extension lmKAN._C when it can.

The CUDA extension is built when a CUDA toolkit is found (CUDA_HOME, or nvcc on PATH) and
the installed torch is a CUDA build. Whether a GPU is visible does not matter: a build
machine without a GPU still gets the kernels. Switches:

  LMKAN_NO_CUDA=1       skip the extension (pure-PyTorch package only)
  LMKAN_FORCE_CUDA=1    a missing toolkit or a failed CUDA build is an error, not a warning
  TORCH_CUDA_ARCH_LIST  target GPUs, e.g. "9.0"; default: the visible GPUs' architectures,
                        or DEFAULT_ARCH_LIST below when no GPU is visible
  MAX_JOBS              parallel compile jobs (ninja)

Install with `pip install --no-build-isolation .` so that the build sees the torch it will
run with.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # A100, H100, and PTX that newer GPUs can JIT-compile.


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _log(msg):
    print(f"[lmKAN setup] {msg}", file=sys.stderr)


def _locate_cuda_home():
    """Set CUDA_HOME to a toolkit with headers before torch.utils.cpp_extension reads it.

    torch derives CUDA_HOME from nvcc's location, which is wrong when nvcc on PATH is a
    wrapper script (e.g. /usr/local/bin/nvcc); prefer a directory that has the headers.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


def _cuda_extension():
    """Return (ext_modules, cmdclass) for the CUDA build, or ([], {}) to skip it."""
    force = _flag("LMKAN_FORCE_CUDA")
    if _flag("LMKAN_NO_CUDA"):
        _log("LMKAN_NO_CUDA=1: building the pure-Python package only.")
        return [], {}
    _locate_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        msg = f"torch is not importable ({exc}); install torch first and use --no-build-isolation."
        if force:
            raise RuntimeError(msg) from exc
        _log(msg + " Building the pure-Python package only.")
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        why = ("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)" if CUDA_HOME is None
               else f"torch {torch.__version__} is not a CUDA build")
        if force:
            raise RuntimeError(f"LMKAN_FORCE_CUDA=1 but {why}.")
        _log(f"{why}: building the pure-Python package only (CPU path).")
        return [], {}

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        # Only the target list depends on visible GPUs, never whether to build.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        _log(f"no GPU visible: TORCH_CUDA_ARCH_LIST defaults to {DEFAULT_ARCH_LIST}")

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    version_macros = [
        ("LMKAN_TORCH_VERSION", f'"{torch.__version__}"'),
        ("LMKAN_CUDA_VERSION", f'"{torch.version.cuda}"'),
    ]
    macro_flags = [f"-D{k}={v}" for k, v in version_macros]
    extension = CUDAExtension(
        name="lmKAN._C",
        sources=sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"] + macro_flags,
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"] + macro_flags,
        },
        py_limited_api=False,
    )

    class TolerantBuildExtension(BuildExtension):
        """A failed CUDA build leaves the CPU package usable unless LMKAN_FORCE_CUDA=1."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if force:
                    raise
                # Drop the extension so that no step later looks for its output file.
                self.extensions = [e for e in self.extensions if e is not ext]
                self.distribution.ext_modules = [e for e in self.distribution.ext_modules if e is not ext]
                _log(f"building the CUDA extension failed ({exc}); the package will use the "
                     "pure-PyTorch path. Set LMKAN_FORCE_CUDA=1 to make this an error.")

    _log(f"building the CUDA extension from {len(sources)} sources for "
         f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}")
    return [extension], {"build_ext": TolerantBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
