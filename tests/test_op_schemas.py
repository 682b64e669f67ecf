"""The op schemas and their fake implementations, without a GPU (the extension must be built:
CI builds it; skipped where it is not).

Each kernel op takes only the arguments its kernels use; the layer ops lmkan2d / lmkan1d carry
the backward's settings to their autograd (csrc/lmkan2d/autograd.cpp, csrc/lmkan1d/autograd.cpp).
On meta tensors the ops run their fake implementations (lmKAN/ops.py), so shapes, the C++
autograd wiring and the fakes' checks are exercised here: under torch.compile a bad call
raises the ValueError that eager raises.
"""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmKAN import _extension
from lmKAN.grids import cdf_borders

pytestmark = pytest.mark.skipif(_extension._MODULE is None,
                                reason="the CUDA extension is not built here (its schemas and "
                                       "fakes are what this file tests)")


@pytest.mark.parametrize("name,args", _extension.OP_ARGUMENTS.items(), ids=str)
def test_schema_arguments(name, args):
    """The built schemas name the arguments that the Python side passes by position
    (lmKAN._extension.OP_ARGUMENTS, which also decides whether a build is stale)."""
    schema = getattr(torch.ops.lmkan, name).default._schema
    assert tuple(a.name for a in schema.arguments) == args


def _meta_2d(g=5, n_in=6, n_out=7, batch=9, batch_last=True, grad=False):
    x = torch.empty((n_in, batch) if batch_last else (batch, n_in), device="meta",
                    requires_grad=grad)
    params = torch.empty(g + 1, g + 1, n_out, n_in // 2, device="meta", requires_grad=grad)
    return x, params, cdf_borders(g).to("meta")


def _meta_1d(g=5, n_in=6, n_out=7, batch=9, batch_last=True, grad=False):
    x = torch.empty((n_in, batch) if batch_last else (batch, n_in), device="meta",
                    requires_grad=grad)
    params = torch.empty(g + 1, n_out, n_in, device="meta", requires_grad=grad)
    return x, params, cdf_borders(g).to("meta")


@pytest.mark.parametrize("batch_last", [True, False])
def test_layer_ops_autograd_on_meta(batch_last):
    """The layer ops' C++ autograd runs the forward kernel op, then the backward kernel op
    with the saved settings: gradients of x's and params' shapes."""
    x, params, borders = _meta_2d(batch_last=batch_last, grad=True)
    y = torch.ops.lmkan.lmkan2d(x, params, borders, batch_last, 8, 256, 4, 128, True, True)
    assert y.shape == ((7, 9) if batch_last else (9, 7))
    gx, gp = torch.autograd.grad(y, (x, params), torch.empty_like(y))
    assert gx.shape == x.shape and gp.shape == params.shape

    x, params, borders = _meta_1d(batch_last=batch_last, grad=True)
    y = torch.ops.lmkan.lmkan1d(x, params, borders, False, batch_last, True)
    assert y.shape == ((7, 9) if batch_last else (9, 7))
    gx, gp = torch.autograd.grad(y, (x, params), torch.empty_like(y))
    assert gx.shape == x.shape and gp.shape == params.shape


@pytest.mark.parametrize("batch_last", [True, False])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_second_derivatives_on_meta(kind, batch_last):
    """The backward ops' own autograd (csrc/lmkan1d/autograd.cpp, csrc/lmkan2d/autograd.cpp)
    runs their derivative ops: second derivatives of x's, params' and grad_y's shapes and
    dtypes (16-bit parameters included)."""
    if kind == "1d":
        x, params, borders = _meta_1d(batch_last=batch_last, grad=True)
        y = torch.ops.lmkan.lmkan1d(x, params, borders, False, batch_last, False)
    else:
        x, params, borders = _meta_2d(batch_last=batch_last, grad=True)
        params = params.detach().to(torch.bfloat16).requires_grad_(True)
        y = torch.ops.lmkan.lmkan2d(x, params, borders, batch_last, 8, 256, 4, 128, True, True)
    gy = torch.empty_like(y).requires_grad_(True)
    gx, gp = torch.autograd.grad(y, (x, params), gy, create_graph=True)
    dx, dp, dgy = torch.autograd.grad((gx * 2).sum() + (gp * 3).sum(), (x, params, gy))
    assert dx.shape == x.shape and dp.shape == params.shape and dgy.shape == gy.shape
    assert dp.dtype == params.dtype and dx.dtype == dgy.dtype == torch.float32


def _meta_layer_call(kind):
    """x and params of a meta layer (both requiring grad) and the layer op's output."""
    if kind == "1d":
        x, params, borders = _meta_1d(grad=True)
        return x, params, torch.ops.lmkan.lmkan1d(x, params, borders, False, True, False)
    x, params, borders = _meta_2d(grad=True)
    return x, params, torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 512, False,
                                              False)


