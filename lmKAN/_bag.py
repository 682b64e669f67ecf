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

scatter and dot gather J rows per sample: they run over groups of bag columns so that their
temporaries stay under GATHER_ELEMENTS values.
"""
import torch
import torch.nn.functional as F

__all__ = ["bag_lookup"]

GATHER_ELEMENTS = 1 << 24  # values of one column group's gathered rows (64 MB in float32)


def bag_lookup(rows, table, weights):
    """sum_j weights[b, j] * table[rows[b, j]]: rows [B, J] (int64), table [R, N_out],
    weights [B, J] (table's dtype). Returns [B, N_out]."""
    return _Lookup.apply(rows, table, weights)


def _column_groups(rows, n_out):
    """Slices of the J bag columns whose gathered rows take at most GATHER_ELEMENTS values."""
    batch, bag = rows.shape
    width = max(1, GATHER_ELEMENTS // max(1, batch * n_out))
    return [slice(j, min(bag, j + width)) for j in range(0, bag, width)]


def _scatter(rows, weights, g, num_rows):
    out = g.new_zeros(num_rows, g.shape[1])
    for cols in _column_groups(rows, g.shape[1]):
        contrib = weights[:, cols, None] * g[:, None, :]
        out.index_add_(0, rows[:, cols].reshape(-1), contrib.reshape(-1, g.shape[1]))
    return out


def _dot(rows, table, g):
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
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # First order, eager: embedding_bag's own backward kernels on a recomputed forward
            # (torch.compile traces the differentiable ops below instead: it does not trace
            # torch.autograd.grad).
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
