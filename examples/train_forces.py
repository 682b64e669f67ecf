"""Train on energies and forces of displaced CH4-like molecules: lmKAN against an MLP.

    python examples/train_forces.py                    # CPU: ~10 s on 2 cores
    python examples/train_forces.py --steps 3000 --num-grids 6 --width 48

Nothing is downloaded (lmKAN.molecules): each configuration is a carbon at the origin and
four hydrogens at the tetrahedral positions (C-H 1.09 A) displaced by N(0, 0.12 A) per
coordinate; its energy (eV) is an analytic potential (Morse C-H bonds, harmonic H-C-H angles
around 109.47 deg, an exponential H-H repulsion) and its forces -dE/dr by autograd. Inputs
are the 12 Cartesian coordinates of the hydrogens relative to the carbon (the lmKAN paper's
Cartesian-components representation), standardised with the training set's statistics.

Models (similar inference cost):
- lmKAN: LMKAN2DLayer(G, 12 -> W) -> LayerNorm -> LMKAN2DLayer(G, W -> 1);
- MLP: Linear(12 -> H) -> SiLU -> Linear(H -> H) -> SiLU -> Linear(H -> 1), H chosen so that
  its multiply-adds per sample match the lmKAN model's (2 per output and input of a 2D
  lmKAN layer: 4 corner products per input pair).

Both are trained on loss = MSE(E) + force_weight * MSE(F), the predicted forces taken as
-dE/dx with create_graph=True, so the loss's gradient is a second derivative through the
model: on the CPU through lmKAN's pure-PyTorch path, on a GPU through its CUDA kernels (the
backward ops' own autograd; docs/spec.md, "Second derivatives"). Reports energy and force
RMSE on held-out configurations, parameters, multiply-adds and time per training step.
"""
import argparse
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lmKAN import LMKAN2DLayer  # noqa: E402
from lmKAN.molecules import make_ch4_data  # noqa: E402

class Standardise(nn.Module):
    """(x - mean) / std with the training set's statistics, fixed (a per-sample function, so
    forces by autograd stay per-sample, unlike a BatchNorm in training mode)."""

    def __init__(self, x):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0))

    def forward(self, x):
        return (x - self.mean) / self.std


def lmkan_model(x_train, num_grids, width):
    return nn.Sequential(Standardise(x_train),
                         LMKAN2DLayer(num_grids, 12, width, batch_last=False),
                         nn.LayerNorm(width, elementwise_affine=False),
                         LMKAN2DLayer(num_grids, width, 1, batch_last=False))


def mlp_model(x_train, hidden):
    return nn.Sequential(Standardise(x_train), nn.Linear(12, hidden), nn.SiLU(),
                         nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))


def multiply_adds(model):
    """Per sample: 2 per (output, input) of a 2D lmKAN layer, 1 per weight of a Linear."""
    total = 0
    for m in model.modules():
        if isinstance(m, LMKAN2DLayer):
            total += 2 * m.input_dim * m.output_dim
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def mlp_width_matching(target):
    """The hidden width H whose MLP (12 -> H -> H -> 1) has about `target` multiply-adds."""
    return max(2, round(-6.5 + math.sqrt(6.5 ** 2 + target)))


def energy_and_forces(model, x, create_graph):
    x = x.detach().requires_grad_(True)
    e = model(x)
    (grad,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return e, -grad


def progress(iterable, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return iterable
    return tqdm(iterable, desc=desc, mininterval=0.5)


def train(name, model, data, args, device):
    (x_tr, e_tr, f_tr), (x_te, e_te, f_te) = [[t.to(device) for t in part] for part in data]
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    e_scale, f_scale = e_tr.std(), f_tr.std()  # losses in units of the data's spread
    start = time.perf_counter()
    for _ in progress(range(args.steps), f"{name:>6}"):
        idx = torch.randint(0, len(x_tr), (args.batch,), generator=gen).to(device)
        e, f = energy_and_forces(model, x_tr[idx], create_graph=True)
        loss = (((e - e_tr[idx]) / e_scale).square().mean()
                + args.force_weight * ((f - f_tr[idx]) / f_scale).square().mean())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - start) / args.steps
    e, f = energy_and_forces(model, x_te, create_graph=False)
    return dict(model=name, energy_rmse=(e.detach() - e_te).square().mean().sqrt().item(),
                force_rmse=(f - f_te).square().mean().sqrt().item(),
                params=sum(p.numel() for p in model.parameters()), madds=multiply_adds(model),
                ms=ms, device=str(device))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train", type=int, default=4000, help="training configurations")
    parser.add_argument("--test", type=int, default=1000, help="held-out configurations")
    parser.add_argument("--num-grids", type=int, default=4)
    parser.add_argument("--width", type=int, default=24, help="lmKAN hidden width")
    parser.add_argument("--force-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "train", "test", "num_grids", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = (make_ch4_data(args.train, gen), make_ch4_data(args.test, gen))
    x_train = data[0][0]
    kan = lmkan_model(x_train, args.num_grids, args.width)
    mlp = mlp_model(x_train, mlp_width_matching(multiply_adds(kan)))
    print(f"{args.train} training / {args.test} held-out configurations; energies "
          f"{data[0][1].mean():.3f} +- {data[0][1].std():.3f} eV, force components "
          f"+- {data[0][2].std():.3f} eV/A; {args.steps} steps of batch {args.batch}")
    rows = [train("lmKAN", kan, data, args, device), train("MLP", mlp, data, args, device)]
    print(f"\n{'model':<7}{'energy RMSE':>13}{'force RMSE':>12}{'params':>9}{'mult-adds':>11}"
          f"{'ms/step':>9}  device")
    for r in rows:
        print(f"{r['model']:<7}{r['energy_rmse']:>13.4f}{r['force_rmse']:>12.4f}{r['params']:>9,}"
              f"{r['madds']:>11,}{r['ms']:>9.2f}  {r['device']}")
    print("(RMSE in eV and eV/A on held-out configurations)")
    return rows


if __name__ == "__main__":
    main()
