"""Batch-last images in the forward ops, and the NCHW 1x1 convolution that reads its input in
place through them (csrc/common/images.h, lmKAN/conv.py; issue 20, item 2).

lmkan2d_forward / lmkan1d_forward take x [N, N_in, L] (image n is the batch-last matrix x[n])
and return y [N, N_out, L]. Each sample's arithmetic is that of the same sample in a plain
batch-last call, so the images' result must equal the plain call on the batch-last copy
[N_in, N*L] viewed back, on every path: read in place (the 2D sample-lanes kernel, the 1D
tiles where L is a multiple of 16), through the split sums of small batches, and through
the copies of the kernels that do not read images. Checked to 1e-6 rather than bit for bit:
the in-place paths run other instances of the kernels (the same source arithmetic; only
addresses differ), whose floating-point code the compiler could schedule or contract
differently; a wrong offset gives errors of order 1.
"""
import pytest
import torch

from lmKAN import LMKAN1DConv2d, LMKAN2DConv2d, _reference, ops
from lmKAN.grids import cdf_borders

from conftest import assert_cuda_kernel, rel_l2, requires_gpu

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


@pytest.mark.parametrize("case", IMAGE_CASES, ids=["large", "small", "few-outputs", "tiles"])
@pytest.mark.parametrize("tile", [4, 8, 16])
@pytest.mark.parametrize("table", [None, torch.bfloat16])
def test_2d_images_equal_the_plain_forward(case, tile, table):
    assert_cuda_kernel("lmkan2d_forward")
    n, c, o, length = case
    torch.manual_seed(1)
    g = 6
    params = torch.randn(g + 1, g + 1, o, c // 2, device="cuda")
    borders = cdf_borders(g).cuda()
    x = _inputs(n, c, length, far=True)
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
    for grad in (True, False):  # the layer ops refuse images, recording a graph or not
        with pytest.raises(ValueError, match="lmkan2d: x must have 2 dimensions"):
            torch.ops.lmkan.lmkan2d(x, params.requires_grad_(grad), borders, True, 8, 256, 8, 512,
                                    False, False)
        with pytest.raises(ValueError, match="lmkan1d: x must have 2 dimensions"):
            torch.ops.lmkan.lmkan1d(x, params1.requires_grad_(grad), borders, False, True, False)


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


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("size", [(4, 4), (5, 7)], ids=["L16", "L35"])
@pytest.mark.parametrize("c_out", [40, 4])
def test_pointwise_conv_reads_nchw_in_place_without_grad(kind, size, c_out, monkeypatch):
    """Under no_grad an NCHW 1x1 convolution hands the forward op x's own memory as N images
    (no copy) and returns NCHW where the kernel that serves it reads images (2D: more than 8
    outputs; 1D: H*W a multiple of 16); otherwise, and with gradients, it takes the layer's
    rows (one copy). Every path matches the float64 definition."""
    torch.manual_seed(4)
    conv = _pointwise(kind, 6, c_out)
    name = "lmkan2d_forward_images" if kind == "2d" else "lmkan1d_forward_images"
    seen = []
    original = getattr(ops, name)
    monkeypatch.setattr(ops, name,
                        lambda x, *a: seen.append((x.data_ptr(), x.shape)) or original(x, *a))
    x = torch.randn(3, 6, *size, device="cuda")
    in_place = c_out > 8 if kind == "2d" else (size[0] * size[1]) % 16 == 0
    with torch.no_grad():
        y = conv(x)
    assert seen == ([(x.data_ptr(), (3, 6, size[0] * size[1]))] if in_place else [])
    assert y.shape == (3, c_out, *size)
    assert y.is_contiguous() == in_place  # else the rows' channels_last view
    assert rel_l2(y, _definition(conv, x)) <= 1e-5
    calls = len(seen)
    y_grad = conv(x)  # parameters require grad: the rows path
    assert len(seen) == calls
    assert rel_l2(y_grad, y) <= 1e-6
    conv.requires_grad_(False)  # a frozen layer needs no gradient either
    assert rel_l2(conv(x), y) == 0.0 and len(seen) == calls + in_place


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
