"""Shared test helpers.

GPU tests use `cuda_op` below: they skip (with the reason) only where no GPU is visible;
on a GPU machine a missing kernel is a failure, never a skip.
"""
import pytest
import torch

from lmKAN._extension import backend_info, has_cuda_kernel

GPU_SKIP_REASON = "needs a CUDA GPU (none visible); runs on the GPU machine"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_SKIP_REASON)


def assert_cuda_kernel(op_name):
    """Fail (not skip) when a GPU is present but the op's CUDA kernel is not compiled in."""
    assert has_cuda_kernel(op_name), f"no CUDA kernel for lmkan::{op_name}: {backend_info()}"


def rel_l2(actual, expected):
    """||actual - expected|| / ||expected|| in float64 (NaN-free inputs expected)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
