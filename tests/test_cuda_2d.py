"""CUDA kernels of LMKAN2DLayer against the float64 reference (docs/spec.md sections 2 and 5)."""
import copy
import os
import warnings

import pytest
import torch

from lmKAN import _reference
from lmKAN.grids import cdf_borders
from lmKAN.lmkan2d import LMKAN2DLayer, max_num_grids

from conftest import (assert_cuda_kernel, cuda_kernel_names, deterministic_algorithms, rel_l2,
                      requires_gpu)

TILES = (4, 8, 16)
TOL = 1e-5


def _make(num_grids, n_in, n_out, batch, batch_last, device="cuda", scale=1.5):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device=device) * scale
    params = torch.randn(num_grids + 1, num_grids + 1, n_out, n_in // 2, device=device)
    borders = cdf_borders(num_grids, device=device)
    return x, params, borders


def _reference_all(x, params, borders, grad_y, batch_last):
    xd = x.double().requires_grad_(True)
    pd = params.double().requires_grad_(True)
    y = _reference.lmkan2d_forward(xd, pd, borders.double(), batch_last)
    gx, gp = torch.autograd.grad(y, (xd, pd), grad_y.double())
    return y.detach(), gx, gp


def _kernels(x, params, borders, grad_y, batch_last, tile, block, fast, bwd_block=None,
             deterministic=False):
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block)
    gx, gp = _backward(grad_y, x, params, borders, batch_last, tile, bwd_block or block, fast,
                       deterministic)
    return y, gx, gp


def _backward(grad_y, x, params, borders, batch_last, tile, block, fast, deterministic=False):
    return torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, tile, block,
                                            fast, deterministic)


def _check(num_grids, n_in, n_out, batch, batch_last, tile, fast, block=256, scale=1.5,
           deterministic=False, forward=True):
    """Kernels against the float64 reference; forward=False checks the backward op alone."""
    x, params, borders = _make(num_grids, n_in, n_out, batch, batch_last, scale=scale)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    if forward:
        y, gx, gp = _kernels(x, params, borders, grad_y, batch_last, tile, block, fast,
                             deterministic=deterministic)
    else:
        y = None
        gx, gp = _backward(grad_y, x, params, borders, batch_last, tile, block, fast, deterministic)
    ry, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
    assert gx.shape == x.shape and gp.shape == params.shape
    if batch == 0:
        assert gp.abs().sum().item() == 0
        return
    results = (("dx", gx, rgx), ("dP", gp, rgp)) + ((("y", y, ry),) if forward else ())
    for name, a, r in results:
        assert a.shape == r.shape
        err = rel_l2(a, r)
        assert err <= TOL, (f"{name}: rel L2 {err:.3e} (G={num_grids}, tile={tile}, fast={fast}, "
                            f"deterministic={deterministic})")


@requires_gpu
def test_kernels_present():
    assert_cuda_kernel("lmkan2d_forward")
    assert_cuda_kernel("lmkan2d_backward")


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("fast", (False, True))
@pytest.mark.parametrize("batch_last", (True, False))
@pytest.mark.parametrize("num_grids", (3, 8, 26))
def test_matches_reference(tile, fast, batch_last, num_grids):
    assert_cuda_kernel("lmkan2d_forward")
    _check(num_grids, 38, 21, 1037, batch_last, tile, fast)


# (num_grids, tile, block) and the depth of the forward's staged-table ring it gets on a device
# with 227 KB of shared memory per block and 228 KB per SM (H100; a slice is (G+1)^2 x 8*tile
# floats): 4; 3 (two blocks per SM); 2; 1; 3 (four blocks per SM); 1; 1; 2 (two blocks per SM).
RING_CASES = [(5, 4, 1024), (16, 4, 512), (26, 4, 1024), (41, 4, 1024),
              (5, 16, 256), (20, 16, 1024), (29, 8, 1024), (12, 8, 96)]


