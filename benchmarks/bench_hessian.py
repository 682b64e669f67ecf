"""Benchmark of the smoothness regularisers: value + gradient through autograd.

Question: how long does `r = layer.get_hessian_regularization(); r.backward()` take, next
to the memory-bandwidth floor measured in the same run? The floor: a device copy of the
parameter tensor (read P + write grad, what the gradient kernel must move at least) plus
one read of P (a sum: what the value kernel must move at least).

Rows: the 2D regulariser at num_grids=26, 256x256 (params [27, 27, 256, 128], 23.9M) and a
few other num_grids; the 1D regulariser at a KANLayer(256, 256, num_control_points=32).
Each fwd+bwd figure: eager (CUDA events via triton.testing.do_bench if present, median)
with the gradient reset to None every step (optimizer.zero_grad(set_to_none=True) style),
the same with the gradient accumulating into .grad (adds a torch add kernel), and a
CUDA-graph replay of the step (no CPU launch cost). The eager pure-PyTorch reference is
timed for comparison; the original lmKAN took 0.86 ms (torch.compile'd, PERFORMANCE.md).

Usage: python benchmarks/bench_hessian.py [--json PATH]
"""
import argparse
import json
import os
import statistics

import torch

import lmKAN
from lmKAN import KANLayer, LMKAN2DLayer, _reference

ORIGINAL_MS = {"2d_G26_256x256": 0.86}  # PERFORMANCE.md, same H100 model


def bench(fn, reps=200, warmup=20):
    """Median milliseconds of fn() over reps, CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        times.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in times)


def bench_loop(fn, iters=50, reps=15, warmup=10):
    """Median milliseconds per call when `iters` calls run back to back (launch overlap)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def graph_step(step):
    """Capture step() in a CUDA graph; return the replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


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
    replay = graph_step(step_reset)
    row["fwd_bwd_graph_ms"] = bench_loop(replay)

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "bench_hessian.json"))
    args = parser.parse_args()
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

    print(f"\n{device_name}, torch {torch.__version__}; ms, median; floor = copy(P) + read(P)")
    head = (f"{'case':<20}{'params':>10}{'fwd':>8}{'fwd+bwd':>9}{'single':>8}{'accum':>8}"
            f"{'graph':>8}{'floor':>8}{'copy':>8}{'GB/s':>7}{'ref':>8}{'orig':>6}{'MB':>7}")
    print(head)
    for r in rows:
        ref = r.get("reference_eager_fwd_bwd_ms")
        orig = r["original_fwd_bwd_ms"]
        print(f"{r['case']:<20}{r['params'] / 1e6:>9.2f}M{r['fwd_ms']:>8.4f}{r['fwd_bwd_ms']:>9.4f}"
              f"{r['fwd_bwd_single_ms']:>8.4f}{r['fwd_bwd_accumulate_ms']:>8.4f}"
              f"{r['fwd_bwd_graph_ms']:>8.4f}{r['floor_ms']:>8.4f}{r['copy_ms']:>8.4f}"
              f"{r['copy_GBps']:>7.0f}{(f'{ref:.3f}' if ref else '-'):>8}"
              f"{(f'{orig:.2f}' if orig else '-'):>6}{r['peak_extra_MB']:>7.1f}")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