class _BackwardCalls(TorchDispatchMode):
    """Records the grad_params argument of every lmkan*_backward call below autograd."""

    def __init__(self):
        super().__init__()
        self.grad_params = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.name().startswith("lmkan::lmkan") and func.name().endswith("d_backward"):
            schema_args = func._schema.arguments
            position = [a.name for a in schema_args].index("grad_params")
            self.grad_params.append(kwargs.get("grad_params", args[position]
                                               if len(args) > position else True))
        return func(*args, **kwargs)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_backward_asks_for_grad_params_only_when_needed_on_meta(kind):
    """The layers' first backward computes grad_params only where the engine needs it:
    autograd.grad(y, x) (the first backward of a force loss) calls the backward op with
    grad_params=False; then grad_x of the forward on ggp in its derivatives is not called at
    all (no upstream for the unused output); autograd.grad(y, (x, params)) asks for it."""
    x, params, y = _meta_layer_call(kind)
    calls = _BackwardCalls()
    with calls:
        gx = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)[0]
        dp = torch.autograd.grad(gx.sum(), params)[0]
        torch.autograd.grad(y, (x, params), torch.ones_like(y))
    assert dp.shape == params.shape
    assert calls.grad_params == [False, True]


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_third_derivatives_raise_on_meta(kind):
    """A graph of second derivatives (create_graph=True once more) is refused by name."""
    x, params, y = _meta_layer_call(kind)
    gx = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)[0]
    second = torch.autograd.grad(gx, params, torch.ones_like(gx), retain_graph=True)[0]
    assert second.shape == params.shape
    with pytest.raises(RuntimeError, match=f"lmkan{kind}_backward: third derivatives"):
        torch.autograd.grad(gx, params, torch.ones_like(gx), create_graph=True)


def test_2d_slope_fakes_check_weights():
    x, params, borders = _meta_2d()
    with pytest.raises(ValueError, match="weights must have x's shape"):
        torch.ops.lmkan.lmkan2d_slope_forward(x, x[:, :3], params, borders, True)


@pytest.mark.parametrize("params_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_table_dtype_on_meta(params_dtype):
    """table_dtype reaches both kernel ops through the autograd; grad_params has params'
    dtype; a table or params dtype the kernels do not take is a TypeError, as in eager."""
    x, params, borders = _meta_2d(grad=True)
    params = params.detach().to(params_dtype).requires_grad_(True)
    y = torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 512, False, False,
                                torch.bfloat16)
    assert y.dtype == torch.float32
    gx, gp = torch.autograd.grad(y, (x, params), torch.empty_like(y))
    assert gx.dtype == torch.float32 and gp.dtype == params_dtype
    with pytest.raises(TypeError, match="table_dtype must be float32, float16 or bfloat16"):
        torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 256, torch.float64)
    with pytest.raises(TypeError, match="params must be float32, float16 or bfloat16"):
        torch.ops.lmkan.lmkan2d_forward(x, params.double(), borders, True, 8, 256)


