"""tools/probe_gather_mma.py: the gather-MMA probe's lane mapping, emulated on the CPU.

The probe kernel runs on a GPU only; its emulation replays one warp's ldmatrix addresses in
the packed, swizzled slices and the mma.sync fragments in float64, so the mapping and the
conflict-free claim are checked here before any GPU time is spent on them.
"""
import os

import pytest
from conftest import load_module

PROBE_PATH = os.path.join(os.path.dirname(__file__), "..", "tools", "probe_gather_mma.py")


@pytest.fixture(scope="module")
def probe():
    return load_module(PROBE_PATH, "probe_gather_mma")


@pytest.mark.parametrize("warp_samples", [32, 16])
def test_emulated_warp_matches_the_reference_with_one_wavefront_per_matrix(probe, warp_samples):
    rel_l2, worst = probe.emulate(warp_samples=warp_samples)
    assert rel_l2 <= 1e-5  # the package's contract; the hi/lo weights leave ~2e-6
    assert worst == 1


def test_emulation_fails_when_the_packing_disagrees_with_the_kernel(probe, monkeypatch):
    # both copies swizzled as copy 0: the kernel's reads of copy 1 then find other chunks,
    # and its two samples per matrix share bank quads
    original = probe.swizzle_index
    monkeypatch.setattr(probe, "swizzle_index", lambda g, copy, device: original(g, 0, device))
    rel_l2, worst = probe.emulate()
    assert rel_l2 > 1e-2
