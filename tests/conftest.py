"""Shared test helpers.

GPU tests use `cuda_op` below: they skip (with the reason) only where no GPU is visible;
on a GPU machine a missing kernel is a failure, never a skip.
"""
import atexit
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

# Tuning choices of the test session go to a private cache, never the user's; a cache
# made here is removed when the session ends.
if "LMKAN_CACHE_DIR" not in os.environ:
    os.environ["LMKAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmkan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LMKAN_CACHE_DIR"], ignore_errors=True)

from lmKAN._extension import backend_info, has_cuda_kernel

GPU_SKIP_REASON = "needs a CUDA GPU (none visible); runs on the GPU machine"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_SKIP_REASON)


def load_module(path, name):
    """The Python file at `path` (a tool, an example, setup.py) as a module named `name`,
    imported, not run as __main__."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(code, timeout=120, env=None):
    """Run `code` in a fresh interpreter (a crash fails one test, not the session), with the
    variables of `env` (a dict) set on top of this process's environment."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def assert_cuda_kernel(op_name):
    """Fail (not skip) when a GPU is present but the op's CUDA kernel is not compiled in."""
    assert has_cuda_kernel(op_name), f"no CUDA kernel for lmkan::{op_name}: {backend_info()}"


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) inside the block, the previous setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def cuda_kernel_names(step):
    """The names of the CUDA kernels that step() launches (torch profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}


def rel_l2(actual, expected):
    """||actual - expected|| / ||expected|| in float64 (NaN-free inputs expected)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def check_table_dtype_policy(layer, x, reference, dtype, tol=1e-5):
    """A CUDA layer's table dtype (README "Mixed precision"): autocast rounds the table to
    autocast's dtype, table_dtype=float32 keeps float32 under autocast, table_dtype=dtype
    rounds it outside autocast (float32 output). reference(table): the float64 result on the
    table rounded to `table`. Leaves layer.table_dtype = dtype."""
    with torch.autocast("cuda", dtype=dtype):
        y_auto = layer(x)
    assert y_auto.dtype == dtype
    assert rel_l2(y_auto, reference(dtype)) <= torch.finfo(dtype).eps
    layer.table_dtype = torch.float32
    with torch.autocast("cuda", dtype=dtype):
        y_f32 = layer(x)
    assert rel_l2(y_f32, reference(torch.float32)) <= torch.finfo(dtype).eps
    layer.table_dtype = dtype
    y_inference = layer(x)
    assert y_inference.dtype == torch.float32
    assert rel_l2(y_inference, reference(dtype)) <= tol
    return y_inference


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
