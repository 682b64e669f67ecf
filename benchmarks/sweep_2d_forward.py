"""Sweep the 2D forward kernel over tile and block sizes: correctness first, then timings.

    python benchmarks/sweep_2d_forward.py [--quick] [--json PATH]

Correctness: every (tile, block, layout) on small odd shapes, num_grids 3, 8, 26 and 64 (64
reads the table through L1/L2 at every tile), against the float64 reference (<= 1e-5 rel L2).
Timings: the docs/performance.md forward cases, CUDA events, median, beside nn.Linear (fp32) at the
same shape. The table is printed last.
"""
import argparse
import json

import torch

from lmKAN import _reference
from lmKAN.grids import cdf_borders

from _timing import cuda_median_ms, warm_up_gpu

TILES = (4, 8, 16)
BLOCKS = (128, 256, 512, 1024)
CASES = [  # name, G, n_in, n_out, batch, direct-scheme limit (ms), original (ms)
    ("G=16 512->512 B=2^20", 16, 512, 512, 1 << 20, 65.7, 85.3),
    ("G=8 512->512 B=2^18", 8, 512, 512, 1 << 18, 16.4, 25.8),
    ("G=26 256->256 B=2^18", 26, 256, 256, 1 << 18, 4.1, 6.6),
    ("G=26 128->128 B=1024", 26, 128, 128, 1024, None, 0.072),
]


def forward(x, params, borders, batch_last, tile, block):
    return torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, block)


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_correctness():
    failures = []
    torch.manual_seed(1)
    for G in (3, 8, 26, 64):
        n_in, n_out, batch = 38, 75, 1037
        params = torch.randn(G + 1, G + 1, n_out, n_in // 2, device="cuda")
        borders = cdf_borders(G, device="cuda")
        for batch_last in (True, False):
            x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * 2
            x.view(-1)[::97] = float("nan")
            ref = _reference.lmkan2d_forward(x.double(), params.double(), borders.double(), batch_last)
            for tile in TILES:
                for block in BLOCKS:
                    y = forward(x, params, borders, batch_last, tile, block)
                    same_nan = torch.equal(torch.isnan(y), torch.isnan(ref))
                    ok = torch.isfinite(ref)
                    err = rel_l2(y[ok], ref[ok])
                    if err > 1e-5 or not same_nan:
                        failures.append((G, batch_last, tile, block, err, same_nan))
    print(f"correctness: {len(failures)} failures", failures[:10], flush=True)
    return failures


def timed(fn, reps):
    return cuda_median_ms(fn, reps, warmup=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="sweep_2d_forward.json")
    ap.add_argument("--quick", action="store_true", help="skip the B=2^20 case")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    warm_up_gpu()
    failures = check_correctness()
    rows = []
    for name, G, n_in, n_out, batch, limit, original in CASES:
        if args.quick and batch > (1 << 18):
            continue
        torch.manual_seed(0)
        params = torch.randn(G + 1, G + 1, n_out, n_in // 2, device="cuda")
        borders = cdf_borders(G, device="cuda")
        xl = torch.randn(n_in, batch, device="cuda")
        lin = torch.nn.Linear(n_in, n_out, bias=False, device="cuda")
        xf = xl.t().contiguous()
        lin_ms = timed(lambda: lin(xf), args.reps)
        best = None
        for tile in TILES:
            for block in BLOCKS:
                ms = timed(lambda: forward(xl, params, borders, True, tile, block), args.reps)
                rows.append(dict(case=name, tile=tile, block=block, layout="batch-last", ms=ms,
                                 limit=limit, original=original, linear_fp32=lin_ms))
                print(rows[-1], flush=True)
                if best is None or ms < best[0]:
                    best = (ms, tile, block)
        ms = timed(lambda: forward(xf, params, borders, False, best[1], best[2]), args.reps)
        rows.append(dict(case=name, tile=best[1], block=best[2], layout="batch-first", ms=ms,
                         limit=limit, original=original, linear_fp32=lin_ms))
        xl = xf = params = None  # free the case's tensors before the next one
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), failures=failures, rows=rows), f, indent=1)
    print(f"\ndevice: {torch.cuda.get_device_name()}; correctness failures: {len(failures)}")
    print(f"{'case':22} {'layout':11} {'tile':>4} {'block':>5} {'ms':>8} {'limit':>6} {'orig':>6} {'lin32':>6}")
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        best_by_tile = {}
        for r in rs:
            key = (r["layout"], r["tile"])
            if key not in best_by_tile or r["ms"] < best_by_tile[key]["ms"]:
                best_by_tile[key] = r
        for r in best_by_tile.values():
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{case:22} {r['layout']:11} {r['tile']:4} {r['block']:5} {r['ms']:8.3f} "
                  f"{fmt(r['limit']):>6} {fmt(r['original']):>6} {r['linear_fp32']:6.3f}")


if __name__ == "__main__":
    main()
