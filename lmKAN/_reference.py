"""Pure-PyTorch reference of every lmKAN op (docs/spec.md sections 2-4).

This is both the CPU execution path and the oracle that the CUDA kernels are tested
against. Everything is vectorised and differentiable by autograd, works in float32 and
float64, on any device. float16/bfloat16 tensors are computed in float32 (cells, weights,
sums; grids.compute_dtype) and the result is returned in their dtype; parameter gradients
come back in the parameters' dtype. The lookups are weighted bags of table rows (_bag.py:
`embedding_bag` with per-sample weights forward, differentiable to any order): each sample
is a "bag" of 4 (2D) or 2 (1D) table rows per input feature, so memory stays O(B * N_out)
instead of O(B * N_out * N_in).
"""
import torch

from ._bag import bag_lookup
from ._checks import check_input_features, check_pair_features
from .grids import cell_nodes, compute_dtype, find_cell

__all__ = ["lmkan2d_forward", "lmkan1d_forward", "hessian2d", "second_diff1d"]


def _to_batch_first(x: torch.Tensor, batch_last: bool) -> torch.Tensor:
    return x.t() if batch_last else x


# The lookups' temporaries (row indices and weights, 4 per input pair and sample in 2D, 2
# per input in 1D, plus the cell computation's) grow with batch x inputs: a 512-input layer
# at B=65536 peaked at 2.5 GB forward, 5.1 GB forward+backward, for a 128 MiB input. Larger
# calls run in chunks of at most CHUNK_ENTRIES lookups (~50 MB of indices and weights), and
# their backward recomputes each chunk (_ChunkedLookup) instead of keeping every chunk's
# temporaries for autograd.
CHUNK_ENTRIES = 1 << 22


def lmkan2d_forward(x, params, borders, batch_last=True):
    """y = sum over input pairs of bilinear table lookups.

    x: [N_in, B] (batch_last) or [B, N_in]; params: [G+1, G+1, N_out, N_in/2];
    borders: [G+1]. Returns [N_out, B] or [B, N_out].
    """
    if not torch.compiler.is_compiling():  # eager (traced: the layers check, and a traced
        # check's message may not name a tensor's shape)
        check_pair_features("lmkan2d_forward", x, params.shape[3], batch_last)
    return _chunked(_lmkan2d_batch_first, 4 * params.shape[3], x, params, borders, batch_last)


def lmkan1d_forward(x, params, borders, uniform_grid=False, batch_last=True):
    """y = sum over inputs of linear-spline lookups.

    x: [N_in, B] (batch_last) or [B, N_in]; params: [G+1, N_out, N_in]; borders: [G+1].
    """
    if not torch.compiler.is_compiling():  # eager, as in 2D
        check_input_features(x, params.shape[2], batch_last)
    return _chunked(_lmkan1d_batch_first, 2 * params.shape[2], x, params, borders, batch_last,
                    uniform_grid)


