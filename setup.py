"""Build script: the pure-Python package always, the CUDA extension lmKAN._C when it can.

The CUDA extension is built when a CUDA toolkit is found (CUDA_HOME, nvcc on PATH, or
/usr/local/cuda) and the installed torch is a CUDA build. Whether a GPU is visible does not
matter: a build machine without a GPU still gets the kernels.

Never a silent loss of the kernels:
- A CUDA build that fails stops the install with the compiler's error tail and a last line
  that says why (LMKAN_NO_CUDA=1 installs the pure-PyTorch package instead, on purpose).
- With a toolkit present but torch not importable (pip's build isolation), the install stops
  and says to install torch first and use `pip install --no-build-isolation .`: an extension
  must be built against the torch that will run it.
- An extension that does not link libstdc++ dynamically (a compiler wrapper that links it
  statically turns every C++ exception into SIGSEGV) stops the install, naming the compiler.
- What happened is written to lmKAN/_build_status.json, which lmKAN.backend_info() and the
  import-time warning read.

Switches:
  LMKAN_NO_CUDA=1       skip the extension (pure-PyTorch package only)
  LMKAN_FORCE_CUDA=1    a missing toolkit or a CPU-only torch is an error too
  TORCH_CUDA_ARCH_LIST  target GPUs, e.g. "9.0"; default: the visible GPUs' architectures,
                        or DEFAULT_ARCH_LIST below when no GPU is visible
  MAX_JOBS              parallel compile jobs (ninja); nvcc also compiles the architectures
                        of one source file in parallel when jobs outnumber the sources
"""
import glob
import hashlib
import json
import os
import shutil
import struct
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py

# Every architecture from Ampere on (A100; RTX 30xx / A10 / A40; RTX 40xx / L4 / L40S;
# H100 / H200; B200; RTX 50xx), plus PTX of the newest for GPUs after it.
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
HERE = os.path.dirname(os.path.abspath(__file__))
STATUS_FILE = "_build_status.json"
NO_CUDA_HINT = "LMKAN_NO_CUDA=1 installs the pure-PyTorch package instead"


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _log(msg):
    print(f"[lmKAN setup] {msg}", file=sys.stderr, flush=True)


class BuildStatus:
    """What the build did about the CUDA extension, kept for lmKAN._extension to report."""

    def __init__(self):
        self.data = {"cuda_extension": "not attempted", "reason": "setup.py did not decide"}

    def set(self, state, reason, **extra):
        self.data = {"cuda_extension": state, "reason": reason, **extra}
        self.write(os.path.join(HERE, "lmKAN"))

    def write(self, package_dir):
        if os.path.isdir(package_dir):
            with open(os.path.join(package_dir, STATUS_FILE), "w") as f:
                json.dump(self.data, f, indent=1)


STATUS = BuildStatus()


def _locate_cuda_home():
    """Set CUDA_HOME to a toolkit with headers (before torch.utils.cpp_extension reads it).

    torch derives CUDA_HOME from nvcc's location, which is wrong when nvcc on PATH is a
    wrapper script (e.g. /usr/local/bin/nvcc); prefer a directory that has the headers.
    Returns the toolkit directory, or None.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if (os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))
                and os.path.exists(os.path.join(home, "bin", "nvcc"))):
            os.environ["CUDA_HOME"] = home
            return home
    return None


def _elf_needed(path):
    """DT_NEEDED entries (shared libraries) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab_offset + value)
                needed.append(data[strtab_offset + value:end].decode())
    return needed


