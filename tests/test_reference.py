"""The pure-PyTorch reference against a direct loop evaluation of docs/spec.md (float64)."""
import math

import pytest
import torch

from lmKAN import _reference as ref
from lmKAN.grids import cdf_borders, find_cell, uniform_borders

import spec_loops

F64 = torch.float64
TOL = 1e-6  # issue contract; float64 agreement is in fact ~1e-14


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def spread_inputs(*shape):
    """N(0, 1.5^2) values with some far outside the grid (beyond the end nodes)."""
    x = torch.randn(*shape, dtype=F64) * 1.5
    flat = x.view(-1)
    far = torch.randperm(flat.numel())[: max(1, flat.numel() // 6)]
    flat[far] = torch.empty(far.numel(), dtype=F64).uniform_(-40, 40)
    return x


@pytest.mark.parametrize("G", [3, 4, 9, 26])
def test_cdf_borders_match_spec(G):
    assert rel(cdf_borders(G, F64), spec_loops.cdf_nodes(G)) < 1e-15
    g = cdf_borders(G, F64)
    assert torch.all(g[1:] > g[:-1])


@pytest.mark.parametrize("uniform", [False, True])
def test_cells_in_range_for_any_float(uniform):
    G = 7
    g = uniform_borders(G, 4.0, F64) if uniform else cdf_borders(G, F64)
    v = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 3e38, -3e38, 0.0,
                      -0.0, 1e-30, 5.0, -5.0], dtype=F64)
    for dtype in (torch.float32, F64):
        index, d = find_cell(v.to(dtype), g, uniform=uniform)
        assert index.min() >= 0 and index.max() <= G - 1
        assert torch.isnan(d[0]) and not torch.isnan(d[7:]).any()
    # Against the loop definition on finite values.
    finite = spread_inputs(200)
    index, d = find_cell(finite, g, uniform=uniform)
    for k in range(200):
        i, dd = spec_loops.cell(finite[k].item(), g.tolist(), uniform, 4.0)
        assert index[k].item() == i and abs(d[k].item() - dd) < 1e-12


