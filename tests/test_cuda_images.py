"""Batch-last images in the ops, and the NCHW 1x1 convolution that reads its input in place
through them (csrc/common/images.h, lmKAN/conv.py; issue 20, item 2).

The forward ops take x [N, N_in, L] (image n is the batch-last matrix x[n]) and return y
[N, N_out, L]; the backward ops take grad_y [N, N_out, L] with such an x and return grad_x
[N, N_in, L]; the layer ops take images in every grad mode. Each sample's arithmetic is that
of the same sample in a plain batch-last call, so the images' results must equal the plain
call on the batch-last copy [N_in, N*L] viewed back, on every path: read in place (the 2D
sample-lanes forward, the 1D tiles where L is a multiple of 16, the 2D sorted backward and
its far-input fixup), through the split sums of small batches, and through the copies of
the kernels that do not read images. Checked to 1e-6 rather than bit for bit: the in-place
paths run other instances of the kernels (the same source arithmetic; only addresses
differ), whose floating-point code the compiler could schedule or contract differently,
and the parameter gradients of the non-deterministic backward are float atomics; a wrong
offset gives errors of order 1.
"""
import pytest
import torch

from lmKAN import LMKAN1DConv2d, LMKAN2DConv2d, _reference, ops
from lmKAN.grids import cdf_borders

from conftest import assert_cuda_kernel, cuda_kernel_names, rel_l2, requires_gpu

pytestmark = requires_gpu

# (images N, in features, out features, samples per image L): what each case exercises
IMAGE_CASES = [
    (256, 16, 96, 256),  # many samples: the 2D sample-lanes kernel and the 1D tiles in place
    (3, 6, 40, 25),      # few samples: pair / stage splits; L odd: the 1D copy
    (5, 40, 4, 48),      # 2D: 4 outputs, the sample-threads kernel (a copy); 1D: in place, split
                         # over input stages (240 samples, one block)
    (2, 10, 130, 64),    # 3 output tiles of 64 (2D, tile 8) and 2 of 128 (1D)
]


def _plain(x):
    """[N, F, L] -> the batch-last copy [F, N*L]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _images(y, n):
    """[F, N*L] -> [N, F, L]."""
    return y.view(y.shape[0], n, -1).transpose(0, 1)


def _inputs(n, c, length, far=False):
    x = torch.randn(n, c, length, device="cuda") * 1.5
    if far:  # a few far inputs (device.cuh, kFarCells): the kernels' float64 correction paths
        x.view(-1)[torch.randperm(x.numel(), device="cuda")[:7]] = 3.0e7
    return x


def _case_2d(case, seed, g=6):
    """A 2D case's table, borders and images x (with far inputs)."""
    n, c, o, length = case
    torch.manual_seed(seed)
    params = torch.randn(g + 1, g + 1, o, c // 2, device="cuda")
    return params, cdf_borders(g).cuda(), _inputs(n, c, length, far=True)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=["large", "small", "few-outputs", "tiles"])
@pytest.mark.parametrize("tile", [4, 8, 16])
@pytest.mark.parametrize("table", [None, torch.bfloat16])
def test_2d_images_equal_the_plain_forward(case, tile, table):
    assert_cuda_kernel("lmkan2d_forward")
    n, c, o, length = case
    params, borders, x = _case_2d(case, 1)
    y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, tile, 512, table)
    assert y.shape == (n, o, length) and y.is_contiguous()
    plain = torch.ops.lmkan.lmkan2d_forward(_plain(x), params, borders, True, tile, 512, table)
    torch.testing.assert_close(y, _images(plain, n), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=["large", "small", "few-outputs", "tiles"])
