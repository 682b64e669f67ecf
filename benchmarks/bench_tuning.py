"""Auto-tuned vs default vs best hand-picked kernel settings of the 2D layer (issue 7).

For each docs/performance.md 2D case and mode (fwd: the forward op; bwd: the backward op
alone, which is what the tuner times), time every candidate configuration (tile x block,
and fast mode for bwd) at the case's full batch, then let lmKAN.tune pick with an empty
cache (its wall time is "tune s") and look the pick up in the same grid of timings.
Prints a table last and writes JSON (--json).

  python benchmarks/bench_tuning.py [--json PATH] [--reps N] [--cases 0,2]
"""
import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import cuda_median_ms as timed, warm_up_gpu  # noqa: E402

from lmKAN import LMKAN2DLayer, tune, tuning  # noqa: E402
from lmKAN.lmkan2d import SUPPORTED_BLOCK_SIZES, SUPPORTED_TILE_SIZES  # noqa: E402

MODES = {"G16 512->512 B=2^20": ("fwd",)}  # the others: fwd and bwd
DEFAULT = {"fwd": (8, 1024, False), "bwd": (8, 512, False)}


def candidates(mode):
    fast = (False, True) if mode == "bwd" else (False,)
    return list(itertools.product(SUPPORTED_TILE_SIZES, SUPPORTED_BLOCK_SIZES, fast))


def runner(layer, x, grad_y, mode, config):
    tile, block, fast = config
    params, borders = layer.func_parameter.detach(), layer.borders
    if mode == "fwd":
        return lambda: torch.ops.lmkan.lmkan2d_forward(x, params, borders, layer.batch_last,
                                                        tile, block)
    return lambda: torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, layer.batch_last,
                                                     tile, block, fast)


def time_grid(layer, x, grad_y, mode, reps):
    times = {}
    for config in candidates(mode):
        times[config] = timed(runner(layer, x, grad_y, mode, config), reps)
    return times


def auto_choice(layer, x, mode):
    """lmKAN.tune's pick for this mode (empty cache: timed now) and the seconds it took."""
    start = time.perf_counter()
    rows = tune(layer, x, force=True, backward=mode == "bwd")
    seconds = time.perf_counter() - start
    row = next(r for r in rows if r.mode == ("forward" if mode == "fwd" else "backward"))
    c = row.config
    return (c["tile_size"], c["block_size"], c.get("fast_mode", False)), seconds


def label(config):
    tile, block, fast = config
    return f"t{tile} b{block}" + (" fast" if fast else "")


def bench_case(name, G, n_in, n_out, batch, mode, reps):
    layer = LMKAN2DLayer(G, n_in, n_out, backward_fast_mode=tuning.AUTO).cuda()
    x = torch.randn(n_in, batch, device="cuda") * 1.5
    grad_y = torch.randn(n_out, batch, device="cuda") if mode == "bwd" else None
    times = time_grid(layer, x, grad_y, mode, reps)
    auto, tune_s = auto_choice(layer, x, mode)
    if auto not in times:  # not in the grid (should not happen): time it the same way
        times[auto] = timed(runner(layer, x, grad_y, mode, auto), reps)
    best = min(times, key=times.get)
    default = DEFAULT[mode]
    return dict(case=name, mode=mode, default_ms=times.get(default), best=label(best),
                best_ms=times[best], auto=label(auto), auto_ms=times[auto],
                auto_over_best=times[auto] / times[best], tune_s=tune_s,
                grid={label(c): ms for c, ms in times.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_tuning.json"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cases", default=None, help="comma-separated indices into PERFORMANCE_CASES")
    args = ap.parse_args()
    warm_up_gpu()
    # An empty cache of our own: every pick below is timed in this run.
    os.environ[tuning.ENV_CACHE_DIR] = tempfile.mkdtemp(prefix="lmkan-bench-tuning-")
    os.environ.pop(tuning.ENV_TUNING, None)
    torch.manual_seed(0)
    cases = tuning.PERFORMANCE_CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    rows = []
    for name, G, n_in, n_out, batch in cases:
        for mode in MODES.get(name, ("fwd", "bwd")):
            rows.append(bench_case(name, G, n_in, n_out, batch, mode, args.reps))
            print({k: v for k, v in rows[-1].items() if k != "grid"}, flush=True)
            torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)
    print(f"\ndevice: {torch.cuda.get_device_name()}   (ms, median of {args.reps}; bwd = backward op "
          f"alone; default = tile 8, block 1024 fwd / 512 bwd, normal mode; tune s = lmKAN.tune "
          f"with an empty cache, one full-batch step included, bwd rows tune the forward too)")
    print(f"{'case':22} {'mode':4} {'default':>9} {'best':>9} {'(config)':16} {'auto':>9} "
          f"{'(config)':16} {'auto/best':>9} {'tune s':>7}")
    for r in rows:
        default = "-" if r["default_ms"] is None else f"{r['default_ms']:.3f}"
        print(f"{r['case']:22} {r['mode']:4} {default:>9} {r['best_ms']:9.3f} {r['best']:16} "
              f"{r['auto_ms']:9.3f} {r['auto']:16} {r['auto_over_best']:9.3f} {r['tune_s']:7.2f}")


if __name__ == "__main__":
    main()
