"""Benchmark of the smoothness regularisers: value + gradient through autograd.

Question: how long does `r = layer.get_hessian_regularization(); r.backward()` take, as a
user sees it (eager) and as GPU time (CUDA-graph replay), next to the memory-bandwidth
floor measured in the same run? The floor: a device copy of the parameter tensor (read P +
write grad, what the gradient kernel must move at least) plus one read of P (a sum: what
the value kernel must move at least). Target (issue 6): 2D, num_grids=26, 256x256:
eager fwd+bwd <= 0.15 ms on an H100.

Columns, per table (ms, medians):
  eager   CUDA events around one eager fwd+bwd call (grad reset to None first, as
          optimizer.zero_grad(set_to_none=True) leaves it), median over many calls
  loop    eager fwd+bwd, many calls back to back (host launch cost overlapped)
  accum   as loop, the gradient accumulating into .grad (adds an add kernel)
  graph   CUDA-graph replay of the fwd+bwd step: GPU time, no host cost
  value / grad   CUDA-graph replay of the value op alone / the gradient op alone
  floor   copy(P) + read(P) in the same run
The eager pure-PyTorch reference is timed for comparison; the original lmKAN took 0.86 ms
(torch.compile'd, docs/performance.md).

`--host-only` needs no GPU: it times the host side of the autograd path (the op's C++
autograd against a Python register_autograd wrapper of the same schema) with empty CPU
kernels, i.e. the per-call host overhead that the eager figure adds to the GPU time.

Usage: python benchmarks/bench_hessian.py [--json PATH] [--host-only]
"""
import argparse
import json
import os

import torch

import lmKAN
from lmKAN import KANLayer, LMKAN2DLayer, _reference

from _timing import cuda_graph_replay, cuda_median_ms, wall_us_per_call, warm_up_gpu

ORIGINAL_MS = {"2d_G26_256x256": 0.86}  # docs/performance.md, same H100 model


def bench(fn, reps=200, warmup=20):
    """Median milliseconds of single calls run back to back (host cost between calls shows)."""
    return cuda_median_ms(fn, reps, warmup, sync_each=False)


def bench_loop(fn, iters=50, reps=15, warmup=10):
    """Median milliseconds per call when `iters` calls run back to back (launch overlap)."""
    return cuda_median_ms(fn, reps, warmup, calls_per_sample=iters)


def time_ops_alone(param, regulariser):
    """CUDA-graph GPU time of the value op alone and of the gradient op alone."""
    with torch.no_grad():
        value = cuda_graph_replay(regulariser)
    grad_r = torch.ones((), device=param.device)
    fn = regulariser.__self__
    name = "hessian2d" if param.dim() == 4 else "second_diff1d"
    backward_op = getattr(torch.ops.lmkan, name + "_backward")
    grad = cuda_graph_replay(lambda: backward_op(grad_r, param.detach(), fn.borders))
    return bench_loop(value), bench_loop(grad)


