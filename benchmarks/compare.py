"""lmKAN against other KAN layers and nn.Linear: time, memory and parameters of one layer.

    python benchmarks/compare.py                      # the 1D peer case: B=65536, 256 -> 256
    python benchmarks/compare.py --quick              # small sizes (a CPU run in seconds)
    python benchmarks/compare.py --batch 4096 --dim 128 --json out.json --figure-dir figures
    python benchmarks/compare.py --dtypes float32,bfloat16   # also each layer under autocast

Every layer maps a batch-first x [B, dim] to [B, dim] (float32): lmKAN 2D (G=8), lmKAN 1D
(KANLayer, 32 control points), a 2-layer nn.Linear MLP (dim -> 4 dim -> dim, ReLU), the
RBF (FastKAN-style, 8 centres) and B-spline (efficient-kan-style, grid 5, cubic) layers of
benchmarks/baselines.py, and KANditioned's KANLayer (embedding_bag) when `kanditioned` is
installed. Columns:

- forward: one training-mode forward (autograd recording); backward: y.backward(dy) alone.
  Median over --repeats after warm-up; CUDA events on a GPU, time.perf_counter on the CPU.
- forward / backward memory: peak CUDA memory allocated during that phase, minus what was
  allocated before it (parameters, input, and for the backward the saved activations);
  "n/a" on the CPU.
- params / trainable: parameter counts.
- with --dtypes ...,bfloat16 (or float16): forward and backward time again with the forward
  under torch.autocast(dtype=...) (the backward outside it, as PyTorch recommends): the
  lmKAN 2D layer then reads 16-bit tables, nn.Linear runs 16-bit matmuls. Columns "fwd
  bf16", "bwd bf16" (JSON: each row's "bfloat16" entry).

Writes JSON (--json) and a figure (--figure-dir: performance.svg and .png, needs
matplotlib) of the measured run, with the device in the title; prints the table last.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines import BSplineKANLayer, RBFKANLayer  # noqa: E402
from lmKAN import KANLayer, LMKAN2DLayer  # noqa: E402


def build_layers(dim):
    """name -> a zero-argument constructor of the layer (None with a reason if unavailable)."""
    layers = {
        "lmKAN 2D (G=8)": lambda: LMKAN2DLayer(8, dim, dim, batch_last=False),
        "lmKAN 1D (32 points)": lambda: KANLayer(dim, dim, num_control_points=32),
        "nn.Linear MLP (4x hidden)": lambda: nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(),
                                                           nn.Linear(4 * dim, dim)),
        "RBF KAN (FastKAN-style, 8)": lambda: RBFKANLayer(dim, dim, num_centers=8),
        "B-spline KAN (efficient-kan-style, 5+3)": lambda: BSplineKANLayer(dim, dim, grid_size=5, order=3),
    }
    kanditioned = _kanditioned_constructor(dim)
    if kanditioned is not None:
        layers["KANditioned (embedding_bag, 32)"] = kanditioned
    return layers


def _kanditioned_constructor(dim):
    try:  # the PyPI package `kanditioned` installs the module `KANditioned`
        from KANditioned import KANLayer as KANditionedLayer
    except ImportError:
        return None

    def make():
        try:
            return KANditionedLayer(dim, dim, init="random_normal", num_control_points=32,
                                    impl="embedding_bag")
        except TypeError:  # versions without the impl switch
            return KANditionedLayer(dim, dim, init="random_normal", num_control_points=32)
    return make


class Timer:
    """Elapsed milliseconds of a region: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def measure(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def peak_memory_of(fn, device):
    """Peak CUDA bytes allocated while fn runs, above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - before


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {"bfloat16": "bf16", "float16": "fp16"}


def measure_layer(layer, batch, dim, device, repeats, warmup, autocast=None):
    """Time and memory of one layer; autocast: None (float32), or the dtype of a
    torch.autocast region around the forward."""
    x = (1.5 * torch.randn(batch, dim, device=device)).requires_grad_(True)
    dy = torch.randn(batch, dim, device=device)
    state = {}

    def forward():
        if autocast is None:
            state["y"] = layer(x)
        else:
            with torch.autocast(device.type, dtype=autocast):
                state["y"] = layer(x)

    def backward():
        y = state.pop("y")
        y.backward(dy.to(y.dtype))
        layer.zero_grad(set_to_none=True)
        x.grad = None

    timer = Timer(device)
    forward_ms, backward_ms = [], []
    for i in range(warmup + repeats):
        t_forward, t_backward = timer.measure(forward), timer.measure(backward)
        if i >= warmup:
            forward_ms.append(t_forward)
            backward_ms.append(t_backward)
    forward_bytes = peak_memory_of(forward, device)
    backward_bytes = peak_memory_of(backward, device)
    return {
        "forward_ms": statistics.median(forward_ms),
        "backward_ms": statistics.median(backward_ms),
        "forward_memory_bytes": forward_bytes,
        "backward_memory_bytes": backward_bytes,
        "params": sum(p.numel() for p in layer.parameters()),
        "trainable_params": sum(p.numel() for p in layer.parameters() if p.requires_grad),
    }


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _mib(value):
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _autocast_columns(results):
    """The autocast dtypes measured in `results` (keys of AUTOCAST_DTYPES), in that order."""
    return [d for d in AUTOCAST_DTYPES if any(d in r for r in results.values())]


def format_table(results):
    extra = _autocast_columns(results)
    header = ("layer", "forward", "backward") + tuple(
        f"{phase} {SHORT[d]}" for d in extra for phase in ("fwd", "bwd")) + (
        "fwd memory", "bwd memory", "params", "trainable")
    rows = [header]
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "failed: " + r["error"][:60]) + ("",) * (len(header) - 2))
            continue
        cast = []
        for d in extra:
            c = r.get(d, {"error": "not measured"})
            cast += (["failed", ""] if "error" in c else
                     [f"{c['forward_ms']:.3f} ms", f"{c['backward_ms']:.3f} ms"])
        rows.append((name, f"{r['forward_ms']:.3f} ms", f"{r['backward_ms']:.3f} ms", *cast,
                     _mib(r["forward_memory_bytes"]), _mib(r["backward_memory_bytes"]),
                     f"{r['params']:,}", f"{r['trainable_params']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save_figure(results, title, figure_dir):
    """performance.svg and .png: forward and backward time per layer (log scale)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {name: r for name, r in results.items() if "error" not in r}
    names = list(measured)
    positions = range(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.8))
    height = 0.38
    ax.barh([p - height / 2 for p in positions], [measured[n]["forward_ms"] for n in names],
            height, label="forward")
    ax.barh([p + height / 2 for p in positions], [measured[n]["backward_ms"] for n in names],
            height, label="backward")
    ax.set_yticks(list(positions), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    # plain numbers at 1-2-5 steps: matplotlib's default minor labels (2x10^0, 3x10^0, ...)
    # run into each other on a span of two decades
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("time per call (ms, log scale; lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best")
    fig.tight_layout()
    os.makedirs(figure_dir, exist_ok=True)
    paths = [os.path.join(figure_dir, "performance." + ext) for ext in ("svg", "png")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=256, help="input and output features")
    parser.add_argument("--quick", action="store_true", help="batch 1024, dim 64, 3 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated substrings of layer names")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--figure-dir", default=None, help="write performance.svg/.png here")
    parser.add_argument("--from-json", default=None,
                        help="measure nothing: print the table (and draw the figure) of a saved run")
    parser.add_argument("--dtypes", default="float32",
                        help="comma-separated: float32 (always measured), bfloat16, float16 (the "
                        "forward under torch.autocast of that dtype)")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d != "float32" and d not in AUTOCAST_DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown dtype(s) {unknown}; expected float32, "
                     + ", ".join(AUTOCAST_DTYPES))
    args.autocast = [d for d in AUTOCAST_DTYPES if d in dtypes]
    if args.quick:
        args.batch, args.dim, args.repeats, args.warmup = 1024, 64, 3, 1
    return args