@requires_gpu
@pytest.mark.parametrize("num_grids,tile,block", RING_CASES)
def test_forward_buffer_ring(num_grids, tile, block):
    """Every depth of the forward's staged-table ring (buffers refilled as soon as every
    thread has released them), 17 pairs (not a multiple of any depth), a batch that leaves
    part of the last block idle, and pair splits (a batch of 45 gives one block)."""
    assert_cuda_kernel("lmkan2d_forward")
    for batch in (2 * block + 37, 45):
        x, params, borders = _make(num_grids, 34, 8 * tile + 3, batch, True)
        y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, block)
        ref = _reference.lmkan2d_forward(x.double(), params.double(), borders.double())
        err = rel_l2(y, ref)
        assert err <= TOL, f"rel L2 {err:.3e} (G={num_grids}, tile={tile}, block={block}, batch={batch})"


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
def test_forward_memory(tile):
    """The forward allocates its output and the packed table, nothing else (a second,
    unused output once sat beside them)."""
    assert_cuda_kernel("lmkan2d_forward")
    x, params, borders = _make(8, 64, 96, 50001, True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, 256)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    width = 8 * tile
    packed = -(-96 // width) * width * params.shape[0] ** 2 * params.shape[3] * 4
    # the caching allocator rounds each large block up (to 2 MiB segments): 4 MiB of slack,
    # where a second output would add 19 MB
    assert extra <= y.numel() * 4 + packed + (4 << 20), (extra, y.numel() * 4, packed)


# Batch-first forwards whose x and y take at most 1 MiB read and write them through strides;
# larger ones run the batch-last kernel between two transposes (csrc/lmkan2d/plan.cpp).
STRIDED_BATCH_FIRST_MAX_BYTES = 1 << 20


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("num_grids", (8, 64))
def test_batch_first_forward_paths(tile, num_grids):
    """Batch-first y equals the batch-last kernel's y transposed, bitwise, on both sides of
    the strided/transposed threshold and for both forward kernels (G=64 reads the table
    through L2 with the output-lanes kernel), with pair splits (small batches) and ragged
    tiles; and matches the float64 reference."""
    assert_cuda_kernel("lmkan2d_forward")
    n_in, n_out = 34, 8 * tile + 5
    for batch in (45, 1003, 7001):
        strided = batch * (n_in + n_out) * 4 <= STRIDED_BATCH_FIRST_MAX_BYTES
        assert strided == (batch < 7000)  # both paths below
        x_bl, params, borders = _make(num_grids, n_in, n_out, batch, True)
        x_bf = x_bl.t().contiguous()
        y_bl = torch.ops.lmkan.lmkan2d_forward(x_bl, params, borders, True, tile, 256)
        y_bf = torch.ops.lmkan.lmkan2d_forward(x_bf, params, borders, False, tile, 256)
        assert y_bf.shape == (batch, n_out) and y_bf.is_contiguous()
        assert torch.equal(y_bf, y_bl.t()), (batch, strided)
        ref = _reference.lmkan2d_forward(x_bf.double(), params.double(), borders.double(), False)
        assert rel_l2(y_bf, ref) <= TOL


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("mode", ("forward", "backward", "backward_fast", "backward_deterministic"))
def test_largest_num_grids(tile, mode):
    """At each mode's num_grids limit and one past it (9 outputs: the limits are those of the
    kernels for layers wider than 8 outputs, which sample_threads_*.cu does not serve)."""
    assert_cuda_kernel("lmkan2d_backward")
    g = max_num_grids(tile, mode, "cuda")
    assert g >= 3
    if mode == "forward":
        x, params, borders = _make(g, 6, 9, 301, True)
        y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, 128)
        assert rel_l2(y, _reference.lmkan2d_forward(x.double(), params.double(), borders.double())) <= TOL
    else:
        fast, deterministic = mode == "backward_fast", mode == "backward_deterministic"
        _check(g, 6, 9, 301, True, tile, fast, block=128, deterministic=deterministic,
               forward=g <= max_num_grids(tile, "forward", "cuda"))
        # one past the limit: the deterministic kernels' global-memory variants (table and
        # dP accumulator in L2), with float atomics unless deterministic
        _check(g + 1, 6, 9, 301, True, tile, fast, block=128, deterministic=deterministic,
               forward=False)


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("num_grids", (64, 128))
def test_num_grids_beyond_shared_memory(tile, num_grids):
    """No num_grids ceiling for the backward: large G against the reference (9 outputs: the
    kernels of layers wider than 8 outputs)."""
    assert_cuda_kernel("lmkan2d_backward")
    assert max_num_grids(tile, "backward_deterministic", "cuda") < num_grids
    for batch_last, fast, deterministic in ((True, False, False), (False, True, True)):
        _check(num_grids, 6, 9, 700, batch_last, tile, fast, block=128,
               deterministic=deterministic, forward=False)


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("num_grids", (8, 26))
def test_deterministic_backward_is_bitwise_reproducible(tile, num_grids):
    """deterministic=True: two backward runs bitwise equal, with the batch split over dP
    blocks and several output tiles summed into dx (the cases that use atomics otherwise)."""
    assert_cuda_kernel("lmkan2d_backward")
    n_in, n_out, batch = 16, 300, 40000
    for batch_last in (True, False):
        x, params, borders = _make(num_grids, n_in, n_out, batch, batch_last)
        gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
        first = _backward(gy, x, params, borders, batch_last, tile, 256, False, True)
        second = _backward(gy, x, params, borders, batch_last, tile, 256, False, True)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        _, rgx, rgp = _reference_all(x, params, borders, gy, batch_last)
        assert rel_l2(first[0], rgx) <= TOL and rel_l2(first[1], rgp) <= TOL
        # fast mode (larger dP blocks, longer sorted chunks) is deterministic too
        fast = _backward(gy, x, params, borders, batch_last, tile, 256, True, True)
        fast_again = _backward(gy, x, params, borders, batch_last, tile, 256, True, True)
        assert torch.equal(fast[0], fast_again[0]) and torch.equal(fast[1], fast_again[1])
        assert rel_l2(fast[0], rgx) <= TOL and rel_l2(fast[1], rgp) <= TOL


