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


def _float64_case(kind, batch_last, n_in=6, n_out=5, g=7, batch=101):
    """x, params and the reference op (x, params) -> y of a small float64 layer."""
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), dtype=torch.float64) * 2
    if kind == "2d":
        params = torch.randn(g + 1, g + 1, n_out, n_in // 2, dtype=torch.float64)
        borders = cdf_borders(g).double()
        return x, params, lambda a, p: ref.lmkan2d_forward(a, p, borders, batch_last)
    params = torch.randn(g + 1, n_out, n_in, dtype=torch.float64)
    borders = uniform_borders(g, 4.0).double()
    return x, params, lambda a, p: ref.lmkan1d_forward(a, p, borders, True, batch_last)


@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_chunks_give_the_same_values_and_gradients(monkeypatch, kind, batch_last):
    torch.manual_seed(0)
    n_in, n_out, batch = 6, 5, 101
    x, params, op = _float64_case(kind, batch_last)
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
    # per chunk: the forward and the backward's recomputation of the chunk (the first-order
    # backward of the lookup is dense here, no embedding_bag: lmKAN/_bag.py, 81 table rows
    # per pair against 4 bag columns, 20.25 per column)
    assert len(sizes) == 2 * -(-1000 // (4096 // 80))


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_dense_and_gathered_bag_products_agree(monkeypatch, kind):
    """lmKAN/_bag.py's scatter and dot in their dense form (a table with few rows per bag
    column) and their gathered form give the same first and second derivatives; the dense
    form's sample chunks (GATHER_ELEMENTS) change nothing either."""
    torch.manual_seed(1)
    n_out, g, batch = 5, 7, 101
    x, params, op = _float64_case(kind, False, n_out=n_out, g=g, batch=batch)
    grad_y, r = torch.randn(batch, n_out, dtype=torch.float64), torch.randn_like(x)

    def run():
        a, p = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
        first = torch.autograd.grad(op(a, p), (a, p), grad_y)  # grad mode off: first order
        gx, gp = torch.autograd.grad(op(a, p), (a, p), grad_y, create_graph=True)
        second = torch.autograd.grad((gx * r).sum() + gp.square().sum(), (a, p))
        return (*first, *second)

    monkeypatch.setattr(_bag, "DENSE_ROWS_PER_COLUMN", 0)  # gathered
    gathered = run()
    monkeypatch.setattr(_bag, "DENSE_ROWS_PER_COLUMN", 1000)  # dense
    dense = run()
    monkeypatch.setattr(_bag, "GATHER_ELEMENTS", 7 * 2 * (g + 1) ** 2)  # dense, several chunks
    dense_chunked = run()
    for a, b, c in zip(gathered, dense, dense_chunked):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)
