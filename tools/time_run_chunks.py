"""The sorted backward's chunk size (LMKAN_RUN_CHUNK_MB, footprints.h's kRunChunkBytes*)
against its time: the backward op alone (batch-last, fast mode, tile 16, block 256, B=2^18)
for a bfloat16 grad_y and table (G=8 512->512: tensor cores; G=26 256->256: FMAs) and for
float32 (both FMAs). The knob is read once per process, so each chunk size runs in a fresh
interpreter; the sizes alternate, --rounds times. Medians of 7 CUDA-event timings, ms, a line
per (round, chunk size).

    python3 tools/time_run_chunks.py [--chunks 24,32,48,16] [--rounds 2]

docs/decisions.md, "Chunks for 16-bit rows", has the first figures (taken with the same calls
before this script held them).
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# (num_grids, features in = out, grad_y and table dtype name)
SHAPES = [(8, 512, "bfloat16"), (26, 256, "bfloat16"), (26, 256, "float32"), (8, 512, "float32")]


def time_shapes():
    """One line: the knob's value, then each shape's median ms (this process's chunk size)."""
    import torch
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from _timing import cuda_median_ms
    import lmKAN  # noqa: F401 (registers the ops)
    from lmKAN.grids import cdf_borders

    torch.manual_seed(0)
    batch, out = 1 << 18, [f"chunk {os.environ.get('LMKAN_RUN_CHUNK_MB', 'default')} MB"]
    for g, d, name in SHAPES:
        dtype = getattr(torch, name)
        x = torch.randn(d, batch, device="cuda")
        params = torch.randn(g + 1, g + 1, d, d // 2, device="cuda")
        borders = cdf_borders(g, device="cuda")
        gy = torch.randn(d, batch, device="cuda").to(dtype)

        def call():
            torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, True, 16, 256, True, False,
                                             dtype)

        out.append(f"G={g} {d}->{d} {name} {cuda_median_ms(call, reps=7, warmup=3):.3f}")
        del x, params, gy
    print(" | ".join(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="24,32,48,16",
                    help="chunk sizes in MiB, comma-separated (default: 24,32,48,16)")
    ap.add_argument("--rounds", type=int, default=2, help="times through the sizes (default 2)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        time_shapes()
        return
    try:
        chunks = [int(c) for c in args.chunks.split(",")]
    except ValueError:
        ap.error(f"--chunks takes integers (MiB) separated by commas, got {args.chunks!r}")
    if not chunks or min(chunks) < 1 or args.rounds < 1:
        ap.error(f"--chunks needs sizes >= 1 MiB and --rounds >= 1, got {args.chunks!r}, "
                 f"{args.rounds}")
    for _ in range(args.rounds):
        for mb in chunks:
            env = dict(os.environ, LMKAN_RUN_CHUNK_MB=str(mb))
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env)
            if run.returncode != 0:
                sys.exit(f"the run at {mb} MiB failed (exit {run.returncode})")


if __name__ == "__main__":
    main()