@requires_gpu
def test_layer_follows_torch_deterministic_setting():
    layer = LMKAN2DLayer(8, 16, 200, tile_size_backward=8).cuda()
    x = torch.randn(16, 30000, device="cuda", requires_grad=True)
    gy = torch.randn(200, 30000, device="cuda")
    grads = []
    with deterministic_algorithms():
        for _ in range(2):
            x.grad = None
            layer.func_parameter.grad = None
            layer(x).backward(gy)
            grads.append((x.grad.clone(), layer.func_parameter.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@requires_gpu
@pytest.mark.parametrize("shape", [(2, 1, 1), (2, 3, 0), (4, 17, 33), (130, 40, 4099), (64, 129, 777)])
@pytest.mark.parametrize("block", (32, 1024))
def test_odd_shapes(shape, block):
    n_in, n_out, batch = shape
    for tile in TILES:
        _check(5, n_in, n_out, batch, True, tile, tile == 8, block=block)
        _check(5, n_in, n_out, batch, False, tile, tile != 8, block=block)


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
@pytest.mark.parametrize("tile", TILES)
def test_sorted_backward_chunks_and_many_tiles(tile, batch_last):
    """The non-deterministic backward (cell-sorted chunks, csrc/lmkan2d/backward_runs.cu) with a wide output:
    the batch is sorted in several chunks (grad_y rows of 8 MB per chunk in normal mode,
    24 MB in fast mode) and each warp walks 18 output tiles, the last one ragged."""
    width = 8 * tile
    n_out = 17 * width + 3
    fast_chunk = max(256, (24 << 20) // (18 * width * 4)) // 256 * 256
    for fast in (False, True):
        _check(5, 6, n_out, fast_chunk + 77, batch_last, tile, fast, block=512, forward=False)


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
    gx, gp = _backward(grad_y, x, params, borders, batch_last, tile, 256, fast)
    _, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
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
    x, params, borders = _make(10, n_in, n_out, n * length, True)
    grad_y = torch.randn(n_out, n * length, device="cuda")
    as_images = lambda t: t.reshape(t.shape[0], n, length).permute(1, 0, 2).contiguous()  # noqa: E731
    xs, gys = (as_images(x), as_images(grad_y)) if images else (x, grad_y)

    def step():
        return _backward(gys, xs, params, borders, True, 16, 512, False)
    walk = 2 if n_tiles % 2 == 0 else 1
    kernel = f"runs_kernel<4, {walk}, {'true' if images else 'false'}, float>"
    names = cuda_kernel_names(step)
    assert any(kernel in name for name in names), (kernel, sorted(names))
    gx, gp = step()
    if images:
        gx = gx.permute(1, 0, 2).reshape(n_in, n * length)
    _, rgx, rgp = _reference_all(x, params, borders, grad_y, True)
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
    _, params, borders = _make(num_grids, n_in, n_out, 0, True)
    # inputs at least 5% of a cell's width from its borders: grad_x jumps at a border, and at
    # G = 150 some of 568,000 inputs land within the CDF's rounding of one (the kernels' cell
    # may then differ from the reference's, docs/spec.md section 1: 1e-3 relative L2 here)
    cell = torch.randint(0, num_grids, (n_in, batch), device="cuda")
    d = torch.rand(n_in, batch, device="cuda") * 0.9 + 0.05
    x = borders[cell] + d * (borders[cell + 1] - borders[cell])
    grad_y = torch.randn(n_out, batch, device="cuda")

    def step():
        return _backward(grad_y, x, params, borders, True, 8, 256, False)
    kernel = f"bucket_kernel<false, {'true' if staged else 'false'}>"
    names = cuda_kernel_names(step)
    assert any(kernel in name for name in names), (kernel, sorted(names))
    gx, gp = step()
    _, rgx, rgp = _reference_all(x, params, borders, grad_y, True)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
def test_more_pairs_than_a_sorted_chunk_holds(batch_last):
    """65,537 input pairs: a chunk of the sorted backward (16 bytes per pair and sample, 256 MB)
    cannot hold one 256-sample segment for each, so the plan sends the call to the other
    kernels (the chunk was 0 samples: an invalid launch). 9 outputs: layers of at most 8
    take their own kernels."""
    for fast in (False, True):
        _check(3, 2 * 65537, 9, 5, batch_last, 8, fast, block=128)


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
def test_far_outside_grid(tile):
    _check(8, 20, 12, 515, True, tile, False, scale=40.0)
    _check(8, 20, 12, 515, False, tile, True, scale=40.0)


@requires_gpu
@pytest.mark.parametrize("batch_last", (True, False))
def test_nan_inputs(batch_last):
    x, params, borders = _make(8, 10, 7, 67, batch_last)
    xt = x if batch_last else x.t()
    xt[3, 5] = float("nan")   # feature 3 (pair 1) of sample 5
    xt[0, 9] = float("inf")
    xt[1, 9] = -float("inf")
    grad_y = torch.randn((7, 67) if batch_last else (67, 7), device="cuda")
    y, gx, gp = _kernels(x, params, borders, grad_y, batch_last, 8, 64, False)
    ry, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
    # y: NaN exactly where the reference has NaN (sample 5 via the NaN, sample 9 via inf).
    assert torch.equal(y.isnan(), ry.isnan()) and torch.equal(y.isfinite(), ry.isfinite())
    assert y.isnan().any()
    fin = ry.isfinite()
    assert rel_l2(y[fin], ry[fin]) <= TOL
    # dx: sample 9 (infinite inputs) sums infinities in an order-dependent way: skip it.
    keep = torch.ones(67, dtype=torch.bool, device="cuda")
    keep[9] = False
    gxb, rgxb = (gx.t(), rgx.t()) if batch_last else (gx, rgx)
    gxb, rgxb = gxb[keep], rgxb[keep]
    assert torch.equal(gxb.isnan(), rgxb.isnan()) and gxb.isnan().any()
    fin = rgxb.isfinite()
    assert rel_l2(gxb[fin], rgxb[fin]) <= TOL
    # dP: pair 0 holds the infinite sample; pair 1 must be NaN where the reference is.
    gp1, rgp1 = gp[..., 1:], rgp[..., 1:]
    assert torch.equal(gp1.isnan(), rgp1.isnan()) and gp1.isnan().any()
    fin = rgp1.isfinite()
    assert rel_l2(gp1[fin], rgp1[fin]) <= TOL


@requires_gpu
@pytest.mark.parametrize("fast", (False, True))
@pytest.mark.parametrize("batch_last", (True, False))
def test_layer_autograd(fast, batch_last):
    layer = LMKAN2DLayer(8, 24, 19, tile_size_forward=16, tile_size_backward=4,
                         backward_fast_mode=fast, batch_last=batch_last).cuda()
    with torch.no_grad():
        layer.func_parameter.normal_()
    x = torch.randn((24, 333) if batch_last else (3, 111, 24), device="cuda") * 1.5
    x.requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    xd = x.detach().double().requires_grad_(True)
    pd = layer.func_parameter.detach().double().requires_grad_(True)
    yr = _reference.lmkan2d_forward(xd if batch_last else xd.reshape(-1, 24), pd,
                                    layer.borders.double(), batch_last)
    yr = yr if batch_last else yr.reshape(3, 111, 19)
    yr.backward(g.double())
    assert rel_l2(y, yr) <= TOL
    assert rel_l2(x.grad, xd.grad) <= TOL
    assert rel_l2(layer.func_parameter.grad, pd.grad) <= TOL


@requires_gpu
@pytest.mark.parametrize("num_grids", (6, 40))
def test_float64_layer_on_cuda(num_grids):
    """A float64 layer on a CUDA device runs the pure-PyTorch path (the kernels take 16- and
    32-bit tables): same values and gradients as the same layer on the CPU, and no
    shared-memory check (it once raised TypeError: table_dtype float64 from max_num_grids)."""
    torch.manual_seed(3)
    layer = LMKAN2DLayer(num_grids, 14, 9).double()
    x = torch.randn(14, 301, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(9, 301, dtype=torch.float64)
    layer(x).backward(gy)
    gpu = copy.deepcopy(layer).cuda()
    gpu.func_parameter.grad = None
    xc = x.detach().cuda().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = gpu(xc)
    y.backward(gy.cuda())
    assert y.dtype == torch.float64
    assert rel_l2(y.cpu(), layer(x)) <= 1e-12
    assert rel_l2(xc.grad.cpu(), x.grad) <= 1e-12
    assert rel_l2(gpu.func_parameter.grad.cpu(), layer.func_parameter.grad) <= 1e-12


@requires_gpu
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
@pytest.mark.parametrize("g, n_in, n_out, batch", [(6, 14, 1, 301), (8, 74, 2, 40000),
                                                   (26, 10, 5, 777), (40, 6, 8, 133),
                                                   (6, 40, 3, 500)], ids=str)
def test_few_outputs_kernels(g, n_in, n_out, batch, batch_last, deterministic):
    """Layers of at most 8 outputs, a thread per sample or (sample, pair) (sample_threads_*.cu):
    the forward (forward_sample_threads_kernel), grad_x alone and the deterministic grad_x
    (dx_sample_threads_kernel), grad_x with grad_params when not deterministic
    (dp_sample_threads_kernel, shared-memory atomics), against the float64 reference; every
    width of the kernels (1, 2, 4 and 8 outputs, rows zero-padded past n_out). B = 40000 with
    37 pairs stages groups of pairs with a partial last group (and its batch-first forward
    runs between transposes); the small batches one pair a block, the forward's pairs split
    over blocks at 20 pairs (partial sums, batch-first through strides); G = 40 with 8
    outputs stages 54 KB a pair (past the default 48 KB; the backward's table and
    accumulator, 108 KB)."""
    torch.manual_seed(11)
    x, params, borders = _make(g, n_in, n_out, batch, batch_last, scale=2.0)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    ry, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, 8, 256)
    assert rel_l2(y, ry) <= TOL
    assert torch.equal(y, torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, 8, 256))
    alone, empty = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8,
                                                    256, False, deterministic, None, False)
    assert empty.shape == (0,)
    assert rel_l2(alone, rgx) <= TOL
    gx, gp = _backward(grad_y, x, params, borders, batch_last, 8, 256, False, deterministic)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL
    if deterministic:
        assert torch.equal(gx, alone)  # the same kernel
        again = _backward(grad_y, x, params, borders, batch_last, 8, 256, False, True)
        assert torch.equal(gx, again[0]) and torch.equal(gp, again[1])


@requires_gpu
@pytest.mark.parametrize("table", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch_last", [True, False], ids=["batch_last", "batch_first"])
def test_few_outputs_kernels_16bit_tables(table, batch_last):
    """The few-outputs kernels with a 16-bit table (table_dtype): forward, grad_x alone and
    grad_x with grad_params against the float64 reference on the table rounded to that
    dtype (the float32 contract), and 16-bit parameters (their gradient in their dtype)."""
    torch.manual_seed(12)
    g, n_in, n_out, batch = 8, 20, 3, 999
    x, params, borders = _make(g, n_in, n_out, batch, batch_last)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    ry, rgx, rgp = _reference_all(x, params.to(table).float(), borders, grad_y, batch_last)
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, 8, 256, table)
    assert rel_l2(y, ry) <= TOL
    gx, _ = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8, 256,
                                             False, False, table, False)
    assert rel_l2(gx, rgx) <= TOL
    gx, gp = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params.to(table), borders, batch_last,
                                              8, 256, False, False, None)
    assert gp.dtype == table
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp.float(), rgp) <= 4e-3  # gp rounded to 16 bits