def test_layer_ops_in_inference_mode_on_meta():
    """Below autograd the layer ops run the forward kernel op alone."""
    with torch.inference_mode():
        y = torch.ops.lmkan.lmkan2d(*_meta_2d(), True, 8, 256, 8, 512, False, False)
        assert y.shape == (7, 9)
        y = torch.ops.lmkan.lmkan1d(*_meta_1d(), True, True, False)
        assert y.shape == (7, 9)


def test_ops_take_images_on_meta():
    """The forward, backward and layer ops take batch-last images [N, N_in, L] and return
    [N, N_out, L] (csrc/common/images.h; grad_x like x) in every grad mode: recording a graph,
    not recording one, in inference mode."""
    _, params, borders = _meta_2d()
    x = torch.empty(4, 6, 9, device="meta")
    gy = torch.empty(4, 7, 9, device="meta")
    assert torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 256).shape == (4, 7, 9)
    _, params1, borders1 = _meta_1d()
    assert torch.ops.lmkan.lmkan1d_forward(x, params1, borders1, False, True).shape == (4, 7, 9)
    gx, gp = torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, 8, 256, False)
    assert gx.shape == x.shape and gp.shape == params.shape
    gx, gp = torch.ops.lmkan.lmkan1d_backward(gy, x, params1, borders1, False, True)
    assert gx.shape == x.shape and gp.shape == params1.shape
    for grad in (True, False, "inference"):
        p2 = params.detach().requires_grad_(grad is True)
        p1 = params1.detach().requires_grad_(grad is True)
        mode = torch.inference_mode() if grad == "inference" else contextlib.nullcontext()
        with mode:
            y2 = torch.ops.lmkan.lmkan2d(x, p2, borders, True, 8, 256, 8, 512, False, False)
            y1 = torch.ops.lmkan.lmkan1d(x, p1, borders1, False, True, False)
        assert y2.shape == (4, 7, 9) and y1.shape == (4, 7, 9)
        assert y2.requires_grad == y1.requires_grad == (grad is True)
    with pytest.raises(ValueError, match=r"a 3-D x \(\[N, N_in, L\] images\) is batch-last"):
        torch.ops.lmkan.lmkan2d(x, params, borders, False, 8, 256, 8, 512, False, False)


# (description, call on meta tensors, expected message) for each check of the fakes; the
# messages are the kernels' own (csrc/common/checks.h, csrc/lmkan2d/forward.cpp,
# csrc/lmkan1d/ops.cpp).
def _bad_2d(**changes):
    x, params, borders = _meta_2d()
    args = dict(x=x, params=params, borders=borders, batch_last=True, tile_size=8, block_size=256)
    args.update(changes)
    return lambda: torch.ops.lmkan.lmkan2d_forward(*args.values())


def _bad_1d(**changes):
    x, params, borders = _meta_1d()
    args = dict(x=x, params=params, borders=borders, uniform_grid=False, batch_last=True)
    args.update(changes)
    return lambda: torch.ops.lmkan.lmkan1d_forward(*args.values())


