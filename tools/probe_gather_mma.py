"""Probe: the 2D forward with a bfloat16 table as a gather MMA on tensor cores, to measure
before building it into lmKAN (docs/performance.md, "Leads"; issue 17's 40 ms target).

    python tools/probe_gather_mma.py [--grids 16] [--dim 512] [--batch 262144] [--warps 16]
                                     [--warp-samples 32] [--configs 16x32,32x16,16x16]
    python tools/probe_gather_mma.py --emulate      # on the CPU: the lane mapping alone

Builds tools/probe_gather_mma.cu with torch.utils.cpp_extension (nvcc, about a minute; set
CXX=/usr/bin/g++ as for the package: README, "The C++ compiler"), then
- checks y against a float64 reference on the bfloat16-rounded table at 4096 samples: the
  relative L2 error must be within the package's 1e-5 contract (the weights are split into
  two bfloat16 terms, residual <= 2^-18 of a weight);
- times the probe (CUDA events, median of --reps) beside LMKAN2DLayer's forward with a
  bfloat16 table (table_dtype=torch.bfloat16, its tuned configuration) and nn.Linear under
  bfloat16 autocast, at the same shape.
A launch shape is warps x samples per warp: 8 or 16 warps of 32 samples (64 accumulators a
thread), or 16, 24 or 32 warps of 16 (32 accumulators: 32 warps fit 64 registers, twice the
warps per scheduler of 16 x 32); --configs times several in one run (each checked; 24 x 16
needs a batch that is a multiple of 384, e.g. --batch 258048).
The probe uses a uniform grid on [-1, 1] (the package's grid is non-uniform: its cell costs a
few more instructions) and needs num_grids small enough for two copies of a 64-output slice
in two ring buffers (G <= 20 on 227 KB). Not part of the package. Prints the table last.

--emulate replays the kernel's lane-level work for one warp on the CPU (no GPU): the
ldmatrix row each lane addresses in the packed, swizzled slices, the fragments as mma.sync
distributes them, the products in float64, and counts the bank quads each 8x8 matrix
touches. It checks the mapping (its y against the reference) and the conflict-free claim
(one wavefront per matrix) before any GPU time is spent; tests/test_probe_gather_mma.py runs it.
"""
import argparse
import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
W = 64  # outputs per tile of the probe


