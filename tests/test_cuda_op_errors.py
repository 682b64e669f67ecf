"""Every argument check of every CUDA op raises the documented Python exception, in process.

The ops check their arguments in C++ (csrc/common/checks.h and each op's host code);
TORCH_CHECK_VALUE raises ValueError and TORCH_CHECK_TYPE TypeError. These run in the test
process itself: an extension whose C++ exceptions do not unwind (one linked against a static
libstdc++, which setup.py now refuses to build) would end the session here, loudly.
"""
import re

import pytest
import torch

from lmKAN.grids import cdf_borders

from conftest import assert_cuda_kernel, requires_gpu, run_python

pytestmark = requires_gpu

G = 5  # a valid 2D / 1D layer: num_grids 5, 6 inputs (3 pairs), 5 outputs, batch 31


def _valid_2d():
    return (torch.randn(6, 31, device="cuda"), torch.randn(G + 1, G + 1, 5, 3, device="cuda"),
            cdf_borders(G, device="cuda"))


def _valid_1d():
    return (torch.randn(6, 31, device="cuda"), torch.randn(G + 1, 5, 6, device="cuda"),
            cdf_borders(G, device="cuda"))


def _fwd2d(x, params, borders, batch_last=True, tile=8, block=128):
    return torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block)


def _bwd2d(gy, x, params, borders, batch_last=True, tile=8, block=128):
    return torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, batch_last, tile, block, False,
                                            False)


def _fwd1d(x, params, borders, batch_last=True):
    return torch.ops.lmkan.lmkan1d_forward(x, params, borders, False, batch_last)


def _bwd1d(gy, x, params, borders, batch_last=True):
    return torch.ops.lmkan.lmkan1d_backward(gy, x, params, borders, False, batch_last, False)


def _zeros(*shape):
    """A float32 CUDA tensor of any shape that takes one element of memory."""
    return torch.zeros((), device="cuda").expand(*shape)


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


