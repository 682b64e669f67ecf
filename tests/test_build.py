"""The install never loses the kernels silently (setup.py, lmKAN/_extension.py).

setup.py runs in a scratch copy (it writes lmKAN/_build_status.json beside itself), with
`--name` as its command so that nothing is compiled.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import lmKAN
from conftest import load_module
from lmKAN import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))  # list_elf.py


def _setup_module():
    # not __main__: defines the helpers, builds nothing
    return load_module(os.path.join(ROOT, "setup.py"), "lmkan_setup")


def _run_setup(tmp_path, env_extra, hide_torch):
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path)
    (tmp_path / "lmKAN").mkdir()
    prelude = "import sys\n" + ("sys.modules['torch'] = None\n" if hide_torch else "")
    code = (prelude + "sys.argv = ['setup.py', '--name']\n"
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), "
            "{'__name__': '__main__', '__file__': 'setup.py'})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMKAN_")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    status_file = tmp_path / "lmKAN" / "_build_status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else None
    return proc, status


def _fake_toolkit(tmp_path):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "bin" / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "nvcc").chmod(0o755)
    (home / "include" / "cuda_runtime.h").write_text("")
    return str(home)


def test_isolated_build_with_a_toolkit_stops_with_the_fix(tmp_path):
    """pip's build isolation hides the installed torch: with a toolkit present the build must
    stop and say to install torch first and use --no-build-isolation."""
    proc, status = _run_setup(tmp_path, {"CUDA_HOME": _fake_toolkit(tmp_path)}, hide_torch=True)
    assert proc.returncode != 0
    assert "install torch first, then `pip install --no-build-isolation .`" in proc.stderr
    assert "LMKAN_NO_CUDA=1" in proc.stderr
    assert status["cuda_extension"] == "failed" and "--no-build-isolation" in status["reason"]


def test_no_cuda_switch_is_recorded(tmp_path):
    proc, status = _run_setup(tmp_path, {"LMKAN_NO_CUDA": "1"}, hide_torch=False)
    assert proc.returncode == 0, proc.stderr
    assert status == {"cuda_extension": "skipped", "reason": "LMKAN_NO_CUDA=1 was set at install time"}


def test_force_cuda_without_torch_is_an_error(tmp_path):
    proc, status = _run_setup(tmp_path, {"LMKAN_FORCE_CUDA": "1", "CUDA_HOME": _fake_toolkit(tmp_path)},
                              hide_torch=True)
    assert proc.returncode != 0 and status["cuda_extension"] == "failed"


def test_failed_cuda_build_stops_with_a_last_line_that_says_why(tmp_path):
    """A compile error ends the build (no silent CPU-only install): the compiler's error is
    printed, the last line says the kernels were not built and how to opt out, and the
    status file records it. Every source is broken, so the first compile job fails."""
    if torch.version.cuda is None or not os.path.exists(os.path.join(
            os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        pytest.skip("needs a CUDA build of torch and a CUDA toolkit (nvcc)")
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path)
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    (tmp_path / "lmKAN").mkdir()
    for source in glob.glob(str(tmp_path / "csrc" / "**" / "*.c*"), recursive=True):
        text = open(source).read()
        with open(source, "w") as f:
            f.write("#error broken on purpose by test_build.py\n" + text)
    # an extension left by an earlier in-place build must not survive the failed one
    stale = tmp_path / "lmKAN" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    stale.write_bytes(b"stale")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMKAN_")}
    env.update(MAX_JOBS="1", TORCH_CUDA_ARCH_LIST="8.0")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "error: #error broken on purpose by test_build.py" in output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("[lmKAN setup] error: building the CUDA extension failed"), last
    assert "lmKAN's CUDA kernels were NOT built" in last and "LMKAN_NO_CUDA=1" in last
    status = json.loads((tmp_path / "lmKAN" / "_build_status.json").read_text())
    assert status["cuda_extension"] == "failed" and status["arch_list"] == "8.0"
    assert not stale.exists()


def test_default_architectures_are_the_documented_ones():
    """setup.py's default list is the one README (Installation, Supported GPUs) and .ci/run
    promise, and covers every architecture of README's table."""
    setup = _setup_module()
    readme = open(os.path.join(ROOT, "README.rst")).read()
    assert f"``{setup.DEFAULT_ARCH_LIST}``" in readme
    for arch in setup.DEFAULT_ARCH_LIST.replace("+PTX", "").split(";"):
        assert f"\nsm_{arch.replace('.', '')} " in readme, arch