BAD_CALLS = [
    ("2d images features", _bad_2d(x=torch.empty(6, 9, 1, device="meta")),
     "x has 9 input features"),
    ("2d tile 3", _bad_2d(tile_size=3), "tile_size must be 4, 8 or 16, got 3"),
    ("2d block 48", _bad_2d(block_size=48), "block_size must be a multiple of 32"),
    ("2d block 2048", _bad_2d(block_size=2048), "block_size must be a multiple of 32"),
    ("2d params not square", _bad_2d(params=torch.empty(6, 5, 7, 3, device="meta")),
     "params must be [G+1, G+1, N_out, N_in/2]"),
    ("2d borders", _bad_2d(borders=torch.empty(9, device="meta")),
     "borders must have G+1=6 entries, got 9"),
    ("2d features", _bad_2d(x=torch.empty(8, 9, device="meta")),
     "x has 8 input features but params expects input_dim=2*3=6"),
    ("2d batch-first features", _bad_2d(batch_last=False), "x has 9 input features"),
    ("1d params 2-D", _bad_1d(params=torch.empty(6, 7, device="meta")),
     "params must have 3 dimensions"),
    ("1d borders", _bad_1d(borders=torch.empty(4, device="meta")),
     "borders must have G+1 = 6 entries (params.size(0)), got 4"),
    ("1d features", _bad_1d(x=torch.empty(5, 9, device="meta")),
     "x must have 6 input features (params.size(2)) along dim 0"),
    ("1d images features", _bad_1d(x=torch.empty(2, 5, 9, device="meta")),
     "x must have 6 input features (params.size(2)) along dim 1"),
]
# x's dimensions, both forward ops: 2-D, or 3-D images that are batch-last
for _kind, _bad in (("2d", _bad_2d), ("1d", _bad_1d)):
    BAD_CALLS += [
        (f"{_kind} x 4-D", _bad(x=torch.empty(2, 6, 9, 1, device="meta")),
         "x must have 2 dimensions ([N_in, B] or [B, N_in]) or 3 ([N, N_in, L]"),
        (f"{_kind} images batch-first",
         _bad(x=torch.empty(2, 6, 9, device="meta"), batch_last=False),
         "a 3-D x ([N, N_in, L] images) is batch-last"),
    ]


