"""CUDA kernels of LMKAN2DLayer against the float64 reference (docs/spec.md sections 2 and
5): forward paths, limits, determinism, layer behaviour; the sorted backward and far or NaN
inputs in test_cuda_2d_sorted_backward.py and test_cuda_2d_far_inputs.py."""
import copy
import warnings

import pytest
import torch

from lmKAN import _reference
from lmKAN.grids import cdf_borders
from lmKAN.lmkan2d import LMKAN2DLayer, max_num_grids

from conftest import assert_cuda_kernel, deterministic_algorithms, rel_l2, requires_gpu
from cases_2d import (TILES, TOL, make_case, reference_all, run_kernels, run_backward,
                      check_case)


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
    check_case(num_grids, 38, 21, 1037, batch_last, tile, fast)


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
        x, params, borders = make_case(num_grids, 34, 8 * tile + 3, batch, True)
        y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, block)
        ref = _reference.lmkan2d_forward(x.double(), params.double(), borders.double())
        err = rel_l2(y, ref)
        assert err <= TOL, (f"rel L2 {err:.3e} (G={num_grids}, tile={tile}, block={block}, "
                            f"batch={batch})")


@requires_gpu
@pytest.mark.parametrize("tile", TILES)
def test_forward_memory(tile):
    """The forward allocates its output and the packed table, nothing else (a second,
    unused output once sat beside them)."""
    assert_cuda_kernel("lmkan2d_forward")
    x, params, borders = make_case(8, 64, 96, 50001, True)
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
        x_bl, params, borders = make_case(num_grids, n_in, n_out, batch, True)
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
        x, params, borders = make_case(g, 6, 9, 301, True)
        y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, 128)
        ref = _reference.lmkan2d_forward(x.double(), params.double(), borders.double())
        assert rel_l2(y, ref) <= TOL
    else:
        fast, deterministic = mode == "backward_fast", mode == "backward_deterministic"
        check_case(g, 6, 9, 301, True, tile, fast, block=128, deterministic=deterministic,
               forward=g <= max_num_grids(tile, "forward", "cuda"))
        # one past the limit: the deterministic kernels' global-memory variants (table and
        # dP accumulator in L2), with float atomics unless deterministic
        check_case(g + 1, 6, 9, 301, True, tile, fast, block=128, deterministic=deterministic,
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
        check_case(num_grids, 6, 9, 700, batch_last, tile, fast, block=128,
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
        x, params, borders = make_case(num_grids, n_in, n_out, batch, batch_last)
        gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
        first = run_backward(gy, x, params, borders, batch_last, tile, 256, False, True)
        second = run_backward(gy, x, params, borders, batch_last, tile, 256, False, True)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        _, rgx, rgp = reference_all(x, params, borders, gy, batch_last)
        assert rel_l2(first[0], rgx) <= TOL and rel_l2(first[1], rgp) <= TOL
        # fast mode (larger dP blocks, longer sorted chunks) is deterministic too
        fast = run_backward(gy, x, params, borders, batch_last, tile, 256, True, True)
        fast_again = run_backward(gy, x, params, borders, batch_last, tile, 256, True, True)
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
@pytest.mark.parametrize("shape", [(2, 1, 1), (2, 3, 0), (4, 17, 33), (130, 40, 4099),
                                   (64, 129, 777)])
@pytest.mark.parametrize("block", (32, 1024))
def test_odd_shapes(shape, block):
    n_in, n_out, batch = shape
    for tile in TILES:
        check_case(5, n_in, n_out, batch, True, tile, tile == 8, block=block)
        check_case(5, n_in, n_out, batch, False, tile, tile != 8, block=block)


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
    x, params, borders = make_case(g, n_in, n_out, batch, batch_last, scale=2.0)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    ry, rgx, rgp = reference_all(x, params, borders, grad_y, batch_last)
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, 8, 256)
    assert rel_l2(y, ry) <= TOL
    assert torch.equal(y, torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, 8, 256))
    alone, empty = torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, batch_last, 8,
                                                    256, False, deterministic, None, False)
    assert empty.shape == (0,)
    assert rel_l2(alone, rgx) <= TOL
    gx, gp = run_backward(grad_y, x, params, borders, batch_last, 8, 256, False, deterministic)
    assert rel_l2(gx, rgx) <= TOL and rel_l2(gp, rgp) <= TOL
    if deterministic:
        assert torch.equal(gx, alone)  # the same kernel
        again = run_backward(grad_y, x, params, borders, batch_last, 8, 256, False, True)
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
    x, params, borders = make_case(g, n_in, n_out, batch, batch_last)
    grad_y = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda")
    ry, rgx, rgp = reference_all(x, params.to(table).float(), borders, grad_y, batch_last)
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
    _, rgx, rgp = reference_all(x.detach(), layer.func_parameter.detach(), layer.borders, gy, True)
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
    ry, rgx, rgp = reference_all(x.detach(), layer.func_parameter.detach(), layer.borders, gy, True)
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
        x, params, borders = make_case(5, 8, 9, 100, True, device="cuda:1")
        gy = torch.randn(9, 100, device="cuda:1")
        y, gx, gp = run_kernels(x, params, borders, gy, True, 8, 128, True)
    ry, rgx, rgp = reference_all(x, params, borders, gy, True)
    assert y.device.index == 1 and rel_l2(y, ry) <= TOL and rel_l2(gp, rgp) <= TOL


@requires_gpu
def test_cuda_graph_capture():
    x, params, borders = make_case(8, 32, 24, 999, True)
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
    gx, gp = run_backward(gy, x, params, borders, False, 8, 512, False)
    _, rgx, rgp = reference_all(x[tail], params, borders, gy[tail], False)
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
    gx, gp = run_backward(gy, x, params, borders, False, 4, 512, True)
    _, rgx, rgp = reference_all(x[tail], params, borders, gy[tail], False)
    assert rel_l2(gx[tail], rgx) <= TOL
    assert gx[:1000].abs().max().item() == 0  # zero grad_y gives zero grad_x
    assert rel_l2(gp, rgp) <= TOL