@pytest.mark.parametrize("table", [None, torch.bfloat16])
@pytest.mark.parametrize("uniform", [False, True])
def test_1d_images_equal_the_plain_forward(case, table, uniform):
    assert_cuda_kernel("lmkan1d_forward")
    n, c, o, length = case
    torch.manual_seed(2)
    g = 9
    params = torch.randn(g + 1, o, c, device="cuda")
    borders = (torch.linspace(-2, 2, g + 1) if uniform else cdf_borders(g)).cuda()
    x = _inputs(n, c, length, far=True)
    y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, uniform, True, table)
    assert y.shape == (n, o, length) and y.is_contiguous()
    plain = torch.ops.lmkan.lmkan1d_forward(_plain(x), params, borders, uniform, True, table)
    torch.testing.assert_close(y, _images(plain, n), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_images_match_the_float64_reference(kind):
    """The contract itself (relative L2 <= 1e-5), on a case read in place."""
    n, c, o, length = 7, 12, 70, 96
    torch.manual_seed(3)
    g = 8
    x = _inputs(n, c, length)
    borders = cdf_borders(g).cuda()
    if kind == "2d":
        params = torch.randn(g + 1, g + 1, o, c // 2, device="cuda")
        y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 512)
        ref = _reference.lmkan2d_forward(_plain(x).double(), params.double(), borders.double(),
                                         True)
    else:
        params = torch.randn(g + 1, o, c, device="cuda")
        y = torch.ops.lmkan.lmkan1d_forward(x, params, borders, False, True)
        ref = _reference.lmkan1d_forward(_plain(x).double(), params.double(), borders.double(),
                                         False, True)
    assert rel_l2(y, _images(ref, n)) <= 1e-5


def test_images_errors():
    g = 5
    params = torch.randn(g + 1, g + 1, 7, 3, device="cuda")
    borders = cdf_borders(g).cuda()
    x = torch.randn(2, 6, 9, device="cuda")
    with pytest.raises(ValueError, match=r"a 3-D x \(\[N, N_in, L\] images\) is batch-last"):
        torch.ops.lmkan.lmkan2d_forward(x, params, borders, False, 8, 256)
    with pytest.raises(ValueError, match="x has 9 input features"):
        torch.ops.lmkan.lmkan2d_forward(x.transpose(1, 2).contiguous(), params, borders, True, 8,
                                        256)
    params1 = torch.randn(g + 1, 7, 6, device="cuda")
    with pytest.raises(ValueError, match="a 3-D x"):
        torch.ops.lmkan.lmkan1d_forward(x, params1, borders, False, False)
    gy = torch.randn(2, 7, 9, device="cuda")
    with pytest.raises(ValueError, match=r"grad_y of images x \[2, 6, 9\] must have shape "
                                         r"\[N, N_out, L\] = \[2, 7, 9\], got \[7, 18\]"):
        torch.ops.lmkan.lmkan2d_backward(_plain(gy), x, params, borders, True, 8, 256, False)
    with pytest.raises(ValueError, match=r"must have shape \[N, N_out, L\] = \[2, 7, 9\], got "
                                         r"\[2, 7, 8\]"):
        torch.ops.lmkan.lmkan1d_backward(gy[..., :8], x, params1, borders, False, True)
    with pytest.raises(ValueError, match="images x \\[N, N_in, L\\] run on the CUDA kernels only"):
        ops.lmkan2d(x.cpu(), params.cpu(), borders.cpu())


# ---- the backward ops and the layer ops' autograd ------------------------------------------

# IMAGE_CASES and one of 1,480 samples with L % 4 != 0: the far-input fixup's flag pass (more
# than 4 chunks of 256 samples) reads images without 16-byte loads; "large" (65,536 samples,
# L % 4 == 0) takes them with, over several chunks of the sorted backward.
BACKWARD_CASES = IMAGE_CASES + [(40, 8, 24, 37)]
BACKWARD_IDS = ["large", "small", "few-outputs", "tiles", "flags"]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=BACKWARD_IDS)
@pytest.mark.parametrize("mode", ["normal", "fast", "deterministic"])
@pytest.mark.parametrize("table", [None, torch.bfloat16])
def test_2d_images_backward_equals_the_plain_backward(case, mode, table):
    """grad_x (images, contiguous) and grad_params of images equal the plain batch-last
    call's: in place where the sorted backward serves (not deterministic, more than 8
    outputs), through copies elsewhere; with far inputs (float64 fixup)."""
    assert_cuda_kernel("lmkan2d_backward")
    n, c, o, length = case
    params, borders, x = _case_2d(case, 7)
    gy = torch.randn(n, o, length, device="cuda")
    fast, det = mode == "fast", mode == "deterministic"
    for grad_params in (True, False):
        gx, gp = torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, 8, 512, fast,
                                                  det, table, grad_params)
        assert gx.shape == x.shape and gx.is_contiguous()
        pgx, pgp = torch.ops.lmkan.lmkan2d_backward(_plain(gy), _plain(x), params, borders, True,
                                                    8, 512, fast, det, table, grad_params)
        assert rel_l2(gx, _images(pgx, n)) <= 1e-6
        if grad_params:
            assert rel_l2(gp, pgp) <= 1e-6
        else:
            assert gp.numel() == 0


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=BACKWARD_IDS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_1d_images_backward_equals_the_plain_backward(case, deterministic):
    assert_cuda_kernel("lmkan1d_backward")
    n, c, o, length = case
    torch.manual_seed(8)
    g = 9
    params = torch.randn(g + 1, o, c, device="cuda")
    borders = cdf_borders(g).cuda()
    x = _inputs(n, c, length, far=True)
    gy = torch.randn(n, o, length, device="cuda")
    gx, gp = torch.ops.lmkan.lmkan1d_backward(gy, x, params, borders, False, True, deterministic)
    assert gx.shape == x.shape and gx.is_contiguous()
    pgx, pgp = torch.ops.lmkan.lmkan1d_backward(_plain(gy), _plain(x), params, borders, False,
                                                True, deterministic)
    assert rel_l2(gx, _images(pgx, n)) <= 1e-6 and rel_l2(gp, pgp) <= 1e-6