def _chunked(lookup, entries_per_sample, x, params, borders, batch_last, *extra):
    """lookup(xb [B, N_in], params, borders, *extra) -> [B, N_out], over chunks of the batch
    when one call would exceed CHUNK_ENTRIES lookups; in x's layout."""
    xb = _to_batch_first(x, batch_last)
    chunk = max(1, CHUNK_ENTRIES // max(1, entries_per_sample))
    # Traced (torch.compile, torch.export): one lookup, so that a dynamic batch size needs no
    # guard on the chunk size; the eager CPU path bounds its temporaries.
    if torch.compiler.is_compiling() or xb.shape[0] <= chunk:
        y = lookup(xb, params, borders, *extra)
    else:
        y = _ChunkedLookup.apply(xb, params, borders, chunk, lookup, *extra)
    return y.t() if batch_last else y


class _ChunkedLookup(torch.autograd.Function):
    """A lookup over batch chunks that keeps only x, params and borders for the backward,
    which recomputes one chunk at a time (the same arithmetic, so the same gradients). A
    backward that builds a graph (create_graph=True) keeps every chunk's recomputation for
    the next derivative."""

    @staticmethod
    def forward(ctx, xb, params, borders, chunk, lookup, *extra):
        ctx.save_for_backward(xb, params, borders)
        ctx.chunk, ctx.lookup, ctx.extra = chunk, lookup, extra
        return torch.cat([lookup(xb[i:i + chunk], params, borders, *extra)
                          for i in range(0, xb.shape[0], chunk)])

    @staticmethod
    def backward(ctx, grad_y):
        xb, params, borders = ctx.saved_tensors
        want_x, want_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            return _ChunkedLookup._graph_backward(ctx, grad_y, xb, params, borders)
        grad_x = torch.empty_like(xb) if want_x else None
        # the table's gradient is summed over chunks in at least float32 (16-bit tables)
        grad_p = torch.zeros_like(params, dtype=compute_dtype(params.dtype)) if want_p else None
        with torch.enable_grad():
            p = params.detach().requires_grad_(want_p)
            for i in range(0, xb.shape[0], ctx.chunk):
                xc = xb[i:i + ctx.chunk].detach().requires_grad_(want_x)
                yc = ctx.lookup(xc, p, borders, *ctx.extra)
                inputs = [t for t, want in ((xc, want_x), (p, want_p)) if want]
                grads = torch.autograd.grad(yc, inputs, grad_y[i:i + ctx.chunk])
                if want_x:
                    grad_x[i:i + ctx.chunk] = grads[0]
                if want_p:
                    grad_p += grads[-1]
        if want_p:
            grad_p = grad_p.to(params.dtype)
        return (grad_x, grad_p) + (None,) * (3 + len(ctx.extra))

    @staticmethod
    def _graph_backward(ctx, grad_y, xb, params, borders):
        """The chunks' gradients as a graph of x, params and grad_y (the saved tensors keep
        their history), so that they can be differentiated again."""
        want_x, want_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grads_x, grad_p = [], None
        for i in range(0, xb.shape[0], ctx.chunk):
            xc = xb[i:i + ctx.chunk]
            yc = ctx.lookup(xc, params, borders, *ctx.extra)
            inputs = [t for t, want in ((xc, want_x), (params, want_p)) if want]
            grads = torch.autograd.grad(yc, inputs, grad_y[i:i + ctx.chunk], create_graph=True)
            if want_x:
                grads_x.append(grads[0])
            if want_p:
                grad_p = grads[-1] if grad_p is None else grad_p + grads[-1]
        grad_x = torch.cat(grads_x) if want_x else None
        return (grad_x, grad_p) + (None,) * (3 + len(ctx.extra))


# Inputs more than this many cells past the end nodes make the float32 bilinear weights
# (1 - d1)(1 - d2), ... large enough that their weighted sum can overflow as inf - inf.
FAR_CELLS = 2.0 ** 20


def _lmkan2d_batch_first(xb, params, borders):
    """The 2D lookup of a batch-first x [B, N_in] -> [B, N_out]."""
    batch = xb.shape[0]
    side, _, n_out, n_pairs = params.shape
    out_dtype, dtype = params.dtype, compute_dtype(params.dtype)
    # both inputs of every pair in one call (a small layer's call is bound by its op count:
    # each op costs microseconds on the CPU whatever its size)
    index, d = find_cell(xb, borders)  # [B, N_in]: pair p's inputs at 2p, 2p + 1
    if (dtype != torch.float64 and xb.device.type == "cpu" and not torch.compiler.is_compiling()
            and bool((d.abs() > FAR_CELLS).any())):
        # A finite input far past the grid (docs/spec.md, "Robustness"): float64 holds the
        # weights of any float32 input, and the result rounds to +-inf where it overflows.
        # Eager CPU only: the check would synchronise a GPU on every call, and it is a
        # data-dependent branch that torch.compile cannot trace.
        return _lmkan2d_batch_first(xb.double(), params.double(), borders.double()).to(out_dtype)
    index, d = index.reshape(batch, n_pairs, 2), d.reshape(batch, n_pairs, 2)
    # Row of P[i1, i2, :, p] in the table laid out as [N_in/2, G+1, G+1] x N_out, and the
    # corners' rows: + [0, 1, G+1, G+2] for (i1, i2), (i1, i2 + 1), (i1 + 1, i2), (i1 + 1, i2 + 1)
    row = (torch.arange(n_pairs, device=xb.device) * (side * side)
           + index[..., 0] * side + index[..., 1])  # [B, N_in/2]
    rows = row[..., None] + row.new_tensor([0, 1, side, side + 1])
    # and their weights (an outer product of (1 - d1, d1) and (1 - d2, d2) as one broadcast
    # multiplication was slower: size-2 inner dimensions, and a reduction in its backward)
    # (each 1 - d computed per use: reusing one changes the order in which autograd adds
    # the gradient's terms, and with it the last bits of grad_x and of any training run)
    d1, d2 = d[..., 0], d[..., 1]
    weights = torch.stack([(1 - d1) * (1 - d2), (1 - d1) * d2, d1 * (1 - d2), d1 * d2], dim=-1)
    table = params.permute(3, 0, 1, 2).reshape(n_pairs * side * side, n_out).to(dtype)
    y = bag_lookup(rows.reshape(batch, 4 * n_pairs), table,
                   weights.to(dtype).reshape(batch, 4 * n_pairs))
    return y.to(out_dtype)


def _lmkan1d_batch_first(xb, params, borders, uniform_grid):
    """The 1D lookup of a batch-first x [B, N_in] -> [B, N_out], as f_i + (x - g_i) s_i with
    the cell's slope s_i = (f_{i+1} - f_i) / (g_{i+1} - g_i): beyond the end nodes a huge
    finite x overflows that product to +-inf, where (1 - d) f_i + d f_{i+1} gave inf - inf =
    NaN (and d itself overflows first on fine grids)."""
    batch = xb.shape[0]
    side, n_out, n_in = params.shape
    out_dtype, dtype = params.dtype, compute_dtype(params.dtype)
    index, _ = find_cell(xb, borders, uniform=uniform_grid)  # [B, N_in]
    nodes = cell_nodes(borders, uniform_grid, dtype)
    offset = xb.to(dtype) - nodes[index]  # finite for finite x
    values = params.to(dtype)
    # cell widths: one width for the uniform grid (differences of its rounded nodes would
    # carry their rounding into every slope)
    widths = ((nodes[-1] - nodes[0]) / (side - 1)).expand(side - 1) if uniform_grid else nodes[1:] - nodes[:-1]
    slopes = (values[1:] - values[:-1]) / widths[:, None, None]  # [G, N_out, N_in]
    # rows: the values of input i at i * (G+1) + cell, its slopes after all values
    table = torch.cat([values.permute(2, 0, 1).reshape(n_in * side, n_out),
                       slopes.permute(2, 0, 1).reshape(n_in * (side - 1), n_out)])
    inputs = torch.arange(n_in, device=xb.device)
    rows = torch.stack([inputs * side + index, n_in * side + inputs * (side - 1) + index], dim=-1)
    weights = torch.stack([torch.ones_like(offset), offset], dim=-1)
    y = bag_lookup(rows.reshape(batch, 2 * n_in), table, weights.reshape(batch, 2 * n_in))
    return y.to(out_dtype)


def _node_spacings(borders, dtype):
    """hm_a = g_a - g_{a-1}, hp_a = g_{a+1} - g_a for the inner nodes a = 1..G-1."""
    g = borders.to(dtype)
    return g[1:-1] - g[:-2], g[2:] - g[1:-1]


def hessian2d(params, borders):
    """R = sum over (o, p) of mean over inner nodes (a, b) of fxx^2 + 2 fxy^2 + fyy^2.

    params: [G+1, G+1, N_out, N_in/2]; returns a 0-dim tensor, in float32 for a
    float16/bfloat16 table (computed in grids.compute_dtype).
    """
    params = params.to(compute_dtype(params.dtype))
    hm, hp = _node_spacings(borders, params.dtype)
    hs = hm + hp
    col = lambda t: t[:, None, None, None]  # noqa: E731 - broadcast along dim 0
    row = lambda t: t[None, :, None, None]  # noqa: E731 - broadcast along dim 1
    center = params[1:-1, 1:-1]
    fxx = 2 / col(hs) * ((params[2:, 1:-1] - center) / col(hp) - (center - params[:-2, 1:-1]) / col(hm))
    fyy = 2 / row(hs) * ((params[1:-1, 2:] - center) / row(hp) - (center - params[1:-1, :-2]) / row(hm))
    fxy = (params[2:, 2:] - params[2:, :-2] - params[:-2, 2:] + params[:-2, :-2]) / (col(hs) * row(hs))
    return (fxx.square() + 2 * fxy.square() + fyy.square()).mean(dim=(0, 1)).sum()


def second_diff1d(params, borders):
    """Sum over (o, i) of the mean over inner nodes of f''^2. params: [G+1, N_out, N_in];
    a 0-dim tensor, in float32 for a float16/bfloat16 table (grids.compute_dtype)."""
    params = params.to(compute_dtype(params.dtype))
    hm, hp = _node_spacings(borders, params.dtype)
    hm, hp = hm[:, None, None], hp[:, None, None]
    center = params[1:-1]
    f2 = 2 / (hm + hp) * ((params[2:] - center) / hp - (center - params[:-2]) / hm)
    return f2.square().mean(dim=0).sum()