@pytest.mark.parametrize("what,call,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_fake_checks_raise_what_the_kernels_raise(what, call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value), str(info.value)


# The backward ops' grad_y and the regularisers' tables and grad_r: (description, call on
# `device`, exception, message), the messages the kernels' host code raises
# (csrc/common/checks.h check_grad_y, csrc/regularizers/common.cu check_table and
# check_grad_r, hessian2d_ops.cpp check_tables). x is [6, 9] (6 features, 9 samples), or
# images [2, 6, 9]; 7 outputs, so grad_y is [7, 9], [9, 7] batch-first, [2, 7, 9] images.
def backward_and_regulariser_bad_calls(device):
    ops = torch.ops.lmkan
    g = 5
    borders = cdf_borders(g).to(device)
    rows = torch.randn(6, 9, device=device)
    images = torch.randn(2, 6, 9, device=device)
    p2 = torch.randn(g + 1, g + 1, 7, 3, device=device)
    p1 = torch.randn(g + 1, 7, 6, device=device)

    def gy(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device).to(dtype)

    def bwd2d(grad_y, x=rows, batch_last=True, table_dtype=None):
        return lambda: ops.lmkan2d_backward(grad_y, x, p2, borders, batch_last, 8, 256, False,
                                            False, table_dtype)

    r = "lmkan2d_backward: grad_y must have shape"
    return [
        ("2d backward rows", bwd2d(gy(7, 8)), ValueError, f"{r} [N_out, B] = [7, 9], got [7, 8]"),
        ("2d backward batch-first", bwd2d(gy(7, 9), rows.t().contiguous(), False), ValueError,
         f"{r} [B, N_out] = [9, 7], got [7, 9]"),
        ("2d backward images", bwd2d(gy(2, 7, 8), images), ValueError,
         "lmkan2d_backward: grad_y of images x [2, 6, 9] must have shape [N, N_out, L] = "
         "[2, 7, 9], got [2, 7, 8]"),
        ("2d backward 3-D grad_y of rows", bwd2d(gy(7, 9, 1)), ValueError,
         "grad_y must have 2 dimensions, got shape [7, 9, 1]"),
        ("2d backward float64 grad_y", bwd2d(gy(7, 9, dtype=torch.float64)), TypeError,
         "grad_y must be float32, float16 or bfloat16, got Double"),
        # the kernels' order: table_dtype before grad_y in the layer ops, after it in
        # lmkan2d_slope_grad_x; in lmkan1d_slope_grad_params grad_y before the weights
        ("2d backward table_dtype first", bwd2d(gy(7, 8), table_dtype=torch.float64), TypeError,
         "lmkan2d_backward: table_dtype must be float32, float16 or bfloat16, got Double"),
        ("2d slope grad_x grad_y first", lambda: ops.lmkan2d_slope_grad_x(
            gy(7, 8), rows, rows, p2, borders, True, torch.float64), ValueError,
         "lmkan2d_slope_grad_x: grad_y must have shape [N_out, B] = [7, 9], got [7, 8]"),
        ("1d slope grad_params grad_y first", lambda: ops.lmkan1d_slope_grad_params(
            gy(7, 8), rows, rows[:, :8], p1, borders, False, True), ValueError,
         "lmkan1d_slope_grad_params: grad_y must have shape [N_out, B] = [7, 9], got [7, 8]"),
        ("2d slope grad_x", lambda: ops.lmkan2d_slope_grad_x(gy(6, 9), rows, rows, p2, borders,
                                                             True), ValueError,
         "lmkan2d_slope_grad_x: grad_y must have shape [N_out, B] = [7, 9], got [6, 9]"),
        ("2d slope grad_params", lambda: ops.lmkan2d_slope_grad_params(gy(7, 10), rows, rows, p2,
                                                                       borders, True),
         ValueError, "lmkan2d_slope_grad_params: grad_y must have shape [N_out, B] = [7, 9], "
                     "got [7, 10]"),
        ("1d backward", lambda: ops.lmkan1d_backward(gy(7, 8), rows, p1, borders, False, True),
         ValueError, "lmkan1d_backward: grad_y must have shape [N_out, B] = [7, 9], got [7, 8]"),
        ("1d backward images", lambda: ops.lmkan1d_backward(gy(2, 8, 9), images, p1, borders,
                                                            False, True), ValueError,
         "lmkan1d_backward: grad_y of images x [2, 6, 9] must have shape [N, N_out, L] = "
         "[2, 7, 9], got [2, 8, 9]"),
        ("1d slope grad_params", lambda: ops.lmkan1d_slope_grad_params(
            gy(9, 7), rows, rows, p1, borders, False, True), ValueError,
         "lmkan1d_slope_grad_params: grad_y must have shape [N_out, B] = [7, 9], got [9, 7]"),
        ("hessian2d 3-D params", lambda: ops.hessian2d(p2[0], borders), ValueError,
         "params must have shape [G+1, G+1, N_out, N_in/2], got shape [6, 7, 3]"),
        ("hessian2d float64", lambda: ops.hessian2d(p2.double(), borders), TypeError,
         "params must be float32, got Double"),
        ("hessian2d two nodes", lambda: ops.hessian2d(p2[:2, :2], borders[:2]), ValueError,
         "borders must hold G+1 nodes with 3 <= G+1 <= 4000, got 2"),
        ("hessian2d side", lambda: ops.hessian2d(p2[:, :5].contiguous(), borders), ValueError,
         "params must have shape [G+1, G+1, N_out, N_in/2] with G+1 = borders.size(0) = 6, got "
         "shape [6, 5, 7, 3]"),
        ("hessian2d grad_r", lambda: ops.hessian2d_backward(gy(2), p2, borders), ValueError,
         "grad_r must be a 0-dim tensor (one element), got shape [2]"),
        ("second_diff1d 4-D params", lambda: ops.second_diff1d(p2, borders), ValueError,
         "params must have shape [G+1, N_out, N_in], got shape [6, 6, 7, 3]"),
        ("second_diff1d grad_r", lambda: ops.second_diff1d_backward(gy(1, 2), p1, borders),
         ValueError, "grad_r must be a 0-dim tensor (one element), got shape [1, 2]"),
        ("hessian2d_sum lists", lambda: ops.hessian2d_sum([p2, p2], [borders]), ValueError,
         "hessian2d_sum: params and borders must be lists of the same, non-zero length, got 2 "
         "and 1"),
        ("hessian2d_sum table", lambda: ops.hessian2d_sum([p2, p2[:, :5].contiguous()],
                                                          [borders, borders]), ValueError,
         "with G+1 = borders.size(0) = 6, got shape [6, 5, 7, 3]"),
        ("hessian2d_sum_backward grad_r", lambda: ops.hessian2d_sum_backward(
            gy(3), [p2], [borders]), ValueError,
         "grad_r must be a 0-dim tensor (one element), got shape [3]"),
    ]


META_BAD_CALLS = backward_and_regulariser_bad_calls("meta")


@pytest.mark.parametrize("what,call,error,message", META_BAD_CALLS,
                         ids=[c[0] for c in META_BAD_CALLS])
def test_backward_and_regulariser_fakes_check_their_arguments(what, call, error, message):
    """The fakes check grad_y, the tables and grad_r as the kernels' host code does, so a
    compiled call of a backward op or a regulariser with a bad argument fails at trace time
    with eager's error (tests/test_cuda_op_errors.py runs the same calls on the GPU against
    the same messages)."""
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value), str(info.value)


