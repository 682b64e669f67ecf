"""Peak memory of the CPU path (the pure-PyTorch reference) on a wide layer.

    python benchmarks/bench_cpu_memory.py [--batch 65536] [--inputs 512] [--outputs 16]

Each case runs in a fresh process; the figures are the growth of the process's peak resident
memory (ru_maxrss) over what it held after creating the layer and the input, in MiB, beside
the sizes of the input and the output, and the call's wall time (one call: the peak is what
is measured). The table is printed last.
"""
import argparse
import json
import subprocess
import sys

CASE = r"""
import resource, sys, time, torch
from lmKAN import LMKAN2DLayer
batch, n_in, n_out, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
layer = LMKAN2DLayer(8, n_in, n_out, batch_last=False)
x = torch.randn(batch, n_in, requires_grad=(mode == "fwd+bwd"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "fwd":
    with torch.no_grad():
        y = layer(x)
else:
    layer(x).square().sum().backward()
seconds = time.perf_counter() - start
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, seconds)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--outputs", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        out = subprocess.run([sys.executable, "-c", CASE, str(args.batch), str(args.inputs),
                              str(args.outputs), mode], capture_output=True, text=True, check=True)
        mib, seconds = map(float, out.stdout.strip().splitlines()[-1].split())
        rows.append((mode, mib, seconds))
    x_mib = args.batch * args.inputs * 4 / 2 ** 20
    y_mib = args.batch * args.outputs * 4 / 2 ** 20
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "inputs": args.inputs, "outputs": args.outputs,
                       "input_mib": x_mib, "output_mib": y_mib,
                       "peak_growth_mib": {mode: mib for mode, mib, _ in rows},
                       "seconds": {mode: sec for mode, _, sec in rows}}, f, indent=1)
    print(f"LMKAN2DLayer(8, {args.inputs}, {args.outputs}) on the CPU, B={args.batch}: input "
          f"{x_mib:.0f} MiB, output {y_mib:.0f} MiB")
    for mode, mib, seconds in rows:
        print(f"{mode:8s} peak growth {mib:8.0f} MiB  {seconds:6.2f} s")


if __name__ == "__main__":
    main()
