"""The image offsets of the forward kernels (csrc/common/images.h: SampleOffsets), compiled
from that header with the system C++ compiler and checked against numpy's indices of a
contiguous [N, F, L] tensor, up to the 32-bit limit of its division (kMaxImageSamples).
Runs on the CPU: the kernels call the same inline function."""
import os
import shutil
import subprocess

import numpy as np
import pytest

HEADER_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "csrc")
PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include <string>
#include "common/images.h"

// usage: offsets STEP LEN IMAGE_STRIDE S... -> one offset per line; offsets images F L S...
// -> the same of image_offsets(F, L); "limit" -> kMaxImageSamples
int main(int argc, char** argv) {
  if (argc == 2) { std::printf("%lld\n", (long long)lmkan::kMaxImageSamples); return 0; }
  if (std::string(argv[1]) == "images") {
    const lmkan::SampleOffsets o = lmkan::image_offsets(std::atoll(argv[2]), std::atoll(argv[3]));
    for (int i = 4; i < argc; ++i) std::printf("%lld\n", (long long)o(std::atoll(argv[i])));
    return 0;
  }
  const lmkan::SampleOffsets o{std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3])};
  for (int i = 4; i < argc; ++i) std::printf("%lld\n", (long long)o(std::atoll(argv[i])));
  return 0;
}
"""


@pytest.fixture(scope="module")
def offsets(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    directory = tmp_path_factory.mktemp("images")
    source, binary = directory / "offsets.cpp", directory / "offsets"
    source.write_text(PROGRAM)
    subprocess.run([compiler, "-std=c++17", "-O1", "-I", HEADER_DIR, str(source), "-o",
                    str(binary)], check=True, capture_output=True)

    def run(*args):
        out = subprocess.run([str(binary), *map(str, args)], check=True, capture_output=True,
                             text=True).stdout
        return [int(v) for v in out.split()]
    return run


@pytest.mark.parametrize("n,features,length", [(5, 3, 7), (3, 10, 256), (1, 4, 9), (17, 1, 1)])
def test_offsets_of_images(offsets, n, features, length):
    """Sample s = n L + l of images [N, F, L] (feature 0) sits where numpy puts [n, 0, l]."""
    samples = list(range(n * length))
    index = np.arange(n * features * length).reshape(n, features, length)
    expected = [int(index[s // length, 0, s % length]) for s in samples]
    assert offsets(1, length, features * length, *samples) == expected
    assert offsets("images", features, length, *samples) == expected  # image_offsets


def test_plain_offsets_need_no_division(offsets):
    """A plain tensor is one image of every sample: s * step (batch-first rows of 6)."""
    assert offsets(6, 1000, 0, 0, 1, 999) == [0, 6, 5994]


def test_offsets_up_to_the_32_bit_limit(offsets):
    """The division is 32-bit: samples up to kMaxImageSamples (2^32 - 1 less the slack of the
    1D tiles' warps past the batch) still land in their image."""
    limit = offsets("limit")[0]
    assert limit == 2**32 - 1 - 256
    length, stride = 65536, 3 * 65536
    for s in (length, limit - 1, limit + 255, 2**32 - 2):
        assert offsets(1, length, stride, s) == [(s // length) * stride + s % length]