def test_compiled_bad_call_raises_value_error():
    """torch.compile traces the fakes: a wrong feature count raises ValueError at trace time,
    as the eager kernel does (not a shape error deep inside the compiled graph)."""
    torch._dynamo.reset()
    x, params, borders = _meta_2d()
    fn = torch.compile(lambda x, p, b: torch.ops.lmkan.lmkan2d_forward(x, p, b, True, 8, 256),
                       fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception) as info:
        fn(torch.empty(8, 9, device="meta"), params, borders)
    assert "x has 8 input features" in str(info.value)


def test_kernel_ops_on_cpu_tensors_point_to_the_cpu_path():
    g = 5
    x, params, borders = torch.randn(4, 7), torch.randn(g + 1, g + 1, 3, 2), cdf_borders(g)
    calls = {
        "lmkan2d_forward": lambda: torch.ops.lmkan.lmkan2d_forward(x, params, borders, True, 8, 256),
        "lmkan2d": lambda: torch.ops.lmkan.lmkan2d(x, params, borders, True, 8, 256, 8, 256,
                                                   False, False),
        "lmkan1d_forward": lambda: torch.ops.lmkan.lmkan1d_forward(
            x, torch.randn(g + 1, 3, 4), borders, False, True),
        "hessian2d": lambda: torch.ops.lmkan.hessian2d(params, borders),
    }
    for name, call in calls.items():
        with pytest.raises(NotImplementedError, match=r"CUDA tensors only.*pure-PyTorch reference"):
            call()


def test_hessian2d_sum_autograd_on_meta():
    """hessian2d_sum's C++ autograd (csrc/regularizers/autograd.cpp) over a list of tables of
    different num_grids: a 0-dim value, one gradient per table of its shape, none for the
    borders."""
    params = [torch.empty(6, 6, 3, 2, device="meta", requires_grad=True),
              torch.empty(11, 11, 4, 5, device="meta", requires_grad=True)]
    borders = [cdf_borders(5).to("meta"), cdf_borders(10).to("meta")]
    for args in ((), (0.25,)):  # weight: default, given
        r = torch.ops.lmkan.hessian2d_sum(params, borders, *args)
        assert r.shape == () and r.requires_grad
        grads = torch.autograd.grad(r, params)
        assert [g.shape for g in grads] == [p.shape for p in params]


def test_extension_lacking_an_op_counts_as_stale(monkeypatch):
    """An extension built from an older source tree (an op not registered, or registered with
    other arguments) is not used: _load reports it as stale, naming the op and how to
    rebuild."""
    monkeypatch.setattr(_extension, "OP_ARGUMENTS",
                        {**_extension.OP_ARGUMENTS, "no_such_op": ("x",),
                         "hessian2d_sum": ("params", "borders")})
    module, reason, stale = _extension._load()
    assert module is None and stale
    assert "no_such_op (missing)" in reason and "older lmKAN source" in reason
    assert ("hessian2d_sum (arguments params, borders, weight; expected params, borders)"
            in reason) and "pip install" in reason
