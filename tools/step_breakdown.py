"""Where a small training step's wall time goes: bench_overhead.py's two steps taken apart.

    python tools/step_breakdown.py [--device cuda] [--calls 200] [--samples 7]

For the lmKAN network (32->64 G=10, BatchNorm1d, 64->8, batch-first, B=1024) and the MLP
(32->256->256->1) of benchmarks/bench_overhead.py, times cumulative prefixes of one step,
eager, as wall microseconds per call over back-to-back calls (synchronised at the ends):

    forward         zero_grad, the model's forward and the loss
    + backward      loss.backward()
    + hessian       the Hessian term added to the loss before the backward (lmKAN only)
    + adam          optimiser.step(): the whole step of bench_overhead.py

The difference of neighbouring rows is the cost of a stage (with its share of the
backward). The two models' samples alternate, as in bench_overhead.py, so that a drift of
the host's speed reaches both; each figure is a median over --samples samples. Each prefix
is timed apart, so on a noisy host a stage's difference carries the noise of two figures.

A second table times the lmKAN network's Hessian term alone, forward and backward, as
`hessian_regularization(model)` computes it (its 2D layers in one `hessian2d_sum` call)
against one `get_hessian_regularization()` call per layer, the two alternating: a smaller
quantity than a step, for the calls that term makes. Prints both tables last. For the
step-ratio target of issue 16 (item 6): which stage holds the gap.
"""
import argparse
import os
import statistics
import sys

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, os.path.join(_HERE, "..", "benchmarks"))
from bench_overhead import SmallLmkan, step_models  # noqa: E402
from lmKAN.regularization import hessian_regularization  # noqa: E402
from _timing import wall_us_per_call  # noqa: E402 (benchmarks/_timing.py)

STAGES = ("forward", "+ backward", "+ hessian", "+ adam")


def stage_fn(model, x, target, optimiser, stage, hessian_weight):
    """One call of the step cut after `stage` (STAGES)."""
    upto = STAGES.index(stage)
    with_hessian = hessian_weight > 0 and upto >= STAGES.index("+ hessian")

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss = (model(x) - target).square().mean()
        if with_hessian:
            loss = loss + hessian_regularization(model, weight=hessian_weight)
        if upto >= STAGES.index("+ backward"):
            loss.backward()
        if upto >= STAGES.index("+ adam"):
            optimiser.step()
    return step


def measure(device, calls, samples):
    torch.manual_seed(0)
    x, cases = step_models(device)
    models = {name: (m, y, torch.optim.Adam(m.parameters()), w) for name, (m, y, w) in cases.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = {}
    for stage in STAGES:
        fns = {name: stage_fn(m, x, t, opt, stage, w) for name, (m, t, opt, w) in models.items()
               if not (name == "MLP" and stage == "+ hessian")}
        for fn in fns.values():  # warm-up (the first calls resolve plans, allocate)
            wall_us_per_call(fn, calls, 1, warmup=10, sync=sync)
        times = {name: [] for name in fns}
        for _ in range(samples):  # alternately: see the module docstring
            for name, fn in fns.items():
                times[name].append(wall_us_per_call(fn, calls, 1, warmup=0, sync=sync))
        rows[stage] = {name: statistics.median(t) for name, t in times.items()}
    return rows


def measure_hessian(device, calls, samples):
    """Wall us per forward+backward of the lmKAN network's Hessian term: hessian_regularization
    (one call for the 2D layers) and one call per layer, alternating."""
    torch.manual_seed(0)
    kan = SmallLmkan().to(device).train()
    layers = [m for m in kan.modules() if hasattr(m, "get_hessian_regularization")]

    def batched():
        kan.zero_grad(set_to_none=True)
        hessian_regularization(kan).backward()

    def per_layer():
        kan.zero_grad(set_to_none=True)
        total = layers[0].get_hessian_regularization()
        for layer in layers[1:]:
            total = total + layer.get_hessian_regularization()
        total.backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    fns = {"hessian_regularization": batched, "one call per layer": per_layer}
    for fn in fns.values():
        wall_us_per_call(fn, calls, 1, warmup=10, sync=sync)
    times = {name: [] for name in fns}
    for _ in range(samples):
        for name, fn in fns.items():
            times[name].append(wall_us_per_call(fn, calls, 1, warmup=0, sync=sync))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--samples", type=int, default=7)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = measure(device, args.calls, args.samples)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: wall us per step prefix (median of {args.samples} alternate samples of "
          f"{args.calls} calls); in brackets the stage's own cost")
    print(f"{'stage':<12}{'lmKAN':>18}{'MLP':>18}")
    previous = {"lmKAN": 0.0, "MLP": 0.0}
    for stage in STAGES:
        cells = []
        for model in ("lmKAN", "MLP"):
            us = rows[stage].get(model)
            if us is None:
                cells.append(f"{'-':>18}")
                continue
            cells.append(f"{us:9.1f} ({us - previous[model]:6.1f})")
            previous[model] = us
        print(f"{stage:<12}" + "".join(cells))
    hessian = measure_hessian(device, args.calls, args.samples)
    print(f"Hessian term of the lmKAN network, forward+backward (wall us, median of "
          f"{args.samples} alternate samples):")
    for name, us in hessian.items():
        print(f"  {name:<24}{us:9.1f}")
    return rows, hessian


if __name__ == "__main__":
    main()
