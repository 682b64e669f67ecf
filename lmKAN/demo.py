"""The main job: train a small lmKAN network and an MLP of similar cost on one task.

    python -m lmKAN.demo [--steps N] [--device cpu|cuda] [--seed S] [--autocast bfloat16|float16]

The task needs no download and is not shaped around the layers: regress the energy of
randomly displaced CH4-like molecules (an analytic potential, lmKAN.molecules) from the 12
Cartesian coordinates of their hydrogens, the lmKAN paper's methane task in miniature, and
report held-out RMSE, parameter counts, FLOPs and time per training step. Both networks cost
about the same arithmetic per sample. Uses lmKAN's CUDA kernels on a GPU when they are
built, the pure-PyTorch path on the CPU otherwise.
"""
import argparse
import time

import torch
from torch import nn

import lmKAN
from lmKAN.molecules import make_ch4_data
from lmKAN.regularization import HessianSchedule, hessian_regularization

N_INPUTS = 12  # the hydrogens' Cartesian coordinates


def make_data(n_train, n_test, generator):
    """Standardised coordinates and energies (the training set's statistics), and the
    energies' spread in eV (to report RMSE in eV)."""
    (x_tr, e_tr, _), (x_te, e_te, _) = make_ch4_data(n_train, generator), make_ch4_data(n_test, generator)
    x_mean, x_std, e_mean, e_std = x_tr.mean(0), x_tr.std(0), e_tr.mean(), e_tr.std()
    scale = lambda x, e: ((x - x_mean) / x_std, (e - e_mean) / e_std)  # noqa: E731
    return scale(x_tr, e_tr), scale(x_te, e_te), e_std.item()


def lmkan_net(width, num_grids):
    """Two 2D lookup layers, batch-first, with a BatchNorm keeping inputs on the grid."""
    return nn.Sequential(
        lmKAN.LMKAN2DLayer(num_grids, N_INPUTS, width, batch_last=False, backward_fast_mode=True),
        nn.BatchNorm1d(width),
        lmKAN.LMKAN2DLayer(num_grids, width, 1, batch_last=False, backward_fast_mode=True),
    )


def mlp_net(width):
    return nn.Sequential(nn.Linear(N_INPUTS, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, 1))


def forward_flops(net):
    """Multiply-adds per sample: 2 per (output, input) for a 2D lookup layer (4 corners per
    pair of inputs), 1 per weight for nn.Linear."""
    total = 0
    for m in net.modules():
        if isinstance(m, lmKAN.LMKAN2DLayer):
            total += 2 * m.output_dim * m.input_dim
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return 2 * total


def train(name, net, data, steps, batch, lr, device, use_hessian, progress, autocast=None):
    (x_tr, y_tr), (x_te, y_te) = data
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hessian = HessianSchedule(steps, start=1e-2, end=1e-6) if use_hessian else None
    gen = torch.Generator(device="cpu").manual_seed(1)
    bar = progress(range(steps), desc=f"{name:>6}")
    start = time.perf_counter()
    for step in bar:
        idx = torch.randint(0, x_tr.shape[0], (batch,), generator=gen).to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = (net(x_tr[idx]).float() - y_tr[idx]).square().mean()
        total = loss + hessian_regularization(net, weight=hessian(step)) if hessian else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(mse=f"{loss.item():.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms_per_step = 1e3 * (time.perf_counter() - start) / steps
    net.eval()
    with torch.no_grad():
        rmse = (net(x_te) - y_te).square().mean().sqrt().item()
    params = sum(p.numel() for p in net.parameters())
    return dict(model=name, rmse=rmse, params=params, flops=forward_flops(net), ms=ms_per_step)


def _progress():
    try:
        from tqdm.auto import tqdm
        return lambda it, desc: tqdm(it, desc=desc, mininterval=0.5, leave=True)
    except ImportError:  # tqdm is an optional extra: fall back to a plain counter
        def plain(it, desc):
            items = list(it)
            for i in items:
                if i % max(1, len(items) // 10) == 0:
                    print(f"{desc}: step {i}/{len(items)}", flush=True)
                yield i
        return plain


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                        help="train both networks under torch.autocast with this dtype (the 2D "
                             "layers' tables follow it: README, Mixed precision); float16 on "
                             "CUDA without a GradScaler can underflow small gradients")
    args = parser.parse_args(argv)
    autocast = None if args.autocast is None else getattr(torch, args.autocast)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_set, test_set, e_std = make_data(50000, 5000, gen)
    data = tuple((x.to(device), y.to(device)) for x, y in (train_set, test_set))
    print(lmKAN.backend_info())
    print(f"task: the energy of displaced CH4-like molecules from the {N_INPUTS} coordinates of "
          f"their hydrogens (lmKAN.molecules); {args.steps} steps of batch {args.batch} on {device}"
          + ("" if autocast is None else f", under autocast {args.autocast}"))
    progress = _progress()
    rows = [
        train("lmKAN", lmkan_net(width=32, num_grids=4), data, args.steps, args.batch, 1e-2, device, True,
              progress, autocast),
        train("MLP", mlp_net(width=23), data, args.steps, args.batch, 3e-3, device, False, progress,
              autocast),
    ]
    for r in rows:
        r["rmse"] *= e_std  # standardised units -> eV
    print(f"\n{'model':<8}{'RMSE (eV)':>11}{'params':>10}{'FLOPs/sample':>14}{'ms/step':>10}")
    for r in rows:
        print(f"{r['model']:<8}{r['rmse']:>11.4f}{r['params']:>10,}{r['flops']:>14,}{r['ms']:>10.2f}")
    print(f"(energies spread {e_std:.3f} eV: the RMSE of always predicting their mean)")
    return rows


if __name__ == "__main__":
    main()
