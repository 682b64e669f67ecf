"""Until the backward ops have autograd of their own (second derivatives), a backward with
create_graph=True through a CUDA op raises instead of returning a silently wrong graph."""
import pytest
import torch

from lmKAN import LMKAN1DLayer, LMKAN2DLayer

from conftest import assert_cuda_kernel, rel_l2, requires_gpu

pytestmark = requires_gpu

MESSAGE = r"second derivatives \(a backward with create_graph=True through this op\) are not implemented"


def _loss(kind, layer, x):
    if kind in ("2d", "1d"):
        return layer(x).square().sum()
    return layer.get_hessian_regularization()  # the 2D Hessian or the 1D second difference


@pytest.mark.parametrize("kind", ["2d", "1d", "hessian2d", "second_diff1d"])
def test_create_graph_raises_and_first_derivatives_still_work(kind):
    assert_cuda_kernel("lmkan2d_forward")
    torch.manual_seed(0)
    layer = (LMKAN2DLayer(5, 6, 7) if kind in ("2d", "hessian2d") else LMKAN1DLayer(5, 6, 7)).cuda()
    x = torch.randn(6, 33, device="cuda", requires_grad=True)
    inputs = [layer.func_parameter] + ([x] if kind in ("2d", "1d") else [])
    with pytest.raises(RuntimeError, match=MESSAGE):
        torch.autograd.grad(_loss(kind, layer, x), inputs, create_graph=True)
    # create_graph=False: the first derivatives, as without the failed call
    first = torch.autograd.grad(_loss(kind, layer, x), inputs)
    again = torch.autograd.grad(_loss(kind, layer, x), inputs)
    for a, b in zip(first, again):
        assert a.abs().sum() > 0 and rel_l2(a, b) <= 1e-6
