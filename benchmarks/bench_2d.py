"""LMKAN2DLayer kernels: forward and forward+backward time and peak memory.

Each case beside nn.Linear at the same shape (fp32, TF32, bf16) measured in the same run and
beside the shared-memory limit of the direct lookup scheme (docs/performance.md). CUDA events,
warm-up, median (eager: host costs included). Cases of at most GRAPH_MAX_BATCH samples also
get the GPU time of their fastest configuration, and of nn.Linear fp32, from CUDA-graph
replays. Prints a table last; writes JSON (--json).

  python benchmarks/bench_2d.py [--json PATH] [--reps N] [--cases G16,G8 ...] [--tiles 4,8]
                                [--blocks 256,512,1024] [--tables float32,bfloat16,float16]
                                [--modes fwd,bwd,fwd+bwd]

--cases keeps the cases whose name starts with one of the given prefixes; --tiles and --blocks
narrow the configurations searched (forward blocks; the backward searches 256 and 512 of
them); --tables lists the table dtypes timed, each with its own search. A 16-bit table is
timed as mixed-precision training runs it (README "Mixed precision"): the forward reads the
table rounded to that dtype (the ops' table_dtype), fwd+bwd runs under torch.autocast of that
dtype (y and grad_y 16-bit), and the backward op alone takes a 16-bit grad_y.
"""
import argparse
import json
import os

import torch

from lmKAN import ops
from lmKAN.grids import cdf_borders

from _timing import cuda_graph_replay, cuda_median_ms, warm_up_gpu

# (name, G, n_in, n_out, batch, modes, forward limit ms from docs/performance.md or None,
#  original ms)
# The original lmKAN's best configuration per case, measured on the H200 (docs/performance.md,
# 2026-12-01; the small case's forward on the H100).
CASES = [
    ("G16 512->512 B=2^20", 16, 512, 512, 1 << 20, ("fwd",), 65.7, {"fwd": 85.0}),
    ("G8 512->512 B=2^18", 8, 512, 512, 1 << 18, ("fwd", "bwd", "fwd+bwd"), 16.4, {"fwd": 21.5, "fwd+bwd": 93.4}),
    ("G26 256->256 B=2^18", 26, 256, 256, 1 << 18, ("fwd", "bwd", "fwd+bwd"), 4.1, {"fwd": 6.6, "fwd+bwd": 46.0}),
    ("G26 128->128 B=1024", 26, 128, 128, 1024, ("fwd", "fwd+bwd"), None, {"fwd": 0.072, "fwd+bwd": 0.325}),
    ("G64 64->64 B=2^16", 64, 64, 64, 1 << 16, ("bwd",), None, {}),
    # a one-output head (an energy or regression output; the few-outputs kernels' case)
    ("head G8 256->1 B=2^16", 8, 256, 1, 1 << 16, ("fwd", "bwd", "fwd+bwd"), None, {}),
]


GRAPH_MAX_BATCH = 4096  # cases this small also get a CUDA-graph (GPU time) figure


def timed(fn, reps, warmup=3):
    return cuda_median_ms(fn, reps, warmup)


def graph_ms(fn, reps):
    """GPU time of fn() without host cost: fn captured in a CUDA graph, replays back to back.

    Small cases are bound by the host (Python, dispatch and launch costs of every op), which
    the eager figures include; this figure is what the kernels themselves take.
    """
    return cuda_median_ms(cuda_graph_replay(fn), reps, warmup=3, calls_per_sample=20)