def measure(name, param, regulariser, reference_fn=None):
    """All figures for one table. regulariser(): the layer's get_hessian_regularization."""
    dev = param.device

    def fwd():
        return regulariser()

    def step_reset():
        param.grad = None
        regulariser().backward()

    def step_accumulate():
        regulariser().backward()

    row = {"case": name, "shape": list(param.shape), "params": param.numel()}
    row["fwd_ms"] = bench_loop(fwd)
    row["fwd_bwd_ms"] = bench_loop(step_reset)
    row["fwd_bwd_single_ms"] = bench(step_reset)
    param.grad = torch.zeros_like(param)
    row["fwd_bwd_accumulate_ms"] = bench_loop(step_accumulate)
    param.grad = None
    replay = cuda_graph_replay(step_reset)
    row["fwd_bwd_graph_ms"] = bench_loop(replay)
    row["value_graph_ms"], row["grad_graph_ms"] = time_ops_alone(param, regulariser)

    # Floors from the same run: device copy (read + write P) and one read of P.
    dst = torch.empty_like(param)
    row["copy_ms"] = bench_loop(lambda: dst.copy_(param))
    row["read_ms"] = bench_loop(lambda: param.sum())
    row["floor_ms"] = row["copy_ms"] + row["read_ms"]
    row["copy_GBps"] = 2 * param.numel() * 4 / row["copy_ms"] / 1e6

    param.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    regulariser().backward()
    torch.cuda.synchronize()
    row["peak_extra_MB"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20

    if reference_fn is not None:
        def ref_step():
            param.grad = None
            reference_fn().backward()
        row["reference_eager_fwd_bwd_ms"] = bench_loop(ref_step, iters=10, reps=7)
    param.grad = None
    row["original_fwd_bwd_ms"] = ORIGINAL_MS.get(name)
    return row


def host_overhead_cpu(calls=2000, reps=7):
    """Microseconds per eager fwd+bwd of the host path alone, with empty CPU kernels.

    Registers CPU kernels for lmkan::hessian2d(_backward) that return empty tensors, and
    the same schemas under a scratch library with the Python register_autograd wrapper
    that lmKAN used before; prints both next to the floor of any backward() call
    (`q.sum().backward()` on a 4-element tensor).
    """

    def value_cpu(params, borders):
        return params.new_empty(())

    def backward_cpu(grad_r, params, borders):
        return params.new_empty(params.shape)

    impl = torch.library.Library("lmkan", "IMPL")
    impl.impl("hessian2d", value_cpu, "CPU")
    impl.impl("hessian2d_backward", backward_cpu, "CPU")
    scratch = torch.library.Library("lmkan_bench_py", "DEF")
    scratch.define("h(Tensor params, Tensor borders) -> Tensor")
    scratch.define("h_backward(Tensor grad_r, Tensor params, Tensor borders) -> Tensor")
    scratch.impl("h", value_cpu, "CPU")
    scratch.impl("h_backward", backward_cpu, "CPU")

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_r):
        params, borders = ctx.saved_tensors
        return torch.ops.lmkan_bench_py.h_backward(grad_r.contiguous(), params, borders), None

    torch.library.register_autograd("lmkan_bench_py::h", backward, setup_context=setup)

    params = torch.randn(27, 27, 2, 2, requires_grad=True)
    borders = torch.randn(27)
    tiny = torch.randn(4, requires_grad=True)

    def per_call_us(step):
        return wall_us_per_call(step, calls, reps, warmup=calls // 10)

    def cpp_step():
        params.grad = None
        torch.ops.lmkan.hessian2d(params, borders).backward()

    def python_step():
        params.grad = None
        torch.ops.lmkan_bench_py.h(params.contiguous(), borders.contiguous()).backward()

    def floor_step():
        tiny.grad = None
        tiny.sum().backward()

    rows = [("C++ autograd (this build)", per_call_us(cpp_step)),
            ("Python register_autograd (before)", per_call_us(python_step)),
            ("floor: tiny.sum().backward()", per_call_us(floor_step))]
    print(f"\nhost time per eager fwd+bwd, empty CPU kernels, us, median of {reps} x {calls}")
    for name, us in rows:
        print(f"{name:<36}{us:>8.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "bench_hessian.json"))
    parser.add_argument("--host-only", action="store_true",
                        help="time the host side of the autograd path on the CPU (no GPU)")
    args = parser.parse_args()
    warm_up_gpu()
    if args.host_only:
        host_overhead_cpu()
        return
    torch.manual_seed(0)
    info = lmKAN.backend_info()
    print(info)
    assert "hessian2d" in info.cuda_kernels, "the CUDA regulariser kernels are not compiled in"
    device_name = torch.cuda.get_device_name()
    rows = []
    for g, n_in, n_out in ((26, 256, 256), (8, 256, 256), (16, 256, 256), (42, 256, 256),
                           (64, 128, 128), (26, 1024, 1024)):
        layer = LMKAN2DLayer(g, n_in, n_out).cuda()
        p, b = layer.func_parameter, layer.borders
        name = f"2d_G{g}_{n_in}x{n_out}"
        ref = (lambda p=p, b=b: _reference.hessian2d(p, b)) if (g, n_in) == (26, 256) else None
        rows.append(measure(name, p, layer.get_hessian_regularization, ref))
        del layer
    for n in (256, 1024):
        layer = KANLayer(n, n, num_control_points=32).cuda()
        with torch.no_grad():
            layer.func_parameter.normal_()
        p, b = layer.func_parameter, layer.borders
        ref = (lambda p=p, b=b: _reference.second_diff1d(p, b)) if n == 256 else None
        rows.append(measure(f"1d_32pts_{n}x{n}", p, layer.get_hessian_regularization, ref))
        del layer

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "rows": rows}, f, indent=1)

    print(f"\n{device_name}, torch {torch.__version__}; ms, median; floor = copy(P) + read(P); "
          "target: 2d_G26_256x256 eager <= 0.15")
    head = (f"{'case':<20}{'params':>9}{'eager':>8}{'loop':>8}{'accum':>8}{'graph':>8}{'value':>8}"
            f"{'grad':>8}{'floor':>8}{'g/floor':>8}{'GB/s':>6}{'ref':>7}{'orig':>6}{'MB':>7}")
    print(head)
    for r in rows:
        ref = r.get("reference_eager_fwd_bwd_ms")
        orig = r["original_fwd_bwd_ms"]
        print(f"{r['case']:<20}{r['params'] / 1e6:>8.2f}M{r['fwd_bwd_single_ms']:>8.4f}"
              f"{r['fwd_bwd_ms']:>8.4f}{r['fwd_bwd_accumulate_ms']:>8.4f}{r['fwd_bwd_graph_ms']:>8.4f}"
              f"{r['value_graph_ms']:>8.4f}{r['grad_graph_ms']:>8.4f}{r['floor_ms']:>8.4f}"
              f"{r['fwd_bwd_graph_ms'] / r['floor_ms']:>8.2f}{r['copy_GBps']:>6.0f}"
              f"{(f'{ref:.3f}' if ref else '-'):>7}{(f'{orig:.2f}' if orig else '-'):>6}"
              f"{r['peak_extra_MB']:>7.1f}")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