def test_dynamic_libstdcxx_check():
    """The check that stops an extension linked against a static libstdc++ (its C++ exceptions
    end the process): a C++ library passes, a C-only one is refused, naming the compiler."""
    setup = _setup_module()
    libc10 = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so*"))[0]
    assert any(lib.startswith("libstdc++.so") for lib in setup._elf_needed(libc10))
    setup._check_dynamic_libstdcxx(libc10)
    c_only = os.path.realpath(sys.executable)  # the interpreter is a C program
    assert not any(lib.startswith("libstdc++") for lib in setup._elf_needed(c_only))
    with pytest.raises(RuntimeError, match=r"does not link libstdc\+\+ dynamically .* "
                                           r"CXX=/usr/bin/g\+\+ CUDAHOSTCXX=/usr/bin/g\+\+"):
        setup._check_dynamic_libstdcxx(c_only)


def _built_extension():
    paths = glob.glob(os.path.join(os.path.dirname(lmKAN.__file__), "_C*.so"))
    if not paths or _extension._MODULE is None:
        pytest.skip(f"lmKAN was installed without its CUDA extension: {_extension._REASON}")
    return paths[0]


def test_built_extension_is_not_stale():
    """A CUDA extension built from this tree loads: its ops and their arguments are the ones
    lmKAN._extension expects (OP_ARGUMENTS), so a wrong table there cannot turn the kernels
    off quietly (every kernel test would skip)."""
    built = glob.glob(os.path.join(os.path.dirname(lmKAN.__file__), "_C*.so"))
    if not built:
        pytest.skip("no CUDA extension built in this tree")
    assert _extension._MODULE is not None, _extension._REASON


def test_installed_extension_links_libstdcxx_dynamically():
    setup = _setup_module()
    assert any(lib.startswith("libstdc++.so") for lib in setup._elf_needed(_built_extension()))


def test_installed_extension_covers_its_architecture_list():
    """An extension built for the default list holds a cubin per architecture and PTX of the
    newest (CI builds exactly that: cuobjdump --list-elf / --list-ptx)."""
    path = _built_extension()
    status = _extension._build_status()
    assert status is not None and status["cuda_extension"] == "built", status
    if status["arch_list"].startswith("("):
        pytest.skip("built for the visible GPUs' architectures (TORCH_CUDA_ARCH_LIST unset)")
    import list_elf
    cubins, ptx = list_elf.code_of(path)
    wanted = [a.replace("+PTX", "") for a in re.split(r"[;,\s]+", status["arch_list"].strip())]
    assert cubins == [f"sm_{a.replace('.', '')}" for a in wanted], (status, cubins)
    if status["arch_list"].endswith("+PTX"):
        assert ptx == [f"sm_{wanted[-1].replace('.', '')}"], ptx


@pytest.mark.parametrize("state, reason, expected", [
    ("skipped", "no CUDA toolkit was found at install time", "installed without its CUDA extension: "
     "no CUDA toolkit was found at install time. To get the kernels"),
    ("failed", "building the CUDA extension failed (RuntimeError: Error compiling objects)",
     "was not built: building the CUDA extension failed (RuntimeError: Error compiling objects). "
     "Run the install with `-v`"),
    (None, None, "without a record of why"),
])
def test_missing_extension_reason_comes_from_the_build_record(tmp_path, monkeypatch, state, reason,
                                                             expected):
    path = tmp_path / "_build_status.json"
    if state is not None:
        path.write_text(json.dumps({"cuda_extension": state, "reason": reason}))
    monkeypatch.setattr(_extension, "_STATUS_FILE", str(path))
    message = _extension._missing_reason()
    assert expected in message
    assert "no CUDA toolkit" not in message or state == "skipped"
    assert "pip install --no-build-isolation --force-reinstall --no-deps ." in message