@requires_gpu
def test_layer_warns_once_past_shared_memory():
    """num_grids past the backward's shared-memory limit: one warning, then the global-memory
    fallback, which matches the reference (10 outputs: the kernels of layers wider than 8
    outputs, whose limits max_num_grids reports)."""
    g = max_num_grids(16, "backward_deterministic", "cuda") + 1
    assert g <= max_num_grids(4, "forward", "cuda")
    layer = LMKAN2DLayer(g, 4, 10, tile_size_forward=4, tile_size_backward=16,
                         deterministic=True).cuda()
    with torch.no_grad():
        layer.func_parameter.normal_()
    x = torch.randn(4, 300, device="cuda", requires_grad=True)
    with pytest.warns(UserWarning, match=rf"num_grids={g}.*tile_size_backward=16.*{g - 1}.*L2"):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)  # once per layer
    gy = torch.randn_like(y)
    y.backward(gy)
    _, rgx, rgp = _reference_all(x.detach(), layer.func_parameter.detach(), layer.borders, gy, True)
    assert rel_l2(x.grad, rgx) <= TOL and rel_l2(layer.func_parameter.grad, rgp) <= TOL
    # the non-deterministic backward (cell-sorted chunks, both modes) serves this num_grids
    # through L2 by design: no warning
    for fast in (False, True):
        assert max_num_grids(16, "backward_fast" if fast else "backward", "cuda") > g
        quiet = LMKAN2DLayer(g, 4, 10, tile_size_forward=4, tile_size_backward=16,
                             backward_fast_mode=fast, deterministic=False).cuda()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quiet(x).sum().backward()


