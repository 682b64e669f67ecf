"""The reference's chunked path (lmKAN/_reference.py, CHUNK_ENTRIES; issue 18, item 7): the
same values and gradients as one call, and no lookup call larger than a chunk."""
import pytest
import torch
import torch.nn.functional as F

from lmKAN import _bag, _reference as ref
from lmKAN.grids import cdf_borders, uniform_borders


def _both(fn, monkeypatch, entries):
    whole = fn()
    monkeypatch.setattr(ref, "CHUNK_ENTRIES", entries)
    return whole, fn()


@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_chunks_give_the_same_values_and_gradients(monkeypatch, kind, batch_last):
    torch.manual_seed(0)
    n_in, n_out, g, batch = 6, 5, 7, 101
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), dtype=torch.float64) * 2
    if kind == "2d":
        params = torch.randn(g + 1, g + 1, n_out, n_in // 2, dtype=torch.float64)
        op = lambda a, p: ref.lmkan2d_forward(a, p, cdf_borders(g).double(), batch_last)  # noqa: E731
    else:
        params = torch.randn(g + 1, n_out, n_in, dtype=torch.float64)
        op = lambda a, p: ref.lmkan1d_forward(a, p, uniform_borders(g, 4.0).double(), True,  # noqa: E731
                                              batch_last)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), dtype=torch.float64)

    def run():
        a, p = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
        y = op(a, p)
        return (y.detach(), *torch.autograd.grad(y, (a, p), grad_y))

    whole, chunked = _both(run, monkeypatch, 4 * n_in)  # a few samples per chunk
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    small = x[..., :9] if batch_last else x[:9]
    assert torch.autograd.gradcheck(op, (small.clone().requires_grad_(True),
                                         params.clone().requires_grad_(True)))


def test_no_lookup_is_larger_than_a_chunk(monkeypatch):
    sizes = []
    real = F.embedding_bag

    def recording(indices, *args, **kwargs):
        sizes.append(indices.numel())
        return real(indices, *args, **kwargs)

    monkeypatch.setattr(_bag.F, "embedding_bag", recording)
    monkeypatch.setattr(ref, "CHUNK_ENTRIES", 4096)
    x = torch.randn(40, 1000, requires_grad=True)
    params = torch.randn(9, 9, 3, 20, requires_grad=True)
    ref.lmkan2d_forward(x, params, cdf_borders(8)).sum().backward()
    assert sizes and max(sizes) <= 4096
    # per chunk: the forward, the backward's recomputation of the chunk, and the first-order
    # backward of the lookup (lmKAN/_bag.py: embedding_bag's kernels on a recomputed forward)
    assert len(sizes) == 3 * -(-1000 // (4096 // 80))
