"""The shared-memory budgets of other GPUs, run on this one (LMKAN_SMEM_BUDGET_KB).

Consumer GPUs (sm_86, sm_89, sm_120) let a block opt in to 99 KB of shared memory, the A100
(sm_80) 163 KB, Hopper and B200 227 KB. The kernels plan with csrc/common/device_limits.h, where
LMKAN_SMEM_BUDGET_KB caps the budget: at 99 and 163 KB the num_grids limits must be those
README's limit table gives, and at and just past each limit (past it: the L2 fallbacks) the
kernels must match the float64 reference.
"""
import pytest
import torch

from lmKAN import LMKAN1DLayer
from lmKAN.lmkan1d import _max_num_grids_1d
from lmKAN.lmkan2d import max_num_grids

from conftest import assert_cuda_kernel, requires_gpu
from cases_2d import TILES, check_case

pytestmark = requires_gpu

MODES = ("forward", "backward", "backward_fast", "backward_deterministic")
# README.rst, the limit table under "Performance": the largest num_grids per opt-in
# shared-memory budget (KiB per block), 2D as {mode: (tile 4, tile 8, tile 16)} (the
# forward's also with 16-bit tables), and the 1D layer's.
LIMITS = {
    99: {"forward": (27, 18, 13), "backward": (157, 157, 157), "backward_fast": (157, 157, 157),
         "backward_deterministic": (26, 18, 12), "forward_16bit": (38, 27, 18), "1d": 40},
    163: {"forward": (35, 24, 17), "backward": (202, 202, 202), "backward_fast": (202, 202, 202),
          "backward_deterministic": (34, 23, 16), "forward_16bit": (49, 35, 24), "1d": 72},
    227: {"forward": (41, 29, 20), "backward": (239, 239, 239), "backward_fast": (239, 239, 239),
          "backward_deterministic": (41, 28, 19), "forward_16bit": (59, 41, 29), "1d": 104},
}


def _limits():
    table = {mode: tuple(max_num_grids(tile, mode, "cuda") for tile in TILES) for mode in MODES}
    sixteen = {t: tuple(max_num_grids(tile, "forward", "cuda", t) for tile in TILES)
               for t in (torch.float16, torch.bfloat16)}
    assert sixteen[torch.float16] == sixteen[torch.bfloat16]  # the same staged bytes
    table["forward_16bit"] = sixteen[torch.bfloat16]
    table["1d"] = _max_num_grids_1d(torch.device("cuda"))
    return table


@pytest.mark.parametrize("budget", sorted(LIMITS))
def test_limits_per_budget(budget, monkeypatch):
    assert_cuda_kernel("lmkan2d_forward")
    own_kb = torch.cuda.get_device_properties(0).shared_memory_per_block_optin // 1024
    if budget > own_kb:  # a cap above the device's own shared memory changes nothing
        pytest.skip(f"this GPU allows {own_kb} KB per block, less than the {budget} KB budget")
    own = _limits()
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", str(budget))
    capped = _limits()
    assert capped == LIMITS[budget], f"at {budget} KB: {capped}"
    for mode in MODES:  # a cap never raises a limit
        assert all(c <= o for c, o in zip(capped[mode], own[mode])), mode
    monkeypatch.delenv("LMKAN_SMEM_BUDGET_KB")
    assert _limits() == own  # the cap is read at every query, the cached limits follow it


@pytest.mark.parametrize("budget", (99, 163))
@pytest.mark.parametrize("tile", TILES)
def test_2d_at_and_past_the_limits(budget, tile, monkeypatch):
    """At each mode's limit the kernels stage in shared memory; one past it they take the L2
    variants (forward: the output-lanes kernel; deterministic backward: table and dP in
    global memory). Both against the float64 reference."""
    assert_cuda_kernel("lmkan2d_backward")
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", str(budget))
    forward_limit = max_num_grids(tile, "forward", "cuda")
    for g in (forward_limit, forward_limit + 1):
        check_case(g, 6, 37, 333, True, tile, False, block=256)
        check_case(g, 6, 37, 333, False, tile, True, block=1024)
    det_limit = max_num_grids(tile, "backward_deterministic", "cuda")
    for g in (det_limit, det_limit + 1):
        check_case(g, 8, 300, 257, True, tile, False, block=128, deterministic=True, forward=False)
        check_case(g, 8, 45, 257, False, tile, True, block=256, deterministic=True, forward=False)


@pytest.mark.parametrize("budget", (99, 163))
def test_2d_sorted_backward_past_its_histogram(budget, monkeypatch):
    """Past the cell histogram's limit the non-deterministic backward runs the L2 variants."""
    assert_cuda_kernel("lmkan2d_backward")
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", str(budget))
    limit = max_num_grids(8, "backward", "cuda")
    for g in (limit, limit + 1):
        check_case(g, 4, 9, 400, True, 8, False, block=128, forward=False)
        check_case(g, 4, 9, 400, False, 8, True, block=256, forward=False)


@pytest.mark.parametrize("budget", (24, 48))
def test_2d_sorted_backward_under_a_small_budget(budget, monkeypatch):
    """Under a budget below every GPU's opt-in the sorted backward's blocks take fewer warps
    than the block size asks for (a warp stages 6,208 bytes: its segment's entries and grad_x
    sums): 3 and 7 of 16 at 24 and 48 KB. Against the float64 reference, ragged segments."""
    assert_cuda_kernel("lmkan2d_backward")
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", str(budget))
    check_case(5, 6, 70, 3001, True, 8, False, block=512, forward=False)
    check_case(5, 6, 70, 3001, False, 8, True, block=512, forward=False)


@pytest.mark.parametrize("budget", (99, 163))
def test_1d_at_the_limit_and_a_clear_error_past_it(budget, monkeypatch):
    assert_cuda_kernel("lmkan1d_forward")
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", str(budget))
    limit = _max_num_grids_1d(torch.device("cuda"))
    x = torch.randn(300, 6, device="cuda", requires_grad=True)
    layer = LMKAN1DLayer(limit, 6, 5, batch_last=False).cuda()
    reference = LMKAN1DLayer(limit, 6, 5, batch_last=False).double()
    reference.load_state_dict(layer.state_dict())
    xd = x.detach().cpu().double().requires_grad_(True)
    layer(x).square().sum().backward()
    reference(xd).square().sum().backward()
    err = (x.grad.cpu().double() - xd.grad).norm() / xd.grad.norm()
    assert err <= 1e-5
    err = ((layer.func_parameter.grad.cpu().double() - reference.func_parameter.grad).norm()
           / reference.func_parameter.grad.norm())
    assert err <= 1e-5
    with pytest.raises(ValueError, match=f"num_grids={limit + 1}"):
        LMKAN1DLayer(limit + 1, 6, 5, batch_last=False).cuda()(x)