# (case id, call, exception, message pattern): each call breaks exactly one rule.
CASES_2D = [
    ("x-on-cpu", lambda x, p, b: _fwd2d(x.cpu(), p, b), ValueError, "x must be a CUDA tensor"),
    ("x-float64", lambda x, p, b: _fwd2d(x.double(), p, b), TypeError, "x must be float32"),
    ("params-float64", lambda x, p, b: _fwd2d(x, p.double(), b), TypeError,
     "params must be float32, float16 or bfloat16"),
    ("table-float64", lambda x, p, b: torch.ops.lmkan.lmkan2d_forward(x, p, b, True, 8, 256,
                                                                     torch.float64),
     TypeError, "table_dtype must be float32, float16 or bfloat16"),
    ("borders-on-cpu", lambda x, p, b: _fwd2d(x, p, b.cpu()), ValueError,
     "borders must be a CUDA tensor"),
    ("x-4d", lambda x, p, b: _fwd2d(x[None, None], p, b), ValueError,
     r"x must have 2 dimensions \(\[N_in, B\] or \[B, N_in\]\) or 3"),
    ("x-3d-batch-first", lambda x, p, b: _fwd2d(x[None], p, b, batch_last=False), ValueError,
     r"a 3-D x \(\[N, N_in, L\] images\) is batch-last"),
    ("params-3d", lambda x, p, b: _fwd2d(x, p[0], b), ValueError, "params must have 4 dimensions"),
    ("borders-2d", lambda x, p, b: _fwd2d(x, p, b[None]), ValueError,
     "borders must have 1 dimensions"),
    ("tile-3", lambda x, p, b: _fwd2d(x, p, b, tile=3), ValueError,
     r"tile_size must be 4, 8 or 16, got 3"),
    ("block-48", lambda x, p, b: _fwd2d(x, p, b, block=48), ValueError,
     r"block_size must be a multiple of 32 in \[32, 1024\], got 48"),
    ("block-2048", lambda x, p, b: _fwd2d(x, p, b, block=2048), ValueError,
     r"block_size must be a multiple of 32 in \[32, 1024\], got 2048"),
    ("params-not-square", lambda x, p, b: _fwd2d(x, torch.randn(G + 1, G + 2, 5, 3, device="cuda"), b),
     ValueError, r"params must be \[G\+1, G\+1, N_out, N_in/2\] with G >= 3"),
    ("num-grids-2", lambda x, p, b: _fwd2d(x, torch.randn(3, 3, 5, 3, device="cuda"),
                                           cdf_borders(2, device="cuda")),
     ValueError, r"with G >= 3, got shape \[3, 3, 5, 3\]"),
    ("borders-length", lambda x, p, b: _fwd2d(x, p, cdf_borders(G + 1, device="cuda")), ValueError,
     r"borders must have G\+1=6 entries, got 7"),
    ("input-features", lambda x, p, b: _fwd2d(torch.randn(8, 31, device="cuda"), p, b), ValueError,
     r"x has 8 input features but params expects input_dim=2\*3=6"),
    ("input-features-batch-first",
     lambda x, p, b: _fwd2d(torch.randn(31, 8, device="cuda"), p, b, batch_last=False), ValueError,
     r"x has 8 input features"),
    ("output-dim-0", lambda x, p, b: _fwd2d(x, p[:, :, :0], b), ValueError,
     "output_dim must be >= 1, got 0"),
    # sizes the kernels cannot index, refused before any launch (expanded views: no memory)
    ("zero-pairs", lambda x, p, b: _fwd2d(x[:0], p[..., :0], b), ValueError,
     r"params must hold at least one input pair \(N_in/2 >= 1\), got shape \[6, 6, 5, 0\]"),
    ("backward-zero-pairs",
     lambda x, p, b: _bwd2d(torch.randn(5, 31, device="cuda"), x[:0], p[..., :0], b), ValueError,
     "lmkan2d_backward: params must hold at least one input pair"),
    ("num-grids-4000", lambda x, p, b: _fwd2d(x, _zeros(4001, 4001, 5, 3), cdf_borders(4000, device="cuda")),
     ValueError, r"num_grids must be at most 3999 \(the kernels' table offsets are 32-bit\), got 4000"),
    ("output-dim-2^31", lambda x, p, b: _fwd2d(x, _zeros(G + 1, G + 1, 2 ** 31, 3), b), ValueError,
     r"output_dim and input_dim/2 must be below 2\^31, got params shape \[6, 6, 2147483648, 3\]"),
    ("backward-tile-16-block-40",
     lambda x, p, b: _bwd2d(torch.randn(5, 31, device="cuda"), x, p, b, tile=16, block=40),
     ValueError, "lmkan2d_backward: block_size must be a multiple of 32"),
    ("backward-grad-y-shape", lambda x, p, b: _bwd2d(torch.randn(5, 30, device="cuda"), x, p, b),
     ValueError, r"lmkan2d_backward: grad_y must have shape \[N_out, B\] = \[5, 31\], got \[5, 30\]"),
    ("backward-grad-y-batch-first",
     lambda x, p, b: _bwd2d(torch.randn(5, 31, device="cuda"), x.t().contiguous(), p, b,
                            batch_last=False),
     ValueError, r"grad_y must have shape \[B, N_out\] = \[31, 5\], got \[5, 31\]"),
    ("backward-grad-y-float64", lambda x, p, b: _bwd2d(torch.randn(5, 31, device="cuda").double(), x, p, b),
     TypeError, "grad_y must be float32"),
    ("backward-grad-y-1d", lambda x, p, b: _bwd2d(torch.randn(155, device="cuda"), x, p, b),
     ValueError, "grad_y must have 2 dimensions"),
]