def _title(batch, dim, device, autocast):
    cast = "".join(f" (and autocast {d})" for d in autocast)
    return f"{batch} x {dim} -> {dim}, float32{cast}, batch-first, on {device}"


def redraw(path, figure_dir):
    """Table and figure of a run saved with --json (e.g. measured on a GPU machine that lacks
    matplotlib)."""
    with open(path) as f:
        report = json.load(f)
    title = _title(report["batch"], report["dim"], report["device"], _autocast_columns(report["results"]))
    if figure_dir:
        report["figures"] = save_figure(report["results"], title, figure_dir)
    print(title)
    print(format_table(report["results"]))
    return report


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return redraw(args.from_json, args.figure_dir)
    device = torch.device(args.device)
    torch.manual_seed(0)
    layers = build_layers(args.dim)
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",")]
        layers = {n: make for n, make in layers.items() if any(w in n.lower() for w in wanted)}
    results = {}
    for name, make in layers.items():
        try:
            layer = make().to(device)
            results[name] = measure_layer(layer, args.batch, args.dim, device, args.repeats, args.warmup)
            for d in args.autocast:
                try:
                    row = measure_layer(layer, args.batch, args.dim, device, args.repeats,
                                        args.warmup, autocast=AUTOCAST_DTYPES[d])
                    results[name][d] = {k: row[k] for k in ("forward_ms", "backward_ms",
                                                            "forward_memory_bytes",
                                                            "backward_memory_bytes")}
                except (RuntimeError, ValueError, TypeError) as exc:
                    results[name][d] = {"error": f"{type(exc).__name__}: {exc}"}
        except (RuntimeError, ValueError, TypeError) as exc:  # e.g. out of memory: keep the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            layer = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = device_name(device)
    title = _title(args.batch, args.dim, name, args.autocast)
    report = {"device": name, "torch": torch.__version__, "batch": args.batch, "dim": args.dim,
              "repeats": args.repeats, "timer": "cuda events" if device.type == "cuda" else "perf_counter",
              "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.figure_dir:
        try:
            report["figures"] = save_figure(results, title, args.figure_dir)
        except ImportError:
            print("matplotlib is not installed (pip install lmKAN[plot]): no figure written")
    print(title)
    print(format_table(results))
    return report


if __name__ == "__main__":
    main()