@requires_gpu
def test_no_warning_about_a_tile_auto_chose():
    """A tile size that "auto" chose is not the user's: LMKAN2DLayer(26, 256, 256,
    deterministic=True) once warned that num_grids=26 exceeds tile_size_backward=16's limit,
    a tile never asked for. "auto" warns only when no tile serves num_grids at full speed;
    a tile the user set is still checked as set."""
    mode = "backward_deterministic"
    best = max(max_num_grids(t, mode, "cuda") for t in TILES)
    g = 26
    assert max_num_grids(16, mode, "cuda") < g <= best  # the case of the report (H100/H200)
    x = torch.randn(256, 2000, device="cuda")
    auto = LMKAN2DLayer(g, 256, 256, deterministic=True).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto(x).sum().backward()
    chosen = LMKAN2DLayer(g, 256, 256, tile_size_backward=16, deterministic=True).cuda()
    with pytest.warns(UserWarning, match=rf"num_grids={g}.*tile_size_backward=16"):
        chosen(x).sum().backward()
    # past every tile's limit, "auto" warns, naming no tile of its own (the forward's check
    # comes first where num_grids is past its limits too)
    g = best + 1
    forward_best = max(max_num_grids(t, "forward", "cuda") for t in TILES)
    which, limit = ("forward", forward_best) if g > forward_best else ("backward", best)
    beyond = LMKAN2DLayer(g, 4, 10, deterministic=True).cuda()  # > 8 outputs: these limits
    with pytest.warns(UserWarning, match=rf"num_grids={g}.*any tile_size_{which}.*{limit}"):
        beyond(torch.randn(4, 300, device="cuda", requires_grad=True)).sum().backward()