CASES_1D = [
    ("x-on-cpu", lambda x, p, b: _fwd1d(x.cpu(), p, b), ValueError, "x must be a CUDA tensor"),
    ("params-float64", lambda x, p, b: _fwd1d(x, p.double(), b), TypeError,
     "params must be float32, float16 or bfloat16"),
    ("table-float64", lambda x, p, b: torch.ops.lmkan.lmkan1d_forward(x, p, b, False, True,
                                                                     torch.float64),
     TypeError, "table_dtype must be float32, float16 or bfloat16"),
    ("params-2d", lambda x, p, b: _fwd1d(x, p[0], b), ValueError, "params must have 3 dimensions"),
    ("one-node-row", lambda x, p, b: _fwd1d(x, p[:1], b[:1]), ValueError,
     r"params must have at least 2 node rows \(G\+1\)"),
    ("borders-length", lambda x, p, b: _fwd1d(x, p, cdf_borders(G + 2, device="cuda")), ValueError,
     r"borders must have G\+1 = 6 entries \(params.size\(0\)\), got 8"),
    ("input-features", lambda x, p, b: _fwd1d(torch.randn(7, 31, device="cuda"), p, b), ValueError,
     r"x must have 6 input features \(params.size\(2\)\) along dim 0, got shape \[7, 31\]"),
    ("zero-inputs", lambda x, p, b: _fwd1d(x[:0], p[..., :0], b), ValueError,
     r"params must hold at least one output and one input \(\[G\+1, N_out, N_in\]\), got shape \[6, 5, 0\]"),
    ("zero-outputs", lambda x, p, b: _fwd1d(x, p[:, :0], b), ValueError,
     "params must hold at least one output and one input"),
    ("outputs-2^31", lambda x, p, b: _fwd1d(x, _zeros(G + 1, 2 ** 31, 6), b), ValueError,
     r"params dims must be below 2\^31, got shape \[6, 2147483648, 6\]"),
    ("too-many-grids", lambda x, p, b: _fwd1d(x, torch.randn(4001, 5, 6, device="cuda"),
                                              torch.linspace(-2, 2, 4001, device="cuda")),
     ValueError, r"lmkan1d forward: num_grids=4000 needs \d+ bytes of shared memory per block"),
    ("backward-grad-y-shape", lambda x, p, b: _bwd1d(torch.randn(4, 31, device="cuda"), x, p, b),
     ValueError, r"lmkan1d_backward: grad_y must have shape \[N_out, B\] = \[5, 31\], got \[4, 31\]"),
    ("backward-grad-y-on-cpu", lambda x, p, b: _bwd1d(torch.randn(5, 31), x, p, b), ValueError,
     "grad_y must be a CUDA tensor"),
    ("backward-too-many-grids",
     lambda x, p, b: _bwd1d(torch.randn(5, 31, device="cuda"), x, torch.randn(4001, 5, 6, device="cuda"),
                            torch.linspace(-2, 2, 4001, device="cuda")),
     ValueError, r"lmkan1d backward \(dx\): num_grids=4000 needs \d+ bytes"),
]


def _b8():
    return cdf_borders(8, device="cuda")


def _p2(*shape):
    return torch.randn(*shape, device="cuda")


CASES_REGULARIZERS = [
    ("hessian-params-shape", lambda: torch.ops.lmkan.hessian2d(_p2(9, 8, 2, 2), _b8()), ValueError,
     r"params must have shape .* with G\+1 = borders.size\(0\) = 9, got shape \[9, 8, 2, 2\]"),
    ("hessian-params-dims", lambda: torch.ops.lmkan.hessian2d(_p2(9, 2, 2), _b8()), ValueError,
     r"params must have shape .*, got shape \[9, 2, 2\]"),
    ("second-diff-params-dims", lambda: torch.ops.lmkan.second_diff1d(_p2(9, 8, 2, 2), _b8()),
     ValueError, "params must have shape"),
    ("hessian-too-few-nodes", lambda: torch.ops.lmkan.hessian2d(_p2(2, 2, 2, 2), _b8()[:2]),
     ValueError, r"borders must hold G\+1 nodes with 3 <= G\+1 <= 4000, got 2"),
    ("hessian-borders-on-cpu", lambda: torch.ops.lmkan.hessian2d(_p2(9, 9, 2, 2), _b8().cpu()),
     ValueError, "borders must be a CUDA tensor"),
    ("hessian-params-float64", lambda: torch.ops.lmkan.hessian2d(_p2(9, 9, 2, 2).double(), _b8()),
     TypeError, "params must be float32"),
    ("hessian-backward-grad-r", lambda: torch.ops.lmkan.hessian2d_backward(
        torch.ones(2, device="cuda"), _p2(9, 9, 2, 2), _b8()), ValueError,
     r"grad_r must be a 0-dim tensor \(one element\), got shape \[2\]"),
    ("second-diff-backward-grad-r-cpu", lambda: torch.ops.lmkan.second_diff1d_backward(
        torch.ones(()), _p2(9, 2, 2), _b8()), ValueError, "grad_r must be a CUDA tensor"),
    ("second-diff-borders-cpu", lambda: torch.ops.lmkan.second_diff1d(_p2(9, 2, 2), _b8().cpu()),
     ValueError, "borders must be a CUDA tensor"),
]

# (op family, its kernel, valid arguments to break) for each table above
FAMILIES = [("lmkan2d", "lmkan2d_forward", _valid_2d, CASES_2D),
            ("lmkan1d", "lmkan1d_forward", _valid_1d, CASES_1D),
            ("regularizer", "hessian2d", tuple, CASES_REGULARIZERS)]
CASES = [(kernel, valid, *case) for _, kernel, valid, table in FAMILIES for case in table]


@pytest.mark.parametrize("case", CASES, ids=[f"{family}-{case[0]}" for family, _, _, table in FAMILIES
                                             for case in table])
def test_op_errors(case):
    kernel, valid, _, call, exc, pattern = case
    assert_cuda_kernel(kernel)
    with pytest.raises(exc, match=pattern):
        call(*valid())
    torch.cuda.synchronize()  # nothing was launched with the bad arguments


