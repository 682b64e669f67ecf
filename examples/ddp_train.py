"""Data-parallel training of an lmKAN model with DistributedDataParallel.

    # 2 GPUs (backend nccl):
    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 200
    # 2 CPU processes (backend gloo):
    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --device cpu
    # one process, no torchrun: plain training on the whole batch
    python examples/ddp_train.py --device cpu

Every step draws one global batch of a synthetic regression task (the same on every rank,
from the seed and the step), and rank r trains on its r-th equal share. DDP averages the
gradients, so with SGD the parameters after N steps equal (to float rounding) those of a
single process trained on the whole batch: tests/test_ddp.py checks that. The model has no
BatchNorm (its batch statistics would differ per rank). --save writes rank 0's final
state dict.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lmKAN import LMKAN1DLayer, LMKAN2DLayer  # noqa: E402
from lmKAN.regularization import HessianSchedule, hessian_regularization  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256, help="global batch, split over ranks")
    parser.add_argument("--dim", type=int, default=16, help="input features")
    parser.add_argument("--num-grids", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--save", default=None, help="path for rank 0's final state dict")
    return parser.parse_args()


def make_model(dim, num_grids):
    return nn.Sequential(
        LMKAN2DLayer(num_grids, dim, 32, batch_last=False),
        LMKAN1DLayer(num_grids, 32, 8, batch_last=False),
        nn.Linear(8, 1),
    )


def target(x):
    """A smooth non-linear function of pairs of inputs, the task to learn."""
    return (torch.sin(2 * x[:, 0::2]) * torch.tanh(x[:, 1::2])).sum(dim=1, keepdim=True)


def global_batch(step, batch, dim, seed):
    """The step's whole batch, identical on every rank (drawn on the CPU from seed and step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(batch, dim, generator=generator)
    return x, target(x)


def setup_distributed(device_choice):
    """Join the torchrun group if launched by torchrun; return (rank, world size, device)."""
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def main():
    args = parse_args()
    rank, world, device = setup_distributed(args.device)
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {world} processes")
    torch.manual_seed(args.seed)  # same initial parameters on every rank (DDP also broadcasts)
    model = make_model(args.dim, args.num_grids).to(device)
    if world > 1:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        trained = model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    schedule = HessianSchedule(args.steps, start=1e-3, end=1e-6)
    share = args.batch // world
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = global_batch(step, args.batch, args.dim, args.seed)
        x, y = x[rank * share:(rank + 1) * share].to(device), y[rank * share:(rank + 1) * share].to(device)
        task_loss = nn.functional.mse_loss(trained(x), y)
        # Every rank adds the same regulariser; DDP's average leaves its gradient unchanged.
        loss = task_loss + hessian_regularization(model, weight=schedule(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % max(1, args.steps // 5) == 0 or step == args.steps - 1):
            print(f"step {step:5d}  task loss (rank 0 share) {task_loss.item():.5f}", flush=True)
    if rank == 0:
        print(f"{args.steps} steps on {world} process(es), {device}: {time.perf_counter() - start:.2f} s")
        if args.save:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.save)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