def build():
    from torch.utils.cpp_extension import load
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    return load(name="lmkan_probe_gather_mma", sources=[os.path.join(HERE, "probe_gather_mma.cu")],
                extra_include_paths=[os.path.join(HERE, "..", "csrc")],
                extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"], verbose=False)


def swizzle_index(num_grids, copy, device):
    """idx[r, pc] = the logical 16-byte chunk stored at position pc of row r in `copy`."""
    side = num_grids + 1
    r = torch.arange(side * side, device=device)
    i1, i2 = r // side, r % side
    f = ((i2 + 2 * i1) & 3) | (copy << 2)
    return torch.arange(8, device=device)[None, :] ^ f[:, None]


def pack(table, num_grids):
    """bfloat16 table [P, cells, O] -> [n_tiles, P, 2, cells, 64], two swizzled copies."""
    n_pairs, cells, n_out = table.shape
    t = table.view(n_pairs, cells, n_out // W, W).permute(2, 0, 1, 3).contiguous()
    chunks = t.view(n_out // W, n_pairs, cells, 8, 8)
    copies = []
    for copy in (0, 1):
        idx = swizzle_index(num_grids, copy, table.device)
        idx = idx[None, None, :, :, None].expand_as(chunks)
        copies.append(torch.gather(chunks, 3, idx))
    return torch.stack(copies, dim=2).reshape(n_out // W, n_pairs, 2, cells, W).contiguous()


def cells_of(x, num_grids, lo, inv_h):
    """The probe's cells in its float32 arithmetic: index and d per input."""
    u = (x - lo) * inv_h
    i = torch.clamp(torch.floor(u), 0, num_grids - 1)
    return i.long(), (u - i)


def reference(x, table, num_grids, lo, inv_h):
    """float64 y [O, B] of the bfloat16 table [P, cells, O] (its values exactly)."""
    side = num_grids + 1
    t64 = table.double()
    i, d = cells_of(x, num_grids, lo, inv_h)
    d = d.double()
    y = torch.zeros(table.shape[2], x.shape[1], dtype=torch.float64, device=x.device)
    for p in range(table.shape[0]):
        i1, i2, d1, d2 = i[2 * p], i[2 * p + 1], d[2 * p], d[2 * p + 1]
        row = i1 * side + i2
        for a in (0, 1):
            for b in (0, 1):
                w = (d1 if a else 1 - d1) * (d2 if b else 1 - d2)
                y += (w[:, None] * t64[p, row + a * side + b]).t()
    return y


def emulate(num_grids=5, n_pairs=3, n_out=128, seed=1, warp_samples=32):
    """The kernel's lane mapping for one warp of `warp_samples` samples (32, or 16: groups
    q < 2 only) on the CPU (module docstring). Returns (relative L2 of y against the
    reference, most wavefronts of one 8x8 matrix)."""
    assert warp_samples in (16, 32)
    groups = warp_samples // 8
    torch.manual_seed(seed)
    side, lo = num_grids + 1, -1.0
    inv_h = num_grids / 2.0
    table = (0.1 * torch.randn(n_pairs, side * side, n_out)).bfloat16()
    packed = pack(table, num_grids).double()
    x = 0.6 * torch.randn(2 * n_pairs, warp_samples)
    ref = reference(x, table, num_grids, lo, inv_h)
    idx, d = cells_of(x, num_grids, lo, inv_h)
    bf16 = lambda v: v.float().bfloat16().double()  # noqa: E731 (the kernel's rounding)
    y = torch.zeros(n_out, warp_samples, dtype=torch.float64)
    worst = 1
    lanes = torch.arange(32)
    g, t = lanes >> 2, lanes & 3
    k = ((lanes >> 4) & 1) * 8 + (lanes & 7)  # the ldmatrix row a lane addresses
    sp, corner, half = k >> 2, k & 3, (lanes >> 3) & 1
    copy = sp & 1
    for tile in range(n_out // W):
        acc = torch.zeros(groups, 4, 32, 4, dtype=torch.float64)  # [q][ob][lane][fragment]
        for p in range(n_pairs):
            i1, i2 = idx[2 * p], idx[2 * p + 1]
            d1, d2 = d[2 * p].double(), d[2 * p + 1].double()
            for q in range(groups):
                s = 8 * q + g  # B: weights of sample 8q + g, corners 2 (t & 1) and + 1
                a1 = torch.where((t & 1) == 1, d1[s], 1 - d1[s])
                wa, wb = a1 * (1 - d2[s]), a1 * d2[s]
                hi = torch.stack([bf16(wa), bf16(wb)], 1)
                lo_w = torch.stack([bf16(wa - hi[:, 0]), bf16(wb - hi[:, 1])], 1)
                for j in range(2):
                    in0 = (g == 4 * j + (t >> 1))[:, None]
                    in1 = (g == 4 * j + 2 + (t >> 1))[:, None]
                    sample = 8 * q + 4 * j + sp  # A: the corner row of each lane's k
                    ci1 = i1[sample] + (corner >> 1)
                    ci2 = i2[sample] + (corner & 1)
                    f = ((ci2 + 2 * ci1) & 3) | (copy << 2)
                    row = ci1 * side + ci2
                    for ob in range(4):
                        pos = (2 * ob + half) ^ f
                        pieces = torch.stack([packed[tile, p, copy[L], row[L], 8 * pos[L]:8 * pos[L] + 8]
                                              for L in range(32)])  # [lane][8 outputs]
                        for m in range(4):  # bank quads of matrix m (lanes 8m..8m+7)
                            lm = slice(8 * m, 8 * m + 8)
                            addr = copy[lm] * side * side * 128 + row[lm] * 128 + pos[lm] * 16
                            quads = {}
                            for a, quad in zip(addr.tolist(), (pos[lm] % 8).tolist()):
                                quads.setdefault(quad, set()).add(a)
                            worst = max(worst, max(len(v) for v in quads.values()))
                        mats = pieces.view(4, 8, 8)  # matrix m: rows = lanes 8m..8m+7
                        # .trans: lane T holds M[2t][g], M[2t+1][g] of each matrix; as the
                        # A fragment of m16n8k16 (matrix bit 0: outputs + 8, bit 1: k + 8)
                        A = torch.zeros(16, 16, dtype=torch.float64)
                        for m in range(4):
                            for e in range(2):
                                A[g + 8 * (m & 1), 2 * t + e + 8 * (m >> 1)] = mats[m, 2 * t + e, g]
                        for w in (hi, lo_w):
                            Bm = torch.zeros(16, 8, dtype=torch.float64)
                            b0 = torch.where(in0, w, torch.zeros_like(w))
                            b1 = torch.where(in1, w, torch.zeros_like(w))
                            for e in range(2):
                                Bm[2 * t + e, g] = b0[:, e]
                                Bm[2 * t + 8 + e, g] = b1[:, e]
                            D = A @ Bm
                            acc[q, ob] += torch.stack([D[g, 2 * t], D[g, 2 * t + 1],
                                                       D[g + 8, 2 * t], D[g + 8, 2 * t + 1]], 1)
        for q in range(groups):
            for ob in range(4):
                o = tile * W + ob * 16 + g
                s = 8 * q + 2 * t
                y[o, s], y[o, s + 1] = acc[q, ob, :, 0], acc[q, ob, :, 1]
                y[o + 8, s], y[o + 8, s + 1] = acc[q, ob, :, 2], acc[q, ob, :, 3]
    return ((y - ref).norm() / ref.norm()).item(), worst


def cuda_ms(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=int, default=16)
    ap.add_argument("--dim", type=int, default=512, help="inputs = outputs (a multiple of 64)")
    ap.add_argument("--batch", type=int, default=2 ** 18)
    ap.add_argument("--warps", type=int, default=16, choices=(8, 16, 24, 32))
    ap.add_argument("--warp-samples", type=int, default=32, choices=(16, 32),
                    help="samples per warp (16: half the accumulators)")
    ap.add_argument("--configs", default=None,
                    help="launch shapes WARPSxSAMPLES to time in one run, e.g. 16x32,32x16,16x16 "
                         "(default: --warps x --warp-samples)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--emulate", action="store_true", help="the lane mapping on the CPU")
    args = ap.parse_args(argv)
    if args.emulate:
        rel_l2, worst = emulate(warp_samples=args.warp_samples)
        print(f"emulated warp: relative L2 {rel_l2:.2e} against the reference (contract 1e-5); "
              f"at most {worst} wavefront(s) per 8x8 matrix")
        return rel_l2, worst
    if not torch.cuda.is_available():
        sys.exit("probe_gather_mma: needs a CUDA GPU (sm_80 or newer)")
    if args.dim % W or args.dim % 2:
        sys.exit(f"--dim must be a multiple of {W}, got {args.dim}")
    configs = [(args.warps, args.warp_samples)]
    if args.configs:
        try:
            configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
            if any(len(c) != 2 for c in configs):
                raise ValueError
        except ValueError:
            sys.exit(f"--configs: WARPSxSAMPLES items such as 32x16, got {args.configs!r}")
    for warps, samples in configs:
        if (samples, warps) not in ((32, 8), (32, 16), (16, 16), (16, 24), (16, 32)):
            sys.exit(f"--configs / --warps: 8 or 16 warps of 32 samples, or 16, 24 or 32 of "
                     f"16; got {warps}x{samples}")
        if args.batch % (samples * warps):
            sys.exit(f"--batch must be a multiple of {samples * warps} for {warps}x{samples}, "
                     f"got {args.batch}")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    G, P, O = args.grids, args.dim // 2, args.dim
    cells = (G + 1) ** 2
    lo, inv_h = -1.0, G / 2.0
    probe = build()
    table = (0.1 * torch.randn(P, cells, O, device=dev)).bfloat16()
    packed = pack(table, G)

    x_small = 0.6 * torch.randn(2 * P, 4608, device=dev)  # a multiple of every shape's samples
    ref = reference(x_small, table, G, lo, inv_h)
    errors = []
    for warps, samples in configs:
        y_small = probe.gather_mma_forward(x_small, packed, G, lo, inv_h, warps, samples)
        errors.append(((y_small.double() - ref).norm() / ref.norm()).item())

    x = 0.6 * torch.randn(2 * P, args.batch, device=dev)
    rows = []
    for warps, samples in configs:
        def run(w=warps, s=samples):
            return probe.gather_mma_forward(x, packed, G, lo, inv_h, w, s)
        rows.append((f"gather MMA probe {warps}x{samples} ({32 * warps} threads)",
                     cuda_ms(run, args.reps)))
    from lmKAN import LMKAN2DLayer
    layer = LMKAN2DLayer(G, args.dim, args.dim, table_dtype=torch.bfloat16).to(dev)
    with torch.no_grad():
        rows.append(("LMKAN2DLayer, table_dtype=bfloat16", cuda_ms(lambda: layer(x), args.reps)))
        layer_f32 = LMKAN2DLayer(G, args.dim, args.dim).to(dev)
        rows.append(("LMKAN2DLayer, float32 table", cuda_ms(lambda: layer_f32(x), args.reps)))
        linear = torch.nn.Linear(args.dim, args.dim).to(dev)
        x_bf = x.t().contiguous()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rows.append(("nn.Linear, autocast bfloat16", cuda_ms(lambda: linear(x_bf), args.reps)))
    # the shared-memory bound of the lookups with a 16-bit table (docs/performance.md)
    sms, clock = torch.cuda.get_device_properties(dev).multi_processor_count, 1.98e9
    bound_ms = args.batch * O * P * 4 * 2 / 128 / (sms * clock) * 1e3
    print(f"{torch.cuda.get_device_name(dev)}: G={G} {args.dim}->{args.dim} B={args.batch}")
    for (warps, samples), rel_l2 in zip(configs, errors):
        print(f"probe {warps}x{samples}: y against the float64 reference on the rounded table "
              f"(B=4608): relative L2 {rel_l2:.2e} "
              f"({'within' if rel_l2 <= 1e-5 else 'OUTSIDE'} the 1e-5 contract)")
    print(f"16-bit lookup bound (shared-memory bytes at {clock / 1e9:.2f} GHz): {bound_ms:.2f} ms")
    for name, ms in rows:
        print(f"  {name:<44s}{ms:9.3f} ms")


if __name__ == "__main__":
    main()