def test_max_num_grids_op_errors(monkeypatch):
    assert_cuda_kernel("lmkan2d_forward")
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match="tile_size must be 4, 8 or 16, got 12"):
        torch.ops.lmkan.lmkan2d_max_num_grids(12, "forward", 0)
    with pytest.raises(ValueError, match="mode must be 'forward', .* got 'sideways'"):
        torch.ops.lmkan.lmkan2d_max_num_grids(8, "sideways", 0)
    for op in (lambda i: torch.ops.lmkan.lmkan2d_max_num_grids(8, "forward", i),
               lambda i: torch.ops.lmkan.lmkan1d_max_num_grids(i)):
        for index in (-1, count):
            with pytest.raises(ValueError, match=rf"device_index must be in \[0, {count}\), got {index}"):
                op(index)
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", "99k")
    with pytest.raises(ValueError, match=r"LMKAN_SMEM_BUDGET_KB must be an integer number of KiB "
                                         r"in \[16, 1024\] .* got '99k'"):
        torch.ops.lmkan.lmkan1d_max_num_grids(0)
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", "8")
    with pytest.raises(ValueError, match="got '8'"):
        torch.ops.lmkan.lmkan2d_max_num_grids(8, "forward", 0)


# A sorted 2D backward (64 outputs: the runs kernel and its cell sort), in a fresh process
_SORTED_BACKWARD = """
import torch
from lmKAN.grids import cdf_borders
x = torch.randn(6, 4096, device="cuda")
params = torch.randn(9, 9, 64, 3, device="cuda")
gy = torch.randn(64, 4096, device="cuda")
dx, dp = torch.ops.lmkan.lmkan2d_backward(gy, x, params, cdf_borders(8, device="cuda"), True, 8,
                                          256, True, False)
torch.cuda.synchronize()
print("ok", dx.isfinite().all().item(), dp.isfinite().all().item())
"""


@pytest.mark.parametrize("name, value, pattern", [
    ("LMKAN_RUN_CHUNK_MB", "24MB",
     r"LMKAN_RUN_CHUNK_MB must be an integer number of MiB in \[1, 4096\], got '24MB'"),
    ("LMKAN_RUN_CHUNK_MB", "0", r"LMKAN_RUN_CHUNK_MB must be .* got '0'"),
    ("LMKAN_BUCKET_STAGED", "off",
     r"LMKAN_BUCKET_STAGED must be an integer in \[0, 1\], got 'off'"),
    ("LMKAN_RUN_CHUNK_MB", "1", None), ("LMKAN_BUCKET_STAGED", "0", None),
    ("LMKAN_RUN_CHUNK_MB", "", None),
])
def test_measurement_knobs(name, value, pattern):
    """The knobs that the sorted backward reads once per process (README, "Performance")
    raise ValueError for a malformed value, naming it, rather than falling back silently;
    valid and empty values run. A fresh interpreter each: the value is kept after the first
    read."""
    assert_cuda_kernel("lmkan2d_backward")
    run = run_python(_SORTED_BACKWARD, timeout=300, env={name: value})
    if pattern is None:
        assert run.returncode == 0 and run.stdout.split() == ["ok", "True", "True"], run.stderr
    else:
        assert run.returncode != 0 and re.search("ValueError: " + pattern, run.stderr), run.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (tensors on different devices)")
def test_tensors_on_two_devices():
    x, params, borders = _valid_2d()
    with pytest.raises(ValueError, match="x is on cuda:0 but params is on cuda:1"):
        _fwd2d(x, params.to("cuda:1"), borders)
    x, params, borders = _valid_1d()
    with pytest.raises(ValueError, match="x is on cuda:0 but borders is on cuda:1"):
        _fwd1d(x, params, borders.to("cuda:1"))


def _fake_bad_calls():
    from test_op_schemas import backward_and_regulariser_bad_calls
    return backward_and_regulariser_bad_calls


FAKE_CASE_IDS = [c[0] for c in _fake_bad_calls()("meta")]


@pytest.mark.parametrize("index", range(len(FAKE_CASE_IDS)), ids=FAKE_CASE_IDS)
def test_kernels_raise_what_the_fakes_raise(index):
    """The backward ops' grad_y checks and the regularisers' table and grad_r checks: the
    calls that tests/test_op_schemas.py makes on meta tensors (the fakes), here on CUDA
    tensors (the kernels' host code), with the same exception and message."""
    what, call, error, message = _fake_bad_calls()("cuda")[index]
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value), (what, str(info.value))
