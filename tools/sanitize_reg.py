"""Small cases of every regulariser kernel, for compute-sanitizer (memcheck, racecheck, synccheck).

Usage: compute-sanitizer --tool memcheck python tools/sanitize_reg.py
Covers: one and several column chunks, partial chunks, sizes of 1, odd block fills, every
window kind of the 2D gradient kernel (generic: G 3, 4, 14; left/right: 15, 26; interior:
28, 64; generic middle windows: 200), the opt-in shared-memory path (G 3100), the value's
one-block and multi-block launches (at most / more than 2 blocks of work of 128 functions x
one chunk), the autograd path (value and gradient through backward()), and hessian2d_sum
over several tables (the one-block launch switching tables, different num_grids in one
launch, more than 8 tables in two launches, its autograd).
"""
import torch

import lmKAN  # noqa: F401 - loads the extension
from lmKAN import _reference
from lmKAN.grids import cdf_borders, uniform_borders


def main():
    torch.manual_seed(0)
    grad_r = torch.tensor(0.75, device="cuda")
    worst = 0.0
    for g, n_out, n_pairs in ((3, 1, 1), (4, 3, 5), (14, 2, 3), (15, 1, 2), (26, 5, 3), (28, 2, 3),
                              (29, 1, 129), (64, 2, 3), (200, 1, 1), (3100, 1, 1),
                              (10, 9, 32), (10, 8, 32)):  # many blocks; two blocks, one launch
        p = torch.randn(g + 1, g + 1, n_out, n_pairs, device="cuda")
        b = cdf_borders(g, device="cuda")
        r = torch.ops.lmkan.hessian2d(p, b)
        d = torch.ops.lmkan.hessian2d_backward(grad_r, p, b)
        ref = _reference.hessian2d(p.double(), b)
        worst = max(worst, abs(r.item() - ref.item()) / abs(ref.item()))
        assert torch.isfinite(d).all()
    for g, n_out, n_in in ((3, 1, 1), (5, 3, 5), (31, 7, 33), (40, 1, 130), (10, 9, 32),
                          (10, 8, 32)):
        p = torch.randn(g + 1, n_out, n_in, device="cuda")
        b = uniform_borders(g, 4.0, device="cuda")
        r = torch.ops.lmkan.second_diff1d(p, b)
        d = torch.ops.lmkan.second_diff1d_backward(grad_r, p, b)
        ref = _reference.second_diff1d(p.double(), b)
        worst = max(worst, abs(r.item() - ref.item()) / abs(ref.item()))
        assert torch.isfinite(d).all()
    p = torch.randn(27, 27, 3, 5, device="cuda", requires_grad=True)
    torch.ops.lmkan.hessian2d(p, cdf_borders(26, device="cuda")).backward()
    assert torch.isfinite(p.grad).all()
    for specs in (((5, 1, 3), (10, 2, 1)), ((10, 64, 16), (10, 8, 32)),
                  ((3, 7, 1), (26, 33, 9), (13, 1, 129), (64, 3, 5)),
                  tuple((4 + i % 5, 1 + i, 2 + (i * 7) % 11) for i in range(11))):
        ps = [torch.randn(g + 1, g + 1, n_out, n_pairs, device="cuda", requires_grad=True)
              for g, n_out, n_pairs in specs]
        bs = [cdf_borders(g, device="cuda") for g, _, _ in specs]
        r = torch.ops.lmkan.hessian2d_sum(ps, bs)
        ref = sum(_reference.hessian2d(q.detach().double(), b).item() for q, b in zip(ps, bs))
        worst = max(worst, abs(r.item() - ref) / abs(ref))
        r.backward()
        assert all(torch.isfinite(q.grad).all() for q in ps)
    torch.cuda.synchronize()
    print(f"sanitize_reg: all cases ran; worst relative value error {worst:.2e}")


if __name__ == "__main__":
    main()
