"""Is it the nvcc-compiled host frames? Throw TORCH_CHECK from a tiny extension built two
ways: the throwing function compiled by the C++ compiler (.cpp) or by nvcc (.cu).

c10::Error captures a C++ backtrace when it is constructed; if unwinding through
nvcc-compiled host code crashes, only the .cu variant dies (rc=-11).
"""
import subprocess
import sys
import tempfile

CPP_DECL = "#include <torch/extension.h>\nvoid throw_check(int64_t v);\n"
BODY = ('#include <torch/extension.h>\nvoid throw_check(int64_t v) {\n'
        '  TORCH_CHECK_VALUE(v == 0, "v must be 0, got ", v);\n}\n')
SCRIPT = r"""
import sys, torch
from torch.utils.cpp_extension import load_inline
kind, build_dir = sys.argv[1], sys.argv[2]
decl, body = {decl!r}, {body!r}
if kind == "cpp":
    mod = load_inline("throw_cpp", cpp_sources=[body], functions=["throw_check"], build_directory=build_dir)
else:
    mod = load_inline("throw_cu", cpp_sources=[decl], cuda_sources=[body], functions=["throw_check"],
                      build_directory=build_dir, extra_cuda_cflags=["-lineinfo"])
try:
    mod.throw_check(3)
except ValueError as e:
    print("ValueError raised:", str(e).splitlines()[0])
""".format(decl=CPP_DECL, body=BODY)


def main():
    for kind in ("cpp", "cu"):
        with tempfile.TemporaryDirectory() as build_dir:
            proc = subprocess.run([sys.executable, "-c", SCRIPT, kind, build_dir], capture_output=True,
                                  text=True, timeout=240)
        out = (proc.stdout.strip() or proc.stderr.strip()[-300:]).replace("\n", " | ")
        print(f"throw from {kind:<4} rc={proc.returncode:<4} {out}")


if __name__ == "__main__":
    main()
