"""Command line: tune the 2D layer's kernel settings and print the table.

  python -m lmKAN.tune                      # the docs/performance.md cases (same as --cases)
  python -m lmKAN.tune --num-grids 8 --in 512 --out 512 --batch 65536 [--layout batch_first]
  python -m lmKAN.tune --cases --force      # re-time shapes already in the cache

Each shape is tuned by lmKAN.tune() on a fresh LMKAN2DLayer with every setting "auto"
(forward and backward, fast mode included); the choices go to the cache file that layers
read (lmKAN.tuning.cache_path()).

The command is `python -m lmKAN.tune` (lmKAN/tune.py): that module passes the layer class
to main() here, since this package does not import the layer module.
"""
import argparse
import sys

import torch

from .._extension import backend_info, has_cuda_kernel
from .cache import cache_path
from .key import AUTO, BATCH_BUCKET_CAP
from .session import PERFORMANCE_CASES, format_config, tune

__all__ = ["parse_args", "shapes", "nothing_to_tune", "tune_shape", "format_table", "main"]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m lmKAN.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", action="store_true",
                    help="the 2D cases of docs/performance.md (default)")
    ap.add_argument("--num-grids", type=int, help="grid cells G of one shape to tune")
    ap.add_argument("--in", dest="input_dim", type=int, help="input_dim of that shape")
    ap.add_argument("--out", dest="output_dim", type=int, help="output_dim of that shape")
    ap.add_argument("--batch", type=int, default=1 << 16, help="batch size (default 65536)")
    ap.add_argument("--layout", choices=("batch_last", "batch_first"), default="batch_last")
    ap.add_argument("--forward-only", action="store_true", help="skip the backward settings")
    ap.add_argument("--force", action="store_true", help="re-time shapes already cached")
    ap.add_argument("--device", default="cuda", help="CUDA device (default: the current one)")
    args = ap.parse_args(argv)
    single = (args.num_grids, args.input_dim, args.output_dim)
    if any(v is not None for v in single) and not all(v is not None for v in single):
        ap.error("--num-grids, --in and --out go together")
    return args


def shapes(args):
    """(name, num_grids, input_dim, output_dim, batch, batch_last) to tune."""
    batch_last = args.layout == "batch_last"
    if args.num_grids is not None and not args.cases:
        name = f"G{args.num_grids} {args.input_dim}->{args.output_dim} B={args.batch}"
        return [(name, args.num_grids, args.input_dim, args.output_dim, args.batch, batch_last)]
    return [(name, g, n_in, n_out, batch, batch_last)
            for name, g, n_in, n_out, batch in PERFORMANCE_CASES]


def nothing_to_tune(device):
    """Why nothing can be timed here (a reason string), or None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA GPU visible (on the CPU \"auto\" means the defaults; no kernels to time)"
    if not has_cuda_kernel("lmkan2d_forward"):
        return f"the 2D CUDA kernels are not compiled in\n{backend_info()}"
    return None


def tune_shape(layer_class, name, num_grids, input_dim, output_dim, batch, batch_last, device,
               args):
    """Tune one shape on a fresh `layer_class` (LMKAN2DLayer) with every setting "auto"."""
    layer = layer_class(num_grids, input_dim, output_dim, backward_fast_mode=AUTO,
                        batch_last=batch_last).to(device)
    # Only the first BATCH_BUCKET_CAP samples are timed: a larger input is not needed.
    timed_batch = min(batch, BATCH_BUCKET_CAP)
    shape = (input_dim, timed_batch) if batch_last else (timed_batch, input_dim)
    x = torch.randn(shape, device=device) * 1.5
    rows = tune(layer, x, force=args.force, backward=not args.forward_only)
    for row in rows:
        row.layer = name
    return rows


def format_table(rows, path):
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'case':22} {'mode':8} {'choice':26} {'ms':>9} {'default':>9} {'gain':>6}  source"]
    for r in rows:
        gain = f"{r.default_ms / r.ms:.2f}x" if r.ms and r.default_ms else "-"
        choice = format_config(r.config)
        lines.append(f"{r.layer:22} {r.mode:8} {choice:26} {fmt(r.ms):>9} {fmt(r.default_ms):>9} "
                     f"{gain:>6}  {'cache' if r.cached else 'timed'}")
    lines.append(f"(ms: median on the first {BATCH_BUCKET_CAP} samples at most; "
                 f"backward = the backward op alone; choices stored in {path})")
    return "\n".join(lines)


def main(argv, layer_class):
    """Run the command line on `argv` (None: sys.argv), tuning `layer_class` layers."""
    args = parse_args(argv)
    device = torch.device(args.device)
    reason = nothing_to_tune(device)
    if reason is not None:
        print(f"lmKAN.tune: nothing to tune: {reason}")
        return 0
    from tqdm import tqdm  # optional (the "progress" extra): imported only where there is work
    todo = shapes(args)
    rows = []
    with tqdm(todo, desc="tuning", unit="shape", file=sys.stderr) as bar:
        for shape in bar:
            bar.set_postfix_str(shape[0])
            rows += tune_shape(layer_class, *shape, device=device, args=args)
            torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name(device)}")
    print(format_table(rows, cache_path()))
    return 0