@requires_gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_few_outputs_limits_and_no_spurious_warning(deterministic):
    """Layers of at most 8 outputs run the few-outputs kernels (sample_threads_*.cu), whose
    shared memory holds one pair's (G+1)^2 x width slice: max_num_grids(..., output_dim)
    reports their limits, and the layer warns by those. A one-output layer at the largest
    num_grids they serve (past the wide kernels' forward limit at its tile, where it used to
    warn) runs without a warning and matches the reference; one more grid warns."""
    mode = "backward_deterministic" if deterministic else "backward"
    for t in TILES:
        for m in ("forward", mode):
            assert max_num_grids(t, m, "cuda", output_dim=1) >= max_num_grids(t, m, "cuda")
            # wider layers keep the wide kernels' limits
            assert max_num_grids(t, m, "cuda", output_dim=9) == max_num_grids(t, m, "cuda")
    few_forward = max_num_grids(16, "forward", "cuda", output_dim=1)
    few_backward = max(max_num_grids(t, mode, "cuda", output_dim=1) for t in TILES)
    g = min(few_forward, few_backward)
    assert g > max_num_grids(16, "forward", "cuda")
    layer = LMKAN2DLayer(g, 6, 1, tile_size_forward=16, deterministic=deterministic).cuda()
    with torch.no_grad():
        layer.func_parameter.normal_()
    x = torch.randn(6, 301, device="cuda", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)
        gy = torch.randn_like(y)
        y.backward(gy)
    ry, rgx, rgp = _reference_all(x.detach(), layer.func_parameter.detach(), layer.borders, gy, True)
    assert rel_l2(y.detach(), ry) <= TOL
    assert rel_l2(x.grad, rgx) <= TOL and rel_l2(layer.func_parameter.grad, rgp) <= TOL
    past = LMKAN2DLayer(g + 1, 6, 1, tile_size_forward=16, deterministic=deterministic).cuda()
    with pytest.warns(UserWarning, match=rf"num_grids={g + 1}"):
        past(x).sum().backward()
    with pytest.raises(ValueError, match="output_dim must be >= 1, got 0"):
        max_num_grids(8, "forward", "cuda", output_dim=0)


@requires_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    with torch.cuda.device(0):
        x, params, borders = _make(5, 8, 9, 100, True, device="cuda:1")
        gy = torch.randn(9, 100, device="cuda:1")
        y, gx, gp = _kernels(x, params, borders, gy, True, 8, 128, True)
    ry, rgx, rgp = _reference_all(x, params, borders, gy, True)
    assert y.device.index == 1 and rel_l2(y, ry) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
def test_cuda_graph_capture():
    x, params, borders = _make(8, 32, 24, 999, True)
    x.requires_grad_(True)
    params.requires_grad_(True)
    gy = torch.randn(24, 999, device="cuda")
    from lmKAN import ops

    def step():
        x.grad = None
        params.grad = None
        y = ops.lmkan2d(x, params, borders, True, 8, 256, 8, 256, True)
        y.backward(gy)
        return y

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    eager = (step().detach().clone(), x.grad.clone(), params.grad.clone())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = ops.lmkan2d(x, params, borders, True, 8, 256, 8, 256, True)
        y_static.backward(gy)
    x.grad.zero_()
    params.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert rel_l2(y_static, eager[0]) <= 1e-6
    assert rel_l2(x.grad, eager[1]) <= 1e-6
    assert rel_l2(params.grad, eager[2]) <= 1e-6


@requires_gpu
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 40e9,
                    reason="needs about 20 GB of GPU memory")