def _layer_op(kind, params, borders, mode):
    """The differentiable layer op of `kind` in backward mode `mode`."""
    det = mode == "deterministic"
    if kind == "2d":
        return lambda x, p: torch.ops.lmkan.lmkan2d(x, p, borders, True, 8, 512, 8, 512,
                                                    mode == "fast", det)
    return lambda x, p: torch.ops.lmkan.lmkan1d(x, p, borders, False, True, det)


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("mode", ["normal", "fast", "deterministic"])
def test_layer_ops_train_on_images(kind, mode):
    """The layer ops' autograd on images: y, the first derivatives and the second ones (a
    loss on both first derivatives, create_graph=True, so that every term of the backward
    op's own backward runs: grad_y depends on y through the loss) equal those of the plain
    call, and each is laid out as its tensor (images for x)."""
    n, c, o, length = 6, 8, 40, 48
    torch.manual_seed(9)
    g = 6
    borders = cdf_borders(g).cuda()
    shape = (g + 1, g + 1, o, c // 2) if kind == "2d" else (g + 1, o, c)
    params = torch.randn(*shape, device="cuda")
    op = _layer_op(kind, params, borders, mode)
    x = _inputs(n, c, length)
    w, v = torch.randn(n, o, length, device="cuda"), torch.randn(n, c, length, device="cuda")
    u = torch.randn_like(params)

    def derivatives(x_in, w_in, v_in):
        x_in = x_in.detach().requires_grad_()
        p = params.clone().requires_grad_()
        y = op(x_in, p)
        loss = (y * y * w_in).sum()
        gx, gp = torch.autograd.grad(loss, (x_in, p), create_graph=True)
        gxx, gpp = torch.autograd.grad(loss + (gx * v_in).sum() + (gp * u).sum(), (x_in, p))
        return y, gx, gp, gxx, gpp

    y, gx, gp, gxx, gpp = derivatives(x, w, v)
    py, pgx, pgp, pgxx, pgpp = derivatives(_plain(x), _plain(w), _plain(v))
    assert y.shape == (n, o, length) and gx.shape == gxx.shape == x.shape
    assert rel_l2(y, _images(py, n)) <= 1e-6
    assert rel_l2(gx, _images(pgx, n)) <= 1e-5 and rel_l2(gp, pgp) <= 1e-5
    assert rel_l2(gxx, _images(pgxx, n)) <= 1e-5 and rel_l2(gpp, pgpp) <= 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
def test_2d_sorted_backward_reads_images_in_place(deterministic):
    """Where the sorted backward serves, images run its image instances (no copy of x,
    grad_x or grad_y before them); the deterministic plan runs the plain kernels on
    copies."""
    n, c, o, length = 12, 10, 70, 64
    torch.manual_seed(11)
    params = torch.randn(6, 6, o, c // 2, device="cuda")
    borders = cdf_borders(5).cuda()
    x = _inputs(n, c, length)
    gy = torch.randn(n, o, length, device="cuda")
    names = cuda_kernel_names(lambda: torch.ops.lmkan.lmkan2d_backward(
        gy, x, params, borders, True, 8, 512, False, deterministic))
    # bucket_kernel<kImages, kStaged>, runs_kernel<K, T, kImages, grad_y row type>,
    # transpose_kernel<element type, kImages>
    expected = ["bucket_kernel<true, true>", "runs_kernel<2, 1, true, float>",
                "transpose_kernel<float, true>"]
    in_place = [k for k in expected if any(k in name for name in names)]
    assert in_place == ([] if deterministic else expected)


# ---- the 1x1 convolution ------------------------------------------------------------------

def _pointwise(kind, c_in, c_out):
    cls = LMKAN2DConv2d if kind == "2d" else LMKAN1DConv2d
    return cls(6, c_in, c_out, 1).cuda()


def _definition(conv, x):
    """The float64 layer on x's rows [N*H*W, C], as an NCHW image."""
    n, c, h, w = x.shape
    rows = x.double().permute(0, 2, 3, 1).reshape(-1, c)
    params, borders = conv.func_parameter.detach().double(), conv.borders.double()
    if isinstance(conv, LMKAN2DConv2d):
        y = _reference.lmkan2d_forward(rows, params, borders, False)
    else:
        y = _reference.lmkan1d_forward(rows, params, borders, conv.grid == "uniform", False)
    return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _spy_images(monkeypatch, name):
    """Records (data pointer, shape) of each 3-D x that ops.<name> receives."""
    seen = []
    original = getattr(ops, name)

    def spy(x, *args, **kwargs):
        if x.dim() == 3:
            seen.append((x.data_ptr(), tuple(x.shape)))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(ops, name, spy)
    return seen


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("size", [(4, 4), (5, 7)], ids=["L16", "L35"])
@pytest.mark.parametrize("c_out", [40, 4])
def test_pointwise_conv_reads_nchw_in_place(kind, size, c_out, monkeypatch):
    """An NCHW 1x1 convolution hands the kernels x's own memory as N images (no copy) and
    returns NCHW where the forward kernel that serves it reads images (2D: more than 8
    outputs; 1D: H*W a multiple of 16): the 2D layer with or without gradients, the 1D layer
    without (its backward would copy); otherwise it takes the layer's rows (one copy). Every
    path matches the float64 definition."""
    torch.manual_seed(4)
    conv = _pointwise(kind, 6, c_out)
    seen = _spy_images(monkeypatch, "lmkan2d" if kind == "2d" else "lmkan1d_forward_images")
    x = torch.randn(3, 6, *size, device="cuda")
    in_place = c_out > 8 if kind == "2d" else (size[0] * size[1]) % 16 == 0
    images = [(x.data_ptr(), (3, 6, size[0] * size[1]))]
    with torch.no_grad():
        y = conv(x)
    assert seen == (images if in_place else [])
    assert y.shape == (3, c_out, *size)
    assert y.is_contiguous() == in_place  # else the rows' channels_last view
    assert rel_l2(y, _definition(conv, x)) <= 1e-5
    seen.clear()
    y_grad = conv(x)  # parameters require grad: images for the 2D layer only
    grad_in_place = in_place and kind == "2d"
    assert seen == (images if grad_in_place else [])
    assert y_grad.requires_grad and y_grad.is_contiguous() == grad_in_place
    assert rel_l2(y_grad, y) <= 1e-6
    seen.clear()
    conv.requires_grad_(False)  # a frozen layer needs no gradient either
    assert rel_l2(conv(x), y) == 0.0 and seen == (images if in_place else [])


@pytest.mark.parametrize("size", [(4, 4), (5, 7)], ids=["L16", "L35"])
@pytest.mark.parametrize("mode", ["normal", "fast", "deterministic"])
def test_2d_pointwise_conv_trains_in_place(size, mode, monkeypatch):
    """Training a 2D 1x1 convolution on NCHW x: the layer op gets x's own memory, and y,
    grad_x and grad_params match the float64 definition (relative L2 <= 1e-5), in each
    backward mode (the sorted backward in place, the deterministic one on copies)."""
    torch.manual_seed(10)
    conv = _pointwise("2d", 6, 40)
    conv.backward_fast_mode, conv.deterministic = mode == "fast", mode == "deterministic"
    seen = _spy_images(monkeypatch, "lmkan2d")
    x = (torch.randn(3, 6, *size, device="cuda") * 1.5).requires_grad_()
    y = conv(x)
    assert seen == [(x.data_ptr(), (3, 6, size[0] * size[1]))]
    gy = torch.randn_like(y)
    y.backward(gy)
    xd = x.detach().double().requires_grad_()
    pd = conv.func_parameter.detach().double().requires_grad_()
    rows = xd.permute(0, 2, 3, 1).reshape(-1, 6)
    yd = _reference.lmkan2d_forward(rows, pd, conv.borders.double(), False)
    yd = yd.reshape(3, *size, 40).permute(0, 3, 1, 2)
    yd.backward(gy.double())
    assert rel_l2(y, yd) <= 1e-5
    assert rel_l2(x.grad, xd.grad) <= 1e-5
    assert rel_l2(conv.func_parameter.grad, pd.grad) <= 1e-5


def test_pointwise_conv_without_grad_keeps_the_layers_dtype_rule():
    """The image path takes what the layer takes: a float64 input to a float32 conv raises the
    layer's TypeError under no_grad as it does with gradients."""
    conv = _pointwise("2d", 6, 40)
    x = torch.randn(2, 6, 4, 4, device="cuda", dtype=torch.float64)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(TypeError, match="dtype torch.float64"):
            conv(x)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_pointwise_conv_in_place_under_autocast(kind):
    """The mixed-precision policy holds on the image path: inside bfloat16 autocast the table
    is rounded to bfloat16 and the output is bfloat16, exactly the op's float32 result on the
    bfloat16 table, rounded once (and not the float32 table's)."""
    torch.manual_seed(5)
    conv = _pointwise(kind, 8, 33)
    x = torch.randn(2, 8, 6, 8, device="cuda")
    params, borders = conv.func_parameter.detach(), conv.borders
    if kind == "2d":
        conv.tile_size_forward, conv.block_size_forward = 8, 512
        op = lambda table: torch.ops.lmkan.lmkan2d_forward(x.view(2, 8, 48), params, borders,
                                                           True, 8, 512, table)
    else:
        op = lambda table: torch.ops.lmkan.lmkan1d_forward(x.view(2, 8, 48), params, borders,
                                                           False, True, table)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        y = conv(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 33, 6, 8)
    assert torch.equal(y, op(torch.bfloat16).to(torch.bfloat16).view_as(y))
    assert not torch.equal(y, op(None).to(torch.bfloat16).view_as(y))


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_compiled_pointwise_conv_matches_eager_in_place(kind):
    """torch.compile keeps the rows path (the image path is eager only): the same values."""
    torch._dynamo.reset()
    torch.manual_seed(6)
    conv = _pointwise(kind, 6, 24).eval()
    x = torch.randn(4, 6, 8, 8, device="cuda")
    compiled = torch.compile(conv, fullgraph=True)
    with torch.no_grad():
        assert rel_l2(compiled(x), conv(x)) <= 1e-6
