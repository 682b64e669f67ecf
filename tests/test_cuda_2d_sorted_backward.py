"""LMKAN2DLayer's cell-sorted backward (csrc/lmkan2d/backward_runs.cu, cell_sort.cu) against
the float64 reference: chunks, runs of every length, tiles walked in pairs, the cell sort's
scatters, and the calls it does not take."""
import os

import pytest
import torch

from lmKAN.grids import cdf_borders

from conftest import cuda_kernel_names, rel_l2, requires_gpu
from cases_2d import TILES, TOL, make_case, reference_all, run_backward, check_case


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
@pytest.mark.parametrize("tile", TILES)
def test_sorted_backward_chunks_and_many_tiles(tile, batch_last):
    """The non-deterministic backward (cell-sorted chunks, csrc/lmkan2d/backward_runs.cu) with
    a wide output: the batch is sorted in several chunks (grad_y rows of 8 MB per chunk in normal mode,
    24 MB in fast mode) and each warp walks 18 output tiles, the last one ragged."""
    width = 8 * tile
    n_out = 17 * width + 3
    fast_chunk = max(256, (24 << 20) // (18 * width * 4)) // 256 * 256
    for fast in (False, True):
        check_case(5, 6, n_out, fast_chunk + 77, batch_last, tile, fast, block=512, forward=False)


# Runs of sorted samples per cell: every length from 1 to 9 (the runs kernel's 4-sample
# batches: shorter, equal, straddling), long runs across its 256-entry segments, and a run
# that ends a segment exactly.
RUN_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 4, 1, 3, 12, 255, 2, 256, 1, 257, 5, 16, 17, 3)


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
@pytest.mark.parametrize("fast", (False, True))
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("n_tiles", (2, 3))
def test_sorted_backward_run_lengths(tile, fast, batch_last, n_tiles):
    """The cell-sorted backward (csrc/lmkan2d/backward_runs.cu) on inputs placed at cell
    centres so that each pair's cells hold runs of RUN_LENGTHS samples (a different order of
    cells per pair, samples shuffled): its per-sample path, its 4-sample batches within a
    cell and the carries between them, against the float64 reference. At tile 16, 2 output
    tiles are walked together and 3 one by one."""
    torch.manual_seed(11)
    g, n_pairs = 8, 3
    borders = cdf_borders(g, device="cuda")
    centres = (borders[:-1] + borders[1:]) / 2
    lengths = torch.tensor(RUN_LENGTHS, device="cuda")
    batch = int(lengths.sum())
    x = torch.empty(2 * n_pairs, batch, device="cuda")
    for p in range(n_pairs):
        cells = torch.randperm(g * g, device="cuda")[:len(RUN_LENGTHS)]
        per_sample = torch.repeat_interleave(cells, lengths)[torch.randperm(batch, device="cuda")]
        x[2 * p] = centres[per_sample // g]
        x[2 * p + 1] = centres[per_sample % g]
    if not batch_last:
        x = x.t().contiguous()
    n_out = 8 * tile * (n_tiles - 1) + 3
    params = torch.randn(g + 1, g + 1, n_out, n_pairs, device="cuda")
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    gx, gp = run_backward(grad_y, x, params, borders, batch_last, tile, 256, fast)
    _, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("images", (False, True))
@pytest.mark.parametrize("n_tiles", (1, 2, 3, 4))
def test_sorted_backward_walks_two_tiles_where_they_pair(n_tiles, images):
    """At tile 16 the cell-sorted backward walks two output tiles at once where their count is
    even (runs_kernel<4, 2, ...>), else one at a time (<4, 1, ...>): the instance that runs,
    and its gradients against the float64 reference, on rows and on images [N, N_in, L], the
    last tile ragged."""
    torch.manual_seed(5)
    n_out, n_in, n, length = 128 * (n_tiles - 1) + 37, 6, 7, 149
    x, params, borders = make_case(10, n_in, n_out, n * length, True)
    grad_y = torch.randn(n_out, n * length, device="cuda")
    as_images = lambda t: t.reshape(t.shape[0], n, length).permute(1, 0, 2).contiguous()  # noqa: E731
    xs, gys = (as_images(x), as_images(grad_y)) if images else (x, grad_y)

    def step():
        return run_backward(gys, xs, params, borders, True, 16, 512, False)
    walk = 2 if n_tiles % 2 == 0 else 1
    kernel = f"runs_kernel<4, {walk}, {'true' if images else 'false'}, float>"
    names = cuda_kernel_names(step)
    assert any(kernel in name for name in names), (kernel, sorted(names))
    gx, gp = step()
    if images:
        gx = gx.permute(1, 0, 2).reshape(n_in, n * length)
    _, rgx, rgp = reference_all(x, params, borders, grad_y, True)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("num_grids, staged", [(26, True), (150, False)])
def test_sorted_backward_cell_sort_scatters(num_grids, staged):
    """The sorted backward's cell sort (bucket_kernel<kImages, kStaged>) orders each stage of
    4,096 samples by cell in shared memory before storing it, where the stage's histogram
    and entries fit (footprints.h: up to G = 143 with 227 KB per block, G = 65 with 99 KB),
    and stores each sample to its slot directly past that (G = 150 everywhere): the instance
    that runs, and the gradients against the float64 reference over three chunks (37
    outputs at tile 8: rows of 64 floats, chunks of 32,768 samples) and a ragged stage."""
    if os.environ.get("LMKAN_BUCKET_STAGED") == "0":  # the knob turns the staged scatter off
        staged = False
    torch.manual_seed(3)
    n_in, n_out, batch = 8, 37, 2 * 32768 + 4096 + 1234
    _, params, borders = make_case(num_grids, n_in, n_out, 0, True)
    # inputs at least 5% of a cell's width from its borders: grad_x jumps at a border, and at
    # G = 150 some of 568,000 inputs land within the CDF's rounding of one (the kernels' cell
    # may then differ from the reference's, docs/spec.md section 1: 1e-3 relative L2 here)
    cell = torch.randint(0, num_grids, (n_in, batch), device="cuda")
    d = torch.rand(n_in, batch, device="cuda") * 0.9 + 0.05
    x = borders[cell] + d * (borders[cell + 1] - borders[cell])
    grad_y = torch.randn(n_out, batch, device="cuda")

    def step():
        return run_backward(grad_y, x, params, borders, True, 8, 256, False)
    kernel = f"bucket_kernel<false, {'true' if staged else 'false'}>"
    names = cuda_kernel_names(step)
    assert any(kernel in name for name in names), (kernel, sorted(names))
    gx, gp = step()
    _, rgx, rgp = reference_all(x, params, borders, grad_y, True)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
def test_more_pairs_than_a_sorted_chunk_holds(batch_last):
    """65,537 input pairs: a chunk of the sorted backward (16 bytes per pair and sample, 256 MB)
    cannot hold one 256-sample segment for each, so the plan sends the call to the other
    kernels (the chunk was 0 samples: an invalid launch). 9 outputs: layers of at most 8
    take their own kernels."""
    for fast in (False, True):
        check_case(3, 2 * 65537, 9, 5, batch_last, 8, fast, block=128)