def test_int64_offsets():
    # B x N_in = 2^31 + ...: the last samples' x, y, dx sit past 2^31 elements.
    n_in, n_out, batch = 16, 8, (1 << 27) + 7
    x = torch.randn(batch, n_in, device="cuda")
    params = torch.randn(4, 4, n_out, n_in // 2, device="cuda")
    borders = cdf_borders(3, device="cuda")
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, False, 8, 1024)
    tail = slice(batch - 1000, batch)
    ry = _reference.lmkan2d_forward(x[tail].double(), params.double(), borders.double(), False)
    assert rel_l2(y[tail], ry) <= TOL
    gy = torch.zeros_like(y)
    gy[tail] = torch.randn(1000, n_out, device="cuda")
    del y
    gx, gp = _backward(gy, x, params, borders, False, 8, 512, False)
    _, rgx, rgp = _reference_all(x[tail], params, borders, gy[tail], False)
    assert rel_l2(gx[tail], rgx) <= TOL
    assert rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 60e9,
                    reason="needs about 40 GB of GPU memory")
def test_int64_offsets_fast_backward():
    # The fast backward (cell-sorted chunks): x, grad_y rows and grad_x past 2^31 elements.
    n_in, n_out, batch = 16, 32, (1 << 27) + 7   # 32 outputs = one tile 4 row (no padding)
    x = torch.randn(batch, n_in, device="cuda")
    params = torch.randn(4, 4, n_out, n_in // 2, device="cuda")
    borders = cdf_borders(3, device="cuda")
    tail = slice(batch - 1000, batch)
    gy = torch.zeros(batch, n_out, device="cuda")
    gy[tail] = torch.randn(1000, n_out, device="cuda")
    gx, gp = _backward(gy, x, params, borders, False, 4, 512, True)
    _, rgx, rgp = _reference_all(x[tail], params, borders, gy[tail], False)
    assert rel_l2(gx[tail], rgx) <= TOL
    assert gx[:1000].abs().max().item() == 0  # zero grad_y gives zero grad_x
    assert rel_l2(gp, rgp) <= TOL


@requires_gpu
@pytest.mark.parametrize("case", ["sample_lanes", "sample_lanes_bf16", "output_lanes",
                                  "sample_threads"])
@pytest.mark.parametrize("batch_last", [True, False])
def test_far_inputs_forward_without_nan(case, batch_last):
    """Finite inputs far past the grid (docs/spec.md, "Robustness"): the forward kernels give
    the float64 value, +-inf where it overflows, never NaN (the float32 bilinear weights gave
    inf - inf). One far input per chosen sample, at scattered (sample, input) positions, two
    whole warps without any; every forward kernel (the output-lanes kernel serves num_grids
    past the shared-memory limit, sample_threads_*.cu layers of at most 8 outputs) and a
    16-bit table."""
    tile = 4
    table = torch.bfloat16 if case.endswith("bf16") else None
    g = max_num_grids(tile, "forward", "cuda") + 3 if case == "output_lanes" else 8
    n_in, n_out, batch = 10, 3 if case == "sample_threads" else 37, 700
    torch.manual_seed(7)
    borders = cdf_borders(g, device="cuda")
    params = 0.05 * torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda")
    params[:, :, 0] *= 1000.0  # output 0's far values overflow float32, the others' stay finite
    x = torch.randn(*((n_in, batch) if batch_last else (batch, n_in)), device="cuda")
    xb = x.t() if batch_last else x  # [B, N_in] view
    huge = torch.tensor([5e37, -5e37, 3e38, -3e38, 1e30, -2e7, 1e12, -1e9], device="cuda")
    far_samples = 48 + torch.randperm(batch - 48, device="cuda")[:150]
    far_inputs = torch.randint(0, n_in, (150,), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(150, device="cuda") % len(huge)]
    xb[16:48] = 0.3
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, 256, table)
    table_values = params if table is None else params.to(table)
    y_ref = _reference.lmkan2d_forward(x.double(), table_values.double(), borders.double(),
                                       batch_last)
    assert not y.isnan().any() and not y_ref.isnan().any()
    big = y_ref.abs() > 3.0e38
    assert big.any() and (~big).any()
    assert torch.equal(torch.sign(y[big]), torch.sign(y_ref[big]).float())
    assert (y[big].abs() >= 3.0e38).all()
    # Samples without a far input: the float32 contract. Elsewhere each finite value to 1e-5
    # of the larger of its own size and its output's rms over those samples (output 0's
    # terms are 1000x larger: a small sum of them carries their float32 rounding).
    yb, rb = (y.t(), y_ref.t()) if batch_last else (y, y_ref)
    far_rows = torch.zeros(batch, dtype=torch.bool, device="cuda")
    far_rows[far_samples] = True
    assert rel_l2(yb[~far_rows], rb[~far_rows]) <= TOL
    scale = rb[~far_rows].pow(2).mean(0).sqrt()
    ok = ~(rb.abs() > 3.0e38)
    rel = ((yb.double() - rb).abs() / torch.maximum(rb.abs(), scale.expand_as(rb)))[ok]
    assert rel.max().item() <= 1e-5


