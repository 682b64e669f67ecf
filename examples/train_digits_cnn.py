"""An lmKAN CNN against a conventional CNN of similar cost on scikit-learn's 8x8 digits.

    pip install scikit-learn        # or, from the lmKAN source tree: pip install ".[examples]"
    python examples/train_digits_cnn.py              # CPU or GPU; seconds on 2 CPU cores

The data (1797 images of handwritten digits, shipped inside scikit-learn, nothing
downloaded) are split 75/25 and standardised per pixel (train_digits.py's split). Models:

- lmKAN CNN: LMKAN2DConv2d(G, 1 -> 8, 2x2) -> BatchNorm -> LMKAN2DConv2d(G, 8 -> 16, 3x3,
  stride 2) -> BatchNorm -> LMKAN2DLayer(G, 144 -> 10), trained with the Hessian schedule;
- CNN: Conv2d(1 -> 12, 2x2) -> ReLU -> Conv2d(12 -> 24, 3x3, stride 2) -> ReLU ->
  Linear(216 -> 10), of about the same multiply-adds per image.

Multiply-adds count 2 per (output, input) of a 2D lmKAN layer or conv position (4 corner
products per input pair) and 1 per weight use of nn.Conv2d / nn.Linear. Prints test error,
parameters, multiply-adds per image and training time.
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmKAN import LMKAN2DConv2d, LMKAN2DLayer  # noqa: E402
from lmKAN.regularization import HessianSchedule, hessian_regularization  # noqa: E402
from train_digits import load_digits_split  # noqa: E402  (the same split and scaling)


def lmkan_cnn(num_grids):
    return nn.Sequential(LMKAN2DConv2d(num_grids, 1, 8, 2), nn.BatchNorm2d(8),
                         LMKAN2DConv2d(num_grids, 8, 16, 3, stride=2), nn.BatchNorm2d(16),
                         nn.Flatten(), LMKAN2DLayer(num_grids, 144, 10, batch_last=False))


def conventional_cnn():
    return nn.Sequential(nn.Conv2d(1, 12, 2), nn.ReLU(), nn.Conv2d(12, 24, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(216, 10))


def multiply_adds(model, image=(1, 8, 8)):
    """Per image, by running one image through the model and counting at each layer."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, LMKAN2DConv2d):
            total += 2 * module.input_dim * output.numel()
        elif isinstance(module, LMKAN2DLayer):
            total += 2 * module.input_dim * module.output_dim
        elif isinstance(module, nn.Conv2d):
            total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (LMKAN2DConv2d, LMKAN2DLayer, nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        model(torch.zeros(1, *image, device=device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return total


def progress(iterable, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return iterable
    return tqdm(iterable, desc=desc, mininterval=0.5)


def train(name, model, data, args, hessian):
    (x, y), _ = data
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(x) + args.batch - 1) // args.batch)
    schedule = HessianSchedule(steps, 1e-3, 1e-6) if hessian else None
    gen = torch.Generator().manual_seed(args.seed)
    step, start = 0, time.perf_counter()
    for _ in progress(range(args.epochs), f"{name:>10}"):
        for index in torch.randperm(len(x), generator=gen).split(args.batch):
            index = index.to(x.device)
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            if schedule is not None:
                loss = loss + hessian_regularization(model, weight=schedule(step))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    _, (x_te, y_te) = data
    with torch.no_grad():
        error = (model(x_te).argmax(1) != y_te).float().mean().item()
    return dict(model=name, error=error, params=sum(p.numel() for p in model.parameters()),
                madds=multiply_adds(model), seconds=seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-grids", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1:
        parser.error(f"--epochs and --batch must be at least 1, got {args.epochs} and {args.batch}")
    device = torch.device(args.device)
    (x_tr, y_tr), (x_te, y_te) = load_digits_split(device, args.seed)
    data = ((x_tr.reshape(-1, 1, 8, 8), y_tr), (x_te.reshape(-1, 1, 8, 8), y_te))
    torch.manual_seed(args.seed)
    rows = [train("lmKAN CNN", lmkan_cnn(args.num_grids).to(device), data, args, hessian=True),
            train("CNN", conventional_cnn().to(device), data, args, hessian=False)]
    print(f"\n{'model':<10}{'test error':>11}{'params':>9}{'mult-adds':>11}{'train s':>9}  ({device})")
    for r in rows:
        print(f"{r['model']:<10}{100 * r['error']:>10.2f}%{r['params']:>9,}{r['madds']:>11,}"
              f"{r['seconds']:>9.1f}")
    return rows


if __name__ == "__main__":
    main()