def _compiler_in_use():
    """(name, resolved path) of the C++ compiler the build uses."""
    name = (os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++").split()[0]
    return name, shutil.which(name) or name


def _check_dynamic_libstdcxx(path):
    """Stop the build when the extension does not load libstdc++ as a shared library."""
    needed = _elf_needed(path)
    if any(lib.startswith("libstdc++.so") for lib in needed):
        return
    name, resolved = _compiler_in_use()
    raise RuntimeError(
        f"the built extension {os.path.basename(path)} does not link libstdc++ dynamically "
        f"(its DT_NEEDED entries: {', '.join(needed) or 'none'}). The C++ compiler "
        f"{name} ({resolved}) links it statically, and a statically linked libstdc++ beside "
        "torch's turns every C++ exception (every argument error of the ops) into a SIGSEGV. "
        "Rebuild with the system compiler: CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++ "
        "pip install --no-build-isolation .")


def _kernel_sources_digest():
    """A short sha256 of every file under csrc/ (paths and contents): which kernel code a
    build holds. The tuning key carries it, so that timings of an earlier build of the same
    lmKAN version (an in-place rebuild after a kernel change) are not reused."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(HERE, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, HERE).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def _nvcc_threads(n_sources):
    """nvcc threads per source file: the jobs shared out over the sources (ceil), at most one
    per target architecture (nvcc compiles the architectures of a file in parallel). With 16
    jobs and 6 sources, 3 threads; with 2 jobs (CI), 1."""
    jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    arch_count = max(1, len([a for a in os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";")
                             .replace(" ", ";").split(";") if a.strip()]))
    return max(1, min(arch_count, -(-jobs // max(1, n_sources))))


def _cuda_extension():
    """Return (ext_modules, cmdclass) for the CUDA build, or ([], {}) to skip it."""
    force = _flag("LMKAN_FORCE_CUDA")
    if _flag("LMKAN_NO_CUDA"):
        STATUS.set("skipped", "LMKAN_NO_CUDA=1 was set at install time")
        _log("LMKAN_NO_CUDA=1: building the pure-Python package only.")
        return [], {}
    cuda_home = _locate_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        if cuda_home is not None or force:
            msg = (f"a CUDA toolkit is present ({cuda_home}) but torch is not importable in "
                   f"the build environment ({exc}). lmKAN's kernels must be compiled against "
                   "the torch that will run them: install torch first, then "
                   "`pip install --no-build-isolation .` (pip's default build isolation hides "
                   f"the installed torch). {NO_CUDA_HINT}.")
            STATUS.set("failed", msg)
            sys.exit(f"[lmKAN setup] error: {msg}")  # the message alone, no traceback
        STATUS.set("skipped", "no CUDA toolkit was found at install time (and torch was not "
                   "importable in the build environment)")
        _log("no CUDA toolkit and no torch in the build environment: building the pure-Python "
             "package only (CPU path).")
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        why = ("no CUDA toolkit was found at install time (looked at CUDA_HOME, nvcc on PATH, "
               "/usr/local/cuda)" if CUDA_HOME is None
               else f"the installed torch {torch.__version__} is not a CUDA build")
        STATUS.set("skipped", why, torch_version=torch.__version__)
        if force:
            sys.exit(f"[lmKAN setup] error: LMKAN_FORCE_CUDA=1 but {why}.")
        _log(f"{why}: building the pure-Python package only (CPU path).")
        return [], {}

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        # Only the target list depends on visible GPUs, never whether to build.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        _log(f"no GPU visible: TORCH_CUDA_ARCH_LIST defaults to {DEFAULT_ARCH_LIST}")
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "(the visible GPUs')")

    # csrc/ops.cpp (the schemas), csrc/common/ (shared primitives), one folder per op family
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     + glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    n_cuda = sum(s.endswith(".cu") for s in sources)
    version_macros = [
        ("LMKAN_TORCH_VERSION", f'"{torch.__version__}"'),
        ("LMKAN_CUDA_VERSION", f'"{torch.version.cuda}"'),
    ]
    macro_flags = [f"-D{k}={v}" for k, v in version_macros]
    extension = CUDAExtension(
        name="lmKAN._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"] + macro_flags,
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
                     f"--threads={_nvcc_threads(n_cuda)}"] + macro_flags,
        },
        py_limited_api=False,
    )
    details = dict(arch_list=arch_list, torch_version=torch.__version__, cuda_home=CUDA_HOME,
                   cxx=_compiler_in_use()[1], kernel_sources=_kernel_sources_digest())

    class CheckedBuildExtension(BuildExtension):
        """Records the outcome; a failure stops the install with a line that says why."""

        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False) or self.inplace:
                # an object directory that outlives the install (pip's editable build would
                # use a fresh temporary one), so that installing again recompiles only the
                # sources that changed
                self.build_temp = os.path.join(HERE, "build", f"temp-{sys.implementation.cache_tag}")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                _check_dynamic_libstdcxx(self.get_ext_fullpath(ext.name))
            except Exception as exc:  # noqa: BLE001 - any compiler or link failure
                reason = (f"building the CUDA extension failed ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r})")
                STATUS.set("failed", reason, **details)
                # no extension file may outlive a failed build: the build directory's, nor the
                # copy that an earlier in-place or editable build left beside the sources,
                # where `import lmKAN._C` finds it (a rejected one crashes on any error)
                built = self.get_ext_fullpath(ext.name)
                beside_sources = os.path.join(HERE, *ext.name.split(".")[:-1],
                                              os.path.basename(built))
                for path in {built, beside_sources}:
                    if os.path.exists(path):
                        os.remove(path)
                # the message alone as the install's last line (no traceback after it)
                sys.exit(f"[lmKAN setup] error: {reason}; the compiler's output is above. "
                         f"lmKAN's CUDA kernels were NOT built. Fix the error, or install without "
                         f"them on purpose: {NO_CUDA_HINT}.")
            STATUS.set("built", f"built for TORCH_CUDA_ARCH_LIST={arch_list}", **details)
            STATUS.write(os.path.join(self.build_lib, "lmKAN"))  # into the wheel too

    STATUS.set("building", "the build started but did not finish", **details)
    _log(f"building the CUDA extension from {len(sources)} sources for "
         f"TORCH_CUDA_ARCH_LIST={arch_list}")
    return [extension], {"build_ext": CheckedBuildExtension.with_options(use_ninja=True)}


class BuildPyWithStatus(build_py):
    """Ships the build status file with the package (written again after build_ext)."""

    def run(self):
        super().run()
        STATUS.write(os.path.join(self.build_lib, "lmKAN"))


if __name__ == "__main__":  # pip's build backend and `python setup.py` run it as __main__
    ext_modules, cmdclass = _cuda_extension()
    cmdclass["build_py"] = BuildPyWithStatus
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