def _assert_far_backward(gx, gp, rgx, rgp):
    """grad_x and grad_params of a backward with far inputs against the float64 reference:
    no NaN, and the far-dominated entries (|value| > 1e3) and the others apart, each within
    the contract (both kinds must be present)."""
    for got, want in ((gx, rgx), (gp, rgp)):
        assert not got.isnan().any()
        large = want.abs() > 1e3
        assert large.any() and (~large).any()
        assert rel_l2(got[large], want[large]) <= TOL
        assert rel_l2(got[~large], want[~large]) <= TOL


@requires_gpu
@pytest.mark.parametrize("batch_last", [True, False])
def test_far_flags_from_the_cell_sort(batch_last):
    """The sorted backward's cell sort writes far_fixup.cu's flags (one byte per 256 samples
    and pair) as it classifies the inputs, so no flags kernel runs: far inputs across three
    sort chunks (18 output tiles at tile 8: rows of 1,152 floats, 1,792-sample chunks in
    normal mode) and in the ragged last flag chunk, against the float64 reference, the
    far-dominated entries (|value| > 1e3) and the others apart."""
    torch.manual_seed(9)
    batch, n_in, n_out = 5000, 6, 17 * 64 + 3
    x, params, borders = _make(8, n_in, n_out, batch, batch_last)
    params *= 0.05
    xb = x.t() if batch_last else x
    huge = torch.tensor([2e7, -3e7, 1e9, -1e12, 5e14, -4e8], device="cuda")
    far_samples = torch.cat([torch.randperm(batch - 8, device="cuda")[:60],
                             torch.tensor([1791, 1792, batch - 1], device="cuda")])
    far_inputs = torch.randint(0, n_in, (len(far_samples),), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(len(far_samples), device="cuda") % len(huge)]
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")

    def step():
        return _backward(grad_y, x, params, borders, batch_last, 8, 256, False)
    names = cuda_kernel_names(step)
    assert any("bucket_kernel" in n for n in names), sorted(names)
    assert not any("far_flags_kernel" in n for n in names), sorted(names)
    gx, gp = step()
    _, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
    _assert_far_backward(gx, gp, rgx, rgp)


@requires_gpu
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("g, n_in, n_out", [(8, 10, 37), (8, 10, 200), (60, 10, 9), (8, 10, 1),
                                            (8, 130, 5)], ids=str)
@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("batch", [700, 701, 1300, 1301],
                         ids=["inline", "inline_odd_misaligned", "flags", "flags_odd_misaligned"])
def test_far_inputs_backward_without_nan(batch, batch_last, g, n_in, n_out, deterministic):
    """Far inputs in the backward: every backward kernel takes them at d = 0 and far_fixup.cu
    replaces their pairs' grad_x and corrects grad_params in float64: no NaN, and both match
    the float64 reference, the far-dominated entries (|value| > 1e3) and the others apart.
    Shapes: the cell-sorted backward, several output tiles, num_grids past the shared
    memory of the deterministic kernels, and one output (sample_threads_*.cu: grad_x alone
    when deterministic, grad_x with grad_params when not). Batches 700 and 701 (3 chunks of
    256) are classified by the fixup kernel itself; 1300 and 1301 (6 chunks) by the flags
    kernel first (the sorted backward, not deterministic: by its cell sort at any batch).
    Odd batches with x one float past a 16-byte boundary take the flags kernel's scalar
    loads (and, batch-first, the last chunk's tail). 130 inputs batch-last:
    the flags kernel splits the rows of its 6 chunks over 8 blocks (18 rows each, the last
    4)."""
    torch.manual_seed(8)
    x, params, borders = _make(g, n_in, n_out, batch, batch_last)
    if batch % 2:  # the same values at a storage offset of one float: not 16-byte aligned
        x = torch.empty(x.numel() + 1, device="cuda")[1:].view(x.shape).copy_(x)
    params *= 0.05
    xb = x.t() if batch_last else x
    huge = torch.tensor([2e7, -3e7, 1e9, -1e12, 5e14, -4e8], device="cuda")
    far_samples = 48 + torch.randperm(batch - 48, device="cuda")[:120]
    far_inputs = torch.randint(0, n_in, (120,), device="cuda")
    xb[far_samples, far_inputs] = huge[torch.arange(120, device="cuda") % len(huge)]
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    gx, gp = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8, 256,
                                              False, deterministic)
    _, rgx, rgp = _reference_all(x, params, borders, grad_y, batch_last)
    _assert_far_backward(gx, gp, rgx, rgp)
    if deterministic:
        again = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8, 256,
                                                 False, True)
        assert torch.equal(gx, again[0]) and torch.equal(gp, again[1])
