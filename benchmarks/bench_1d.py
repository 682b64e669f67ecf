"""Benchmark of the 1D layer: KANLayer (uniform grid, 32 control points), batch-first,
B=65536, 256 -> 256, beside nn.Linear and KANditioned's KANLayer (impl="embedding_bag")
when that package is installed. With --batch-last the lmKAN rows are the same layer with
batch_last=True (LMKAN1DLayer's default) on x transposed ([features, batch], contiguous);
nn.Linear and KANditioned stay batch-first, their own layout. Forward and forward+backward
time (CUDA events, median after warm-up) and peak memory, for the default and the
deterministic backward, and the per-kernel split (profile_1d.py); the table is printed last
and JSON written to --json.
"""
import argparse
import json
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cuda_median_ms, peak_memory_gb, warm_up_gpu  # noqa: E402
from profile_1d import bench_layer, kernel_breakdown, print_breakdown  # noqa: E402

# Shared-memory limit of the direct lookup scheme (docs/performance.md): 2 reads per
# (sample, output, input) at 132 SMs x 1.98 GHz x 128 B/clk.
def smem_limit_ms(batch, n_in, n_out, reads=2):
    return batch * n_out * n_in * reads * 4 / 128 / (132 * 1.98e9) * 1e3


def timeit(fn, warmup=5, reps=20, calls_per_sample=1):
    return cuda_median_ms(fn, reps, warmup, calls_per_sample=calls_per_sample)


def measure(name, layer, x):
    params = [p for p in layer.parameters()]
    x_req = x.detach().clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        y = layer(x_req)
        y.backward(gy)

    with torch.no_grad():
        gy = torch.randn_like(layer(x))
    # Steady state: 5 calls back to back per sample, as in a training or inference loop (the
    # host's Python and launch work overlaps the previous call's kernels). Single: one call
    # per sample, waited for, so the host latency before the first kernel is included.
    t_f, t_fb = timeit(fwd, calls_per_sample=5), timeit(fwd_bwd, calls_per_sample=5)
    t_f_single, t_fb_single = timeit(fwd), timeit(fwd_bwd)
    peak, extra = peak_memory_gb(fwd_bwd, params + [x_req])
    return {"name": name, "forward_ms": t_f, "fwd_bwd_ms": t_fb, "forward_single_ms": t_f_single,
            "fwd_bwd_single_ms": t_fb_single, "peak_gb": peak, "peak_extra_gb": extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--control-points", type=int, default=32)
    ap.add_argument("--batch-last", action="store_true",
                    help="lmKAN rows batch-last (x as [features, batch]); default batch-first")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_1d.json"))
    args = ap.parse_args()
    warm_up_gpu()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    n = args.features
    x = 1.5 * torch.randn(args.batch, n, device=dev)
    rows = []
    x_lmkan = x.t().contiguous() if args.batch_last else x
    suffix = " batch-last" if args.batch_last else ""
    for label, kwargs in (("", {}), (" determ.", {"deterministic": True}),
                          (" table=bfloat16", {"table_dtype": torch.bfloat16}),
                          (" table=float16", {"table_dtype": torch.float16})):
        layer = bench_layer(n, args.control_points, args.batch_last, **kwargs).to(dev)
        rows.append(measure(f"lmKAN KANLayer{label}{suffix}", layer, x_lmkan))
    rows.append(measure("nn.Linear (fp32)", torch.nn.Linear(n, n).to(dev), x))
    rows.append(measure("nn.Linear (bf16)", torch.nn.Linear(n, n).to(dev, torch.bfloat16),
                        x.to(torch.bfloat16)))
    try:
        from KANditioned import KANLayer as KDLayer
        kd = KDLayer(n, n, "random_normal", num_control_points=args.control_points,
                     impl="embedding_bag").to(dev)
        rows.append(measure("KANditioned embedding_bag", kd, x))
    except ImportError as exc:
        print(f"KANditioned not installed ({exc}): row skipped "
              "(pip install --no-deps .whl/<KANditioned wheel> where the wheel was carried)")
    breakdown = {}
    for deterministic in (False, True):
        split = kernel_breakdown(args.batch, n, args.control_points, deterministic,
                                 batch_last=args.batch_last)
        breakdown["deterministic" if deterministic else "default"] = dict(split)
        print_breakdown(split, f"per kernel, per forward+backward (deterministic={deterministic}):")
    limit = smem_limit_ms(args.batch, n, n)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "batch": args.batch, "features": n, "batch_last": args.batch_last,
              "control_points": args.control_points,
              "forward_smem_limit_ms": limit, "rows": rows, "kernels_ms": breakdown,
              "targets": {"forward_ms": 1.7, "fwd_bwd_ms": 6.0, "peak_gb": 0.5}}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    layout = "lmKAN batch-last" if args.batch_last else "batch-first"
    print(f"\n{result['device']}, {layout} B={args.batch}, {n}->{n}, "
          f"{args.control_points} control points; forward smem limit {limit:.2f} ms")
    width = max(28, max(len(r["name"]) for r in rows) + 2)
    print(f"{'layer':<{width}}{'forward ms':>12}{'fwd+bwd ms':>12}{'peak GB':>10}{'fwd single':>12}{'f+b single':>12}")
    for r in rows:
        print(f"{r['name']:<{width}}{r['forward_ms']:>12.3f}{r['fwd_bwd_ms']:>12.3f}{r['peak_gb']:>10.3f}"
              f"{r['forward_single_ms']:>12.3f}{r['fwd_bwd_single_ms']:>12.3f}")
    short = {k: v for k, v in breakdown["default"].items() if k.startswith("lmkan1d")}
    print("kernels (default): " + ", ".join(f"{k[8:]} {v:.3f}" for k, v in short.items()) + " ms")
    print("targets: forward <= 1.7 ms, fwd+bwd <= 6 ms, peak <= 0.5 GB; forward / fwd+bwd: 5 calls back "
          "to back per sample (steady state); single: one call per sample, host latency included")


if __name__ == "__main__":
    main()
