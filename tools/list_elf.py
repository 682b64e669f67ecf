"""The GPU code inside a built extension: one line of cubin architectures, one of PTX.

  python tools/list_elf.py lmKAN/_C*.so

Uses cuobjdump (CUDA_HOME/bin, PATH, or the copy inside the triton package).
"""
import glob
import os
import re
import shutil
import subprocess
import sys


def cuobjdump():
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                  shutil.which("cuobjdump") or ""]
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                       "cuobjdump"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("cuobjdump not found (CUDA_HOME/bin, PATH, triton)")


def code_of(path):
    """(sorted cubin architectures, sorted PTX architectures) of a file."""
    tool = cuobjdump()
    elf = subprocess.run([tool, "--list-elf", path], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", path], capture_output=True, text=True, check=True).stdout
    cubins = sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", elf)), key=lambda a: int(re.sub(r"\D", "", a)))
    ptxs = sorted(set(re.findall(r"\.(sm_\d+a?)\.ptx", ptx)), key=lambda a: int(re.sub(r"\D", "", a)))
    return cubins, ptxs


if __name__ == "__main__":
    for pattern in sys.argv[1:]:
        for path in glob.glob(pattern):
            cubins, ptxs = code_of(path)
            print(f"{os.path.basename(path)}: cubin {' '.join(cubins) or 'none'}; PTX {' '.join(ptxs) or 'none'}")
