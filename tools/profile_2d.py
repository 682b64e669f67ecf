"""Per-kernel times of one 2D forward+backward (torch.profiler), and its CUDA-event time.

    python tools/profile_2d.py [--cases G8,G26] [--tiles 4,8,16] [--fast 0,1]

For each case and backward configuration: the fwd+bwd median (CUDA events) and the
kernels' GPU time in one step, so that dx, dP, packing and reductions are seen apart.
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

# the tree itself (an in-place build, as tools/arch_round.sh makes) and its benchmarks
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _timing import cuda_median_ms, warm_up_gpu  # noqa: E402 (benchmarks/_timing.py)

from lmKAN import ops  # noqa: E402
from lmKAN.grids import cdf_borders  # noqa: E402

CASES = {"G8": (8, 512, 512, 1 << 18), "G26": (26, 256, 256, 1 << 18), "G16": (16, 512, 512, 1 << 18),
         "G26small": (26, 128, 128, 1024)}


def kernel_label(name):
    """"void ns::(anonymous namespace)::name<args>(params)" -> "name", with "[dx]" for the
    grad_x instances of the forward kernel (template argument DX = true)."""
    name = name.replace("(anonymous namespace)::", "").replace("void ", "")
    name = name.replace("(bool)1", "true").replace("(bool)0", "false")  # demangler variants
    base = name.split("(")[0]
    label = base.split("<")[0].split("::")[-1][:32]
    if label == "forward_kernel" and base.replace(" ", "").endswith(",true,true>"):
        label += "[dx]"
    return label


def median_ms(fn, reps=7):
    return cuda_median_ms(fn, reps, warmup=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="G8,G26")
    ap.add_argument("--tiles", default="4,8,16")
    ap.add_argument("--fast", default="0,1")
    ap.add_argument("--forward-tile", type=int, default=0, help="0: 16 for G <= 10, else 4")
    args = ap.parse_args()
    warm_up_gpu()
    summary = []
    for name in args.cases.split(","):
        G, n_in, n_out, batch = CASES[name]
        torch.manual_seed(0)
        params = torch.randn(G + 1, G + 1, n_out, n_in // 2, device="cuda", requires_grad=True)
        borders = cdf_borders(G, device="cuda")
        x = torch.randn(n_in, batch, device="cuda", requires_grad=True)
        gy = torch.randn(n_out, batch, device="cuda")
        tile_f = args.forward_tile or (16 if G <= 10 else 4)
        for tile in map(int, args.tiles.split(",")):
            for fast in map(int, args.fast.split(",")):
                def step():
                    y = ops.lmkan2d(x, params, borders, True, tile_f, 1024, tile, 256, bool(fast))
                    x.grad = params.grad = None
                    y.backward(gy)
                ms = median_ms(step)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                kernels = {}
                for e in prof.events():
                    if e.device_type == torch.autograd.DeviceType.CUDA:
                        key = kernel_label(e.name)
                        kernels[key] = kernels.get(key, 0.0) + e.device_time / 1000
                top = sorted(kernels.items(), key=lambda kv: -kv[1])[:8]
                line = (f"{name:9} tile {tile:2} {'fast' if fast else 'norm'}  fwd+bwd {ms:9.3f} ms  | "
                        + "  ".join(f"{k.split('::')[-1]} {v:.4g}" for k, v in top))
                print(line, flush=True)
                summary.append(line)
    print("\n".join(["", "== summary"] + summary))


if __name__ == "__main__":
    main()
