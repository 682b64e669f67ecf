"""LMKAN2DConv2d / LMKAN1DConv2d (lmKAN/conv.py; issue 20, items 1 and 3): the layer applied to
every column of F.unfold, nn.Conv2d's output size, gradients, errors, torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmKAN import LMKAN1DConv2d, LMKAN2DConv2d, _reference
from lmKAN import conv as conv_module
from lmKAN.regularization import hessian_regularization

from conftest import rel_l2, requires_gpu

# (in_channels, out_channels, kernel, stride, padding, dilation, H, W)
GEOMETRIES = [
    (2, 5, 3, 1, 0, 1, 7, 6),
    (4, 3, 3, 2, 1, 1, 11, 10),
    (2, 4, (1, 3), 1, (0, 1), (1, 2), 5, 9),
    (6, 7, 1, 1, 0, 1, 4, 5),       # 1x1
    (1, 2, (2, 4), (2, 1), 2, 2, 9, 8),
]


def _conv(kind, geometry, **kwargs):
    c_in, c_out, k, s, p, d, _, _ = geometry
    cls = LMKAN2DConv2d if kind == "2d" else LMKAN1DConv2d
    return cls(5, c_in, c_out, k, stride=s, padding=p, dilation=d, **kwargs)


def _by_unfold(conv, x, params):
    """The definition: the layer's reference on unfold's columns, reshaped to an image."""
    n = x.shape[0]
    out_h, out_w = conv.output_size(x.shape[2], x.shape[3])
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    rows = cols.transpose(1, 2).reshape(n * out_h * out_w, -1)
    if isinstance(conv, LMKAN2DConv2d):
        y = _reference.lmkan2d_forward(rows, params, conv.borders.to(params.dtype), False)
    else:
        y = _reference.lmkan1d_forward(rows, params, conv.borders.to(params.dtype),
                                       conv.grid == "uniform", False)
    return y.reshape(n, out_h * out_w, -1).transpose(1, 2).reshape(n, -1, out_h, out_w)


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
def test_matches_unfold_and_the_layer(kind, geometry):
    torch.manual_seed(0)
    conv = _conv(kind, geometry).double()
    with torch.no_grad():
        conv.func_parameter.normal_()
    x = torch.randn(3, geometry[0], geometry[6], geometry[7], dtype=torch.float64, requires_grad=True)
    y = conv(x)
    assert y.shape == nn.Conv2d(*geometry[:2], geometry[2], geometry[3], geometry[4], geometry[5])(
        x.float()).shape
    p = conv.func_parameter.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    expected = _by_unfold(conv, xr, p)
    torch.testing.assert_close(y, expected)
    gy = torch.randn_like(y)
    gx, gp = torch.autograd.grad(y, (x, conv.func_parameter), gy)
    rgx, rgp = torch.autograd.grad(expected, (xr, p), gy)
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gp, rgp)


def test_errors():
    with pytest.raises(ValueError, match=r"even in_channels \* kernel_height \* kernel_width.*3 \* 3 \* 3 = 27"):
        LMKAN2DConv2d(5, 3, 4, 3)
    with pytest.raises(TypeError, match="takes no batch_last"):
        LMKAN2DConv2d(5, 2, 4, 3, batch_last=True)
    with pytest.raises(ValueError, match="kernel_size"):
        LMKAN1DConv2d(5, 2, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        LMKAN1DConv2d(5, 2, 4, 3, stride=0)
    conv = LMKAN2DConv2d(5, 2, 4, 3)
    with pytest.raises(ValueError, match=r"shape \[N, in_channels=2, H, W\], got \[2, 3, 8, 8\]"):
        conv(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv(torch.randn(1, 2, 2, 8))


def test_regulariser_counts_each_conv_once():
    torch.manual_seed(1)
    model = nn.Sequential(LMKAN2DConv2d(5, 2, 4, 3), LMKAN1DConv2d(5, 4, 3, 1))
    expected = model[0].get_hessian_regularization() + model[1].get_hessian_regularization()
    torch.testing.assert_close(hessian_regularization(model), expected)
    assert sorted(model[0].state_dict()) == ["borders", "func_parameter"]


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_pointwise_reads_a_channels_last_input_in_place(kind, monkeypatch):
    """A 1x1 convolution of a channels_last input hands the layer a view of x (no copy), of
    an NCHW input one copy of x (no unfold), and every output is a view of the layer's rows
    (channels_last memory)."""
    torch.manual_seed(5)
    conv = _conv(kind, (6, 7, 1, 1, 0, 1, 4, 5)).double()
    with torch.no_grad():
        conv.func_parameter.normal_()
    layer_class = type(conv).__mro__[2]  # the layer class after the conv mixin
    seen = []
    original = layer_class.forward
    monkeypatch.setattr(layer_class, "forward", lambda self, x: seen.append(x) or original(self, x))
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = conv(x)
    assert seen[-1].data_ptr() == x.data_ptr() and seen[-1].shape == (3 * 4 * 5, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    p = conv.func_parameter.detach().clone().requires_grad_(True)
    xr = x.detach().contiguous().requires_grad_(True)
    expected = _by_unfold(conv, xr, p)
    torch.testing.assert_close(y, expected)
    gy = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(y, (x, conv.func_parameter), gy),
                         torch.autograd.grad(expected, (xr, p), gy)):
        torch.testing.assert_close(got, want)
    # an NCHW input: one copy into the layer's rows (no unfold), the same result
    unfolds = []
    unfold = F.unfold
    monkeypatch.setattr(conv_module.F, "unfold", lambda *a, **k: unfolds.append(1) or unfold(*a, **k))
    y_nchw = conv(x.detach().contiguous())
    assert seen[-1].data_ptr() != x.data_ptr() and seen[-1].shape == (3 * 4 * 5, 6)
    assert not unfolds
    torch.testing.assert_close(y_nchw, expected)
    # k x k: the output too is the rows' view
    conv3 = _conv(kind, GEOMETRIES[0])
    assert conv3(torch.randn(2, 2, 7, 6)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_column_budget_chunks_images(kind, monkeypatch):
    """Columns over column_budget_mb run in chunks of images: the same outputs and gradients
    as one call; with gradients each chunk is checkpointed (its layer call runs again in
    the backward), without them it runs once."""
    torch.manual_seed(6)
    geometry = GEOMETRIES[1]  # 4 -> 3 channels, 3x3, stride 2, padding 1, on 11x10
    whole = _conv(kind, geometry, column_budget_mb=None).double()
    with torch.no_grad():
        whole.func_parameter.normal_()
    out_h, out_w = whole.output_size(11, 10)
    image_mb = out_h * out_w * 4 * 9 * 8 / 2**20  # float64 columns of one image
    chunked = _conv(kind, geometry, column_budget_mb=2.5 * image_mb).double()
    chunked.load_state_dict(whole.state_dict())
    assert chunked._images_per_chunk(torch.zeros(1, dtype=torch.float64), out_h, out_w) == 2
    layer_class = type(chunked).__mro__[2]
    calls = []
    original = layer_class.forward
    monkeypatch.setattr(layer_class, "forward",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    x = torch.randn(5, 4, 11, 10, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(5, 3, out_h, out_w, dtype=torch.float64)
    y = chunked(x)
    assert calls == [2, 2, 1]
    grads = torch.autograd.grad(y, (x, chunked.func_parameter), gy)
    assert calls[3:] == [1, 2, 2]  # recomputed chunk by chunk in the backward (last first)
    calls.clear()
    y_whole = whole(x)
    assert calls == [5]
    torch.testing.assert_close(y, y_whole)
    for got, want in zip(grads, torch.autograd.grad(y_whole, (x, whole.func_parameter), gy)):
        torch.testing.assert_close(got, want)
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), y_whole)
    assert calls == [2, 2, 1]
    assert "column_budget_mb" in repr(chunked) and "column_budget_mb" not in repr(_conv(kind, geometry))
    for bad in (0, -1.0, float("nan"), "64"):
        with pytest.raises((ValueError, TypeError), match="column_budget_mb"):
            _conv(kind, geometry, column_budget_mb=bad)


def _small_cnn(device):
    return nn.Sequential(LMKAN2DConv2d(6, 2, 8, 3, padding=1), nn.BatchNorm2d(8),
                         LMKAN1DConv2d(6, 8, 4, 1), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).to(device)


def test_compile_fullgraph_cpu():
    torch._dynamo.reset()
    torch.manual_seed(2)
    model = _small_cnn("cpu").eval()
    x = torch.randn(5, 2, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


@requires_gpu
@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("geometry", GEOMETRIES[1:4], ids=["stride2", "dilated", "1x1"])
@pytest.mark.parametrize("memory", ["nchw", "channels_last", "chunked"])
def test_cuda_matches_the_float64_definition(kind, geometry, memory):
    """The kernels on the unfolded columns (or on a channels_last input read in place, or in
    checkpointed chunks of images) against the float64 definition (<= 1e-5)."""
    torch.manual_seed(3)
    conv = _conv(kind, geometry, column_budget_mb=1e-3 if memory == "chunked" else 1024).cuda()
    x = torch.randn(4, geometry[0], geometry[6], geometry[7], device="cuda")
    if memory == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = conv(x)
    gy = torch.randn_like(y)
    gx, gp = torch.autograd.grad(y, (x, conv.func_parameter), gy)
    p = conv.func_parameter.detach().double().requires_grad_(True)
    xd = x.detach().double().requires_grad_(True)
    expected = _by_unfold(conv.double(), xd, p)
    rgx, rgp = torch.autograd.grad(expected, (xd, p), gy.double())
    for name, a, r in (("y", y, expected), ("grad_x", gx, rgx), ("grad_params", gp, rgp)):
        assert rel_l2(a, r) <= 1e-5, name


@requires_gpu
def test_compile_fullgraph_cuda():
    torch._dynamo.reset()
    torch.manual_seed(4)
    model = _small_cnn("cuda").eval()
    x = torch.randn(5, 2, 6, 6, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