def peak_mb(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


TABLES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lmkan_fns(G, n_in, n_out, batch, batch_last, tile_f, block_f, tile_b, block_b, fast, mode,
              deterministic=False, table="float32"):
    x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * 1.5
    params = (torch.rand(G + 1, G + 1, n_out, n_in // 2, device="cuda") - 0.5) * 0.2
    borders = cdf_borders(G, device="cuda")
    table_dtype = None if table == "float32" else TABLES[table]
    if mode == "fwd":
        return lambda: ops.lmkan2d(x, params, borders, batch_last, tile_f, block_f, tile_b, block_b, fast,
                                   False, table_dtype)
    # 16-bit tables: grad_y in that dtype, as under autocast (the layer's output is 16-bit)
    gy = torch.randn((n_out, batch) if batch_last else (batch, n_out), device="cuda",
                     dtype=TABLES[table])
    if mode == "bwd":  # the backward op alone (dx and dP kernels)
        return lambda: torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, batch_last, tile_b,
                                                        block_b, fast, deterministic, table_dtype)
    x.requires_grad_(True)
    params.requires_grad_(True)
    # 16-bit tables under autocast: its dtype picks the table (table_dtype None)
    autocast = torch.autocast("cuda", dtype=TABLES[table], enabled=table_dtype is not None)

    def step():
        with autocast:
            y = ops.lmkan2d(x, params, borders, batch_last, tile_f, block_f, tile_b, block_b, fast,
                            deterministic)
        x.grad = None
        params.grad = None
        y.backward(gy)
    return step


def linear_fns(n_in, n_out, batch, dtype, backward):
    lin = torch.nn.Linear(n_in, n_out, bias=False, device="cuda", dtype=dtype)
    x = torch.randn(batch, n_in, device="cuda", dtype=dtype, requires_grad=backward)
    if not backward:
        return lambda: lin(x)
    gy = torch.randn(batch, n_out, device="cuda", dtype=dtype)

    def step():
        x.grad = None
        lin.weight.grad = None
        lin(x).backward(gy)
    return step


def run_config(args, name, G, n_in, n_out, batch, mode, label, tile_f, block_f, tile_b, block_b,
               fast, batch_last, determ, table):
    """One configuration: time and peak memory (an error is reported, not raised)."""
    try:
        fn = lmkan_fns(G, n_in, n_out, batch, batch_last, tile_f, block_f, tile_b, block_b, fast, mode,
                       determ, table)
        ms, mem, err = timed(fn, args.reps), peak_mb(fn), None
    except Exception as exc:  # noqa: BLE001  (report, keep going)
        ms, mem, err = float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:200]
    torch.cuda.empty_cache()
    return dict(case=name, mode=mode, config=label, table=table, tile_f=tile_f, block_f=block_f,
                tile_b=tile_b, block_b=block_b,
                fast=fast, batch_last=batch_last, deterministic=determ, ms=ms, peak_mb=mem, error=err)


def run_table(args, name, G, n_in, n_out, batch, mode, table, tiles, blocks, best_forward):
    """The rows of one case, mode and table dtype. Batch-last configurations first; then the
    fastest of them again with batch-first inputs (and, for the backward, deterministic), so
    the layout's cost is measured at the configuration a tuned layer would run. fwd+bwd uses
    the case's fastest forward tile and block for that table dtype."""
    backward = mode != "fwd"
    prefix = "" if table == "float32" else f"{table} "
    if backward:
        tile_f, block_f = best_forward.get((name, table), (16 if G <= 16 else 8, 1024))
        configs = [(f"{prefix}bwd tile {tile} block {block} {'fast' if fast else 'normal'}", tile_f,
                    block_f, tile, block, fast)
                   for tile in tiles for block in blocks if block in (256, 512)
                   for fast in (False, True)]
    else:
        configs = [(f"{prefix}tile {tile} block {block}", tile, block, 8, 512, False)
                   for tile in tiles for block in blocks]
    rows = [run_config(args, name, G, n_in, n_out, batch, mode, label, tile_f, block_f, tile_b,
                       block_b, fast, True, False, table)
            for label, tile_f, block_f, tile_b, block_b, fast in configs]
    best = min((r for r in rows if r["error"] is None), key=lambda r: r["ms"])
    if mode == "fwd":
        best_forward[(name, table)] = (best["tile_f"], best["block_f"])
    variants = [("batch-first", False, False)]
    if backward:
        variants.append(("determ.", True, True))
    for suffix, batch_last, determ in variants:
        row = run_config(args, name, G, n_in, n_out, batch, mode, f"{best['config']} {suffix}",
                         best["tile_f"], best["block_f"], best["tile_b"], best["block_b"],
                         best["fast"], batch_last, determ, table)
        row["vs_batch_last"] = row["ms"] / best["ms"]
        rows.append(row)
    if batch <= GRAPH_MAX_BATCH:  # host-bound: the GPU time too, best config and Linear
        fn = lmkan_fns(G, n_in, n_out, batch, True, best["tile_f"], best["block_f"],
                       best["tile_b"], best["block_b"], best["fast"], mode, False, table)
        best["graph_ms"] = graph_ms(fn, args.reps)
        best["linear_fp32_graph_ms"] = graph_ms(linear_fns(n_in, n_out, batch, torch.float32,
                                                           backward), args.reps)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "bench_2d.json"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cases", default="", help="comma-separated case name prefixes (default: all)")
    ap.add_argument("--tiles", default="4,8,16")
    ap.add_argument("--blocks", default="256,512,1024")
    ap.add_argument("--modes", default="", help="comma-separated modes to keep: fwd, bwd, "
                    "fwd+bwd (default: each case's own); fwd+bwd runs the fwd rows too, for "
                    "the fastest forward configuration it then uses")
    ap.add_argument("--tables", default="float32", help="table dtypes, comma-separated: "
                    + ", ".join(TABLES))
    args = ap.parse_args()
    tables = args.tables.split(",")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        ap.error(f"--tables: unknown table dtype(s) {unknown}; expected some of {list(TABLES)}")
    tiles = [int(t) for t in args.tiles.split(",")]
    blocks = [int(b) for b in args.blocks.split(",")]
    prefixes = [p for p in args.cases.split(",") if p]
    cases = [c for c in CASES if not prefixes or any(c[0].startswith(p) for p in prefixes)]
    warm_up_gpu()
    torch.manual_seed(0)
    rows = []
    best_forward = {}
    keep_modes = [m for m in args.modes.split(",") if m]
    for name, G, n_in, n_out, batch, modes, limit, original in cases:
        selected = [m for m in modes if not keep_modes or m in keep_modes]
        if "fwd+bwd" in selected and "fwd" not in selected:
            # fwd+bwd runs the case's fastest forward (run_table): search it first, or a
            # fixed fallback stands in for it (G=26: tile 8, where tile 4 is the fastest)
            selected.insert(0, "fwd")
        for mode in selected:
            backward = mode != "fwd"
            lin = {}
            for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                       ("bf16", torch.bfloat16, False)):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                lin[label] = timed(linear_fns(n_in, n_out, batch, dtype, backward), args.reps)
            torch.backends.cuda.matmul.allow_tf32 = False
            case_rows = []
            for table in tables:
                case_rows += run_table(args, name, G, n_in, n_out, batch, mode, table, tiles,
                                       blocks, best_forward)
            for row in case_rows:
                row.update(limit_ms=None if limit is None else {"fwd": 1, "bwd": 3, "fwd+bwd": 4}[mode] * limit,
                           original_ms=original.get(mode), linear_fp32_ms=lin["fp32"],
                           linear_tf32_ms=lin["tf32"], linear_bf16_ms=lin["bf16"])
                print(row, flush=True)
            rows += case_rows
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    print(f"\ndevice: {torch.cuda.get_device_name()}   (limit: fwd = shared-memory bound of the direct "
          f"scheme; bwd = 3x, fwd+bwd = 4x that; bwd rows time the backward op alone; vs b-last: time over "
          f"the fastest batch-last configuration of the same case and mode)")
    hdr = f"{'case':22} {'mode':8} {'config':46} {'ms':>9} {'peakMB':>8} {'limit':>7} {'orig':>7} {'lin32':>7} {'tf32':>7} {'bf16':>7} {'vs b-last':>9}"
    print(hdr)
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{r['case']:22} {r['mode']:8} {r['config']:46} {r['ms']:9.3f} {r['peak_mb']:8.0f} "
              f"{fmt(r['limit_ms']):>7} {fmt(r['original_ms']):>7} {r['linear_fp32_ms']:7.3f} "
              f"{r['linear_tf32_ms']:7.3f} {r['linear_bf16_ms']:7.3f} "
              + (f"{r['vs_batch_last']:9.3f}" if 'vs_batch_last' in r else f"{'':9}")
              + (f"  ERR {r['error']}" if r['error'] else ""))
        if "graph_ms" in r:
            print(f"{r['case']:22} {r['mode']:8} {'  same, CUDA graph (GPU time)':46} {r['graph_ms']:9.3f} "
                  f"{'':8} {'':>7} {'':>7} {r['linear_fp32_graph_ms']:7.3f}")


if __name__ == "__main__":
    main()
