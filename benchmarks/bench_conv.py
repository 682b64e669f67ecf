"""Benchmark of the convolutions (LMKAN2DConv2d, LMKAN1DConv2d) beside nn.Conv2d of the same
shape, in float32 and under autocast(bfloat16): forward (no grad) and forward+backward time
(CUDA events, median after warm-up, 5 calls back to back per sample), peak memory above the
inputs during forward+backward, parameters and multiply-adds per image. The table is printed
last and JSON written to --json.

Cases (N images, channels in -> out, image size, kernel):
  3x3: 128 x 64 -> 64, 32x32, 3x3, padding 1 (a CIFAR-sized layer; 288 MiB of columns)
  1x1: 128 x 256 -> 256, 16x16, 1x1, NCHW and channels_last (read in place) inputs

nn.Conv2d runs with cuDNN's defaults (TF32 allowed for float32, as PyTorch ships), the
lmKAN layers with their defaults ("auto" tile and block sizes; 16-bit tables for the 2D
layer under autocast, float32 for the 1D layer).

    python benchmarks/bench_conv.py [--cases 3x3,1x1] [--json PATH]
"""
import argparse
import contextlib
import json
import os
import sys

import torch
from torch import nn

from lmKAN import LMKAN1DConv2d, LMKAN2DConv2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cuda_median_ms, peak_memory_gb, warm_up_gpu  # noqa: E402

CASES = {  # name: (images, in_channels, out_channels, size, kernel, padding)
    "3x3": (128, 64, 64, 32, 3, 1),
    "1x1": (128, 256, 256, 16, 1, 0),
}
NUM_GRIDS_2D, NUM_GRIDS_1D = 8, 8


def measure(module, x, dtype_name):
    """forward and forward+backward ms, peak extra GB of forward+backward."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dtype_name == "bf16"
                else contextlib.nullcontext())
    x_req = x.detach().clone().requires_grad_(True)
    with autocast:  # grad_y in the layout of the output it differentiates (else a copy)
        gy = torch.randn_like(module(x_req).detach().float())

    def fwd():
        with torch.no_grad(), autocast:
            module(x)

    def fwd_bwd():
        with autocast:
            y = module(x_req)
        y.float().backward(gy)

    t_f = cuda_median_ms(fwd, 20, 5, calls_per_sample=5)
    t_fb = cuda_median_ms(fwd_bwd, 20, 5, calls_per_sample=5)
    return t_f, t_fb, peak_memory_gb(fwd_bwd, list(module.parameters()) + [x_req])[1]


def multiply_adds_per_image(name, c_in, c_out, positions, kernel):
    """Inference multiply-adds per image: the conv's c_out * c_in * k^2 per position; the
    lookup layers' weighted sums of their table rows (4 corners per input pair, 2 nodes per
    input) per output and position, the cell search not counted."""
    features = c_in * kernel * kernel
    per_position = {"nn.Conv2d": c_out * features, "LMKAN2DConv2d": c_out * (features // 2) * 4,
                    "LMKAN1DConv2d": c_out * features * 2}[name]
    return per_position * positions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="3x3,1x1", help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_conv.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_conv.py measures CUDA kernels: no CUDA GPU is visible")
    warm_up_gpu()
    torch.manual_seed(0)
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        n, c_in, c_out, size, k, pad = CASES[case]
        modules = {
            "nn.Conv2d": nn.Conv2d(c_in, c_out, k, padding=pad),
            "LMKAN2DConv2d": LMKAN2DConv2d(NUM_GRIDS_2D, c_in, c_out, k, padding=pad),
            "LMKAN1DConv2d": LMKAN1DConv2d(NUM_GRIDS_1D, c_in, c_out, k, padding=pad),
        }
        layouts = ["nchw", "channels_last"] if k == 1 else ["nchw"]
        for layout in layouts:
            x = torch.randn(n, c_in, size, size, device="cuda")
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            for name, module in modules.items():
                module = module.to("cuda", memory_format=torch.channels_last) \
                    if layout == "channels_last" and name == "nn.Conv2d" else module.cuda()
                for dtype_name in ("fp32", "bf16"):
                    t_f, t_fb, peak = measure(module, x, dtype_name)
                    rows.append({"case": case, "layout": layout, "module": name, "dtype": dtype_name,
                                 "forward_ms": t_f, "fwd_bwd_ms": t_fb, "peak_extra_gb": peak,
                                 "params": sum(p.numel() for p in module.parameters()),
                                 "mult_adds_per_image": multiply_adds_per_image(
                                     name, c_in, c_out, size * size, k)})
                    print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cases": {c: CASES[c] for c in
                                                                           args.cases.split(",")},
              "num_grids": {"2d": NUM_GRIDS_2D, "1d": NUM_GRIDS_1D}, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{result['device']}, torch {torch.__version__}; forward / fwd+bwd: median ms, 5 calls "
          f"back to back per sample; peak: GB above the inputs during fwd+bwd")
    print(f"{'case':<5}{'layout':<15}{'module':<15}{'dtype':<6}{'forward':>9}{'fwd+bwd':>9}"
          f"{'peak GB':>9}{'params':>9}{'MACs/img':>10}")
    for r in rows:
        print(f"{r['case']:<5}{r['layout']:<15}{r['module']:<15}{r['dtype']:<6}{r['forward_ms']:>9.3f}"
              f"{r['fwd_bwd_ms']:>9.3f}{r['peak_extra_gb']:>9.3f}{r['params']:>9}"
              f"{r['mult_adds_per_image'] / 1e6:>9.1f}M")


if __name__ == "__main__":
    main()