@pytest.mark.parametrize("G,n_in,n_out,batch", [(3, 2, 1, 5), (8, 6, 5, 7), (26, 4, 3, 4)])
def test_lmkan2d_forward_and_gradients_match_spec(G, n_in, n_out, batch):
    g = cdf_borders(G, F64)
    P = torch.randn(G + 1, G + 1, n_out, n_in // 2, dtype=F64, requires_grad=True)
    x = spread_inputs(n_in, batch).requires_grad_(True)
    y = ref.lmkan2d_forward(x, P, g)
    gy = torch.randn_like(y)
    gx, gP = torch.autograd.grad(y, (x, P), gy)
    Pl = P.detach().tolist()
    exp_y, exp_gx = torch.zeros(n_out, batch, dtype=F64), torch.zeros(n_in, batch, dtype=F64)
    exp_gP = torch.zeros_like(P)
    for b in range(batch):
        yb, dydx, dydp = spec_loops.lmkan2d(x[:, b].tolist(), Pl, g.tolist())
        exp_y[:, b] = torch.tensor(yb, dtype=F64)
        for o in range(n_out):
            exp_gx[:, b] += gy[o, b].item() * torch.tensor(dydx[o], dtype=F64)
            for idx, w in dydp[o].items():
                exp_gP[idx] += gy[o, b].item() * w
    assert rel(y.detach(), exp_y) < TOL
    assert rel(gx, exp_gx) < TOL
    assert rel(gP, exp_gP) < TOL


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("G,n_in,n_out,batch", [(3, 1, 1, 3), (10, 5, 4, 9)])
def test_lmkan1d_forward_and_gradients_match_spec(uniform, G, n_in, n_out, batch):
    g = uniform_borders(G, 4.0, F64) if uniform else cdf_borders(G, F64)
    C = torch.randn(G + 1, n_out, n_in, dtype=F64, requires_grad=True)
    x = spread_inputs(n_in, batch).requires_grad_(True)
    y = ref.lmkan1d_forward(x, C, g, uniform_grid=uniform)
    gy = torch.randn_like(y)
    gx, gC = torch.autograd.grad(y, (x, C), gy)
    exp_y, exp_gx = torch.zeros(n_out, batch, dtype=F64), torch.zeros(n_in, batch, dtype=F64)
    exp_gC = torch.zeros_like(C)
    Cl = C.detach().tolist()
    for b in range(batch):
        yb, dydx = spec_loops.lmkan1d(x[:, b].tolist(), Cl, g.tolist(), uniform, 4.0)
        exp_y[:, b] = torch.tensor(yb, dtype=F64)
        for o in range(n_out):
            exp_gx[:, b] += gy[o, b].item() * torch.tensor(dydx[o], dtype=F64)
            for i in range(n_in):
                k, d = spec_loops.cell(x[i, b].item(), g.tolist(), uniform, 4.0)
                exp_gC[k, o, i] += gy[o, b].item() * (1 - d)
                exp_gC[k + 1, o, i] += gy[o, b].item() * d
    assert rel(y.detach(), exp_y) < TOL
    assert rel(gx, exp_gx) < TOL
    assert rel(gC, exp_gC) < TOL


@pytest.mark.parametrize("G,n_out,n_pairs", [(3, 1, 1), (6, 2, 3), (12, 3, 1)])
def test_hessian2d_matches_spec(G, n_out, n_pairs):
    g = cdf_borders(G, F64)
    P = torch.randn(G + 1, G + 1, n_out, n_pairs, dtype=F64)
    assert rel(ref.hessian2d(P, g), spec_loops.hessian2d(P.tolist(), g.tolist())) < TOL


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("G,n_out,n_in", [(3, 1, 1), (9, 3, 2)])
def test_second_diff1d_matches_spec(uniform, G, n_out, n_in):
    g = uniform_borders(G, 3.0, F64) if uniform else cdf_borders(G, F64)
    C = torch.randn(G + 1, n_out, n_in, dtype=F64)
    assert rel(ref.second_diff1d(C, g), spec_loops.second_diff1d(C.tolist(), g.tolist())) < TOL


def test_regularisers_vanish_on_planes_and_lines():
    """A bilinear-free plane a*x + b*y + c has zero Hessian; a line has zero f''."""
    G = 9
    g = cdf_borders(G, F64)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    plane = (0.7 * gx - 1.3 * gy + 0.2)[:, :, None, None].expand(G + 1, G + 1, 2, 3).contiguous()
    assert abs(ref.hessian2d(plane, g).item()) < 1e-20
    line = (2.5 * g - 1)[:, None, None].expand(G + 1, 2, 2).contiguous()
    assert abs(ref.second_diff1d(line, g).item()) < 1e-20
    # A pure x*y term has fxy = 1 exactly and fxx = fyy = 0: R = 2 per function.
    saddle = (gx * gy)[:, :, None, None].expand(G + 1, G + 1, 1, 2).contiguous()
    assert ref.hessian2d(saddle, g).item() == pytest.approx(4.0, rel=1e-12)


def test_gradcheck_all_reference_ops():
    g = cdf_borders(5, F64)
    gu = uniform_borders(5, 4.0, F64)
    x = spread_inputs(4, 3).requires_grad_(True)
    P2 = torch.randn(6, 6, 3, 2, dtype=F64, requires_grad=True)
    P1 = torch.randn(6, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ref.lmkan2d_forward(a, b, g), (x, P2))
    assert torch.autograd.gradcheck(lambda a, b: ref.lmkan2d_forward(a, b, g, batch_last=False),
                                    (x.detach().t().contiguous().requires_grad_(True), P2))
    for borders, uniform in ((g, False), (gu, True)):
        assert torch.autograd.gradcheck(lambda a, b: ref.lmkan1d_forward(a, b, borders, uniform), (x, P1))
    assert torch.autograd.gradcheck(lambda p: ref.hessian2d(p, g), (P2,))
    assert torch.autograd.gradcheck(lambda p: ref.second_diff1d(p, g), (P1,))


@pytest.mark.parametrize("batch_last", [True, False])
def test_wrong_feature_count_raises(batch_last):
    """The reference (the CPU path of ops.lmkan2d / ops.lmkan1d) checks x's features as the
    kernels do: an odd count once broadcast the pairs' two inputs against each other."""
    g = cdf_borders(5, F64)
    x = spread_inputs(3, 7) if batch_last else spread_inputs(7, 3)
    with pytest.raises(ValueError, match=r"x has 3 input features but params expects "
                                         r"input_dim=2\*2=4"):
        ref.lmkan2d_forward(x, torch.randn(6, 6, 5, 2, dtype=F64), g, batch_last)
    with pytest.raises(ValueError, match=r"x must have 4 input features \(params.size\(2\)\) "
                                         rf"along dim {0 if batch_last else 1}, got shape"):
        ref.lmkan1d_forward(x, torch.randn(6, 5, 4, dtype=F64), g, False, batch_last)


def test_nan_input_poisons_only_its_sample():
    g = cdf_borders(8, F64)
    P = torch.randn(9, 9, 4, 3, dtype=F64)
    x = spread_inputs(6, 5)
    x[3, 2] = float("nan")
    y = ref.lmkan2d_forward(x, P, g)
    assert torch.isnan(y[:, 2]).all()
    assert not torch.isnan(y[:, [0, 1, 3, 4]]).any()
    C = torch.randn(9, 4, 6, dtype=F64)
    y1 = ref.lmkan1d_forward(x, C, g)
    assert torch.isnan(y1[:, 2]).all() and not torch.isnan(y1[:, [0, 1, 3, 4]]).any()


def test_extreme_inputs_never_index_out_of_range():
    g = cdf_borders(8, torch.float32)
    P = torch.randn(9, 9, 2, 2)
    x = torch.tensor([[float("inf"), -float("inf"), 3e38, -3e38],
                      [1e30, float("nan"), -1e30, 0.0],
                      [0.5, 0.5, 0.5, 0.5],
                      [-0.5, 0.5, 80.0, -80.0]])
    y = ref.lmkan2d_forward(x, P, g)  # would raise on an out-of-range embedding index
    assert y.shape == (2, 4)
    assert math.isfinite(ref.lmkan2d_forward(torch.full((4, 1), 1e4), P, g).abs().max().item())
