"""Weighted row lookups of the reference, differentiable to any order (docs/spec.md, "Second
derivatives").

Both layers' references are one bilinear op: each sample b is a "bag" of J table rows,

    lookup(rows, table, weights)[b] = sum_j weights[b, j] * table[rows[b, j]]     [B, N_out]

(`embedding_bag` with per-sample weights). Its derivatives are two more bilinear ops of the
same three index sets, and theirs are the three again, so the algebra closes:

    scatter(rows, weights, g)[r] = sum over (b, j) with rows[b, j] = r of weights[b, j] * g[b]
    dot(rows, table, g)[b, j]    = <g[b], table[rows[b, j]]>

    d lookup  = scatter (table), dot (weights)
    d scatter = lookup (g), dot (weights)
    d dot     = scatter (table), lookup (g)

Each is an autograd Function whose backward calls the others, so `create_graph=True`
gradients (forces from energies, gradient penalties) work through the layers, at every
order. The weights' own dependence on x (the bilinear or linear weights of the cell) is
ordinary autograd. `embedding_bag`'s own backward has no derivative in PyTorch, so it serves
only first-order backward passes (grad mode off), where it is the fastest.

scatter and dot take one of two forms. Where the table has few rows per bag column
(num_rows <= DENSE_ROWS_PER_COLUMN * J: the 1D reference has G + 1/2 rows per column, so
num_grids <= 23; the 2D reference (G+1)^2 / 4, so num_grids <= 8), they are dense products: the bags as a dense [B, num_rows] matrix S
(J weights per row), scatter = S^T g and dot = (g table^T) gathered at the bags' rows, over
chunks of samples whose S stays under GATHER_ELEMENTS values. Elsewhere they gather J rows
per sample, over groups of bag columns whose temporaries stay under GATHER_ELEMENTS values.
The dense form does num_rows / J times the arithmetic of the gathers, in matrix products:
on 2 CPU cores (torch 2.14.1; docs/decisions.md) it took 0.1 and 2.7 ms where
embedding_bag's backward took 1.5 and 25 ms (6 rows per column), 41 against 50 ms (20 rows),
and lost at 31.5 (the 1D layer's default 32 points). The first-order backward uses it instead
of embedding_bag's wherever it applies.
"""
import contextlib

import torch
import torch.nn.functional as F

__all__ = ["bag_lookup"]

GATHER_ELEMENTS = 1 << 24  # values of one column group's gathered rows (64 MB in float32)
# Dense scatter and dot where num_rows <= this many rows per bag column (against
# embedding_bag's backward on 2 CPU cores: faster at 6 and 20, slower at 31.5).
DENSE_ROWS_PER_COLUMN = 24


def bag_lookup(rows, table, weights):
    """sum_j weights[b, j] * table[rows[b, j]]: rows [B, J] (int64), table [R, N_out],
    weights [B, J] (table's dtype). Returns [B, N_out]."""
    return _Lookup.apply(rows, table, weights)


def _column_groups(rows, n_out):
    """Slices of the J bag columns whose gathered rows take at most GATHER_ELEMENTS values."""
    batch, bag = rows.shape
    width = max(1, GATHER_ELEMENTS // max(1, batch * n_out))
    return [slice(j, min(bag, j + width)) for j in range(0, bag, width)]


def _dense(rows, num_rows):
    """Whether scatter and dot take their dense form (see the module's docstring); not while
    torch.compile traces (its chunks over the batch would guard on a symbolic size)."""
    return (num_rows <= DENSE_ROWS_PER_COLUMN * rows.shape[1]
            and not torch.compiler.is_compiling())


def _sample_chunks(batch, num_rows):
    """Slices of the samples whose dense [chunk, num_rows] matrix takes at most
    GATHER_ELEMENTS values (one empty slice for an empty batch)."""
    size = max(1, GATHER_ELEMENTS // max(1, num_rows))
    return [slice(b, min(batch, b + size)) for b in range(0, max(batch, 1), size)]


def _full_precision(device):
    """Autocast off for the dense products (in a backward under an autocast region, matmul
    would run in 16 bits where the gathered form multiplies in the tensors' dtype)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _bags_as_matrix(rows, weights, num_rows):
    """The bags of rows [chunk, J] with weights as a dense [chunk, num_rows] matrix."""
    return weights.new_zeros(rows.shape[0], num_rows).scatter_add_(1, rows, weights)


def _scatter(rows, weights, g, num_rows):
    out = g.new_zeros(num_rows, g.shape[1])
    if _dense(rows, num_rows):
        with _full_precision(g.device):
            for s in _sample_chunks(rows.shape[0], num_rows):
                out.addmm_(_bags_as_matrix(rows[s], weights[s], num_rows).t(), g[s])
        return out
    for cols in _column_groups(rows, g.shape[1]):
        contrib = weights[:, cols, None] * g[:, None, :]
        out.index_add_(0, rows[:, cols].reshape(-1), contrib.reshape(-1, g.shape[1]))
    return out


def _dot(rows, table, g):
    if _dense(rows, table.shape[0]):
        with _full_precision(g.device):
            parts = [(g[s] @ table.t()).gather(1, rows[s])
                     for s in _sample_chunks(rows.shape[0], table.shape[0])]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    parts = [(table[rows[:, cols]] * g[:, None, :]).sum(-1)
             for cols in _column_groups(rows, table.shape[1])]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _embedding_bag(rows, table, weights):
    return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, table, weights):
        ctx.save_for_backward(rows, table, weights)
        return _embedding_bag(rows, table, weights)

    @staticmethod
    def backward(ctx, g):
        rows, table, weights = ctx.saved_tensors
        want_table, want_weights = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not _dense(rows, table.shape[0])):
            # First order, eager, a table of many rows per bag column: embedding_bag's own
            # backward kernels on a recomputed forward (torch.compile traces the
            # differentiable ops below instead: it does not trace torch.autograd.grad).
            with torch.enable_grad():
                t = table.detach().requires_grad_(want_table)
                w = weights.detach().requires_grad_(want_weights)
                wanted = [v for v, want in ((t, want_table), (w, want_weights)) if want]
                grads = list(torch.autograd.grad(_embedding_bag(rows, t, w), wanted, g))
            return (None, grads.pop(0) if want_table else None,
                    grads.pop(0) if want_weights else None)
        return (None,
                _Scatter.apply(rows, weights, g, table.shape[0]) if want_table else None,
                _Dot.apply(rows, table, g) if want_weights else None)


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weights, g, num_rows):
        ctx.save_for_backward(rows, weights, g)
        return _scatter(rows, weights, g, num_rows)

    @staticmethod
    def backward(ctx, h):
        rows, weights, g = ctx.saved_tensors
        return (None,
                _Dot.apply(rows, h, g) if ctx.needs_input_grad[1] else None,
                _Lookup.apply(rows, h, weights) if ctx.needs_input_grad[2] else None,
                None)


class _Dot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, table, g):
        ctx.save_for_backward(rows, table, g)
        return _dot(rows, table, g)

    @staticmethod
    def backward(ctx, h):
        rows, table, g = ctx.saved_tensors
        return (None,
                _Scatter.apply(rows, h, g, table.shape[0]) if ctx.needs_input_grad[1] else None,
                _Lookup.apply(rows, table, h) if ctx.needs_input_grad[2] else None)
