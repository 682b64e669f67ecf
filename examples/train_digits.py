"""Train an lmKAN classifier with the Hessian schedule on scikit-learn's digits, against an MLP.

    pip install scikit-learn matplotlib     # or, from the lmKAN source tree: pip install ".[examples]"
    python examples/train_digits.py                  # CPU or GPU; seconds on 2 CPU cores
    python examples/train_digits.py --epochs 5 --out /tmp/digits

The data set (1797 8x8 images of handwritten digits, 10 classes) ships inside scikit-learn:
nothing is downloaded. Models, on standardised pixels:

- lmKAN: LMKAN2DLayer(G, 64 -> 32) -> LMKAN2DLayer(G, 32 -> 10), trained with
  task loss + hessian_regularization(model, weight=schedule(step)), schedule a HessianSchedule;
- MLP: Linear(64 -> H) -> ReLU -> Linear(H -> 10), H chosen so that its forward FLOPs
  match the lmKAN model's.

FLOPs per sample count the forward's multiplies and adds: a Linear layer 2 * N_in * N_out;
a 2D lmKAN layer 4 * N_in * N_out (per output and input pair, 4 corner products and 4
sums: the bilinear weights themselves are per input pair, shared by every output, and left
out). It prints test error, parameters, FLOPs and wall-clock, and writes plots of learned
functions (layer.plot_functions, the 8 most varied tables per layer) to --out.
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lmKAN import LMKAN2DLayer  # noqa: E402
from lmKAN.regularization import HessianSchedule, hessian_regularization  # noqa: E402


def load_digits_split(device, seed):
    """Standardised digits, split 75/25 into train and test (fixed by `seed`)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.75 * len(x))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)  # constant pixels stay 0
    x = (x - mean) / std
    return (x[train].to(device), y[train].to(device)), (x[test].to(device), y[test].to(device))


def kan_model(num_grids, hidden):
    return nn.Sequential(LMKAN2DLayer(num_grids, 64, hidden, batch_last=False, backward_fast_mode=True),
                         LMKAN2DLayer(num_grids, hidden, 10, batch_last=False, backward_fast_mode=True))


def flops_per_sample(model):
    """Forward multiplies and adds per sample (see the module docstring for the count)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, LMKAN2DLayer):
            total += 4 * module.input_dim * module.output_dim
    return total


def mlp_with_flops(target_flops):
    hidden = max(1, round(target_flops / (2 * (64 + 10))))
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model, data, epochs, batch, lr, hessian=None, seed=0):
    """Adam on cross-entropy; `hessian`: (start, end) weights of the Hessian schedule or None."""
    (x, y), _ = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(x) + batch - 1) // batch
    schedule = HessianSchedule(epochs * steps_per_epoch, *hessian) if hessian else None
    generator = torch.Generator().manual_seed(seed)
    step = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(batch):
            index = index.to(x.device)
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            if schedule is not None:
                loss = loss + hessian_regularization(model, weight=schedule(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def test_error(model, data):
    _, (x, y) = data
    return (model(x).argmax(dim=1) != y).float().mean().item()


def most_varied_functions(layer, count):
    """(pair, output) of the `count` tables that vary most over the grid: the learned shapes."""
    spread = layer.func_parameter.detach().flatten(0, 1).std(dim=0)  # [output, pair]
    top = spread.flatten().topk(min(count, spread.numel())).indices.tolist()
    n_pairs = spread.shape[1]
    return [(i % n_pairs, i // n_pairs) for i in top]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-grids", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32, help="lmKAN hidden width")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hessian-start", type=float, default=1e-3)
    parser.add_argument("--hessian-end", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="digits_output", help="folder for the plots")
    return parser.parse_args()


def main():
    args = parse_args()
    device = torch.device(args.device)
    data = load_digits_split(device, args.seed)
    torch.manual_seed(args.seed)
    kan = kan_model(args.num_grids, args.hidden).to(device)
    mlp = mlp_with_flops(flops_per_sample(kan)).to(device)
    rows = []
    for name, model, hessian in (("lmKAN 2D + Hessian schedule", kan, (args.hessian_start, args.hessian_end)),
                                 ("MLP (similar FLOPs)", mlp, None)):
        seconds = train(model, data, args.epochs, args.batch, args.lr, hessian, args.seed)
        rows.append((name, test_error(model, data), sum(p.numel() for p in model.parameters()),
                     flops_per_sample(model), seconds))
    os.makedirs(args.out, exist_ok=True)
    paths = []
    try:
        for i, layer in enumerate(kan):
            path = os.path.join(args.out, f"digits_lmkan_layer{i}.png")
            layer.plot_functions(path, pairs=most_varied_functions(layer, 8))
            paths.append(path)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
    print(f"digits, {args.epochs} epochs on {device}; test set {len(data[1][1])} images")
    print(f"{'model':30s} {'test error':>10s} {'params':>8s} {'FLOPs/sample':>13s} {'train time':>11s}")
    for name, error, params, flops, seconds in rows:
        print(f"{name:30s} {100 * error:9.2f}% {params:8,d} {flops:13,d} {seconds:10.1f}s")
    for path in paths:
        print("learned functions:", path)


if __name__ == "__main__":
    main()
