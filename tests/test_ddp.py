"""examples/ddp_train.py: 2 processes launched by torchrun (gloo on the CPU, NCCL on two GPUs)
end with the parameters of 1 process trained on the combined batch (SGD, no BatchNorm: equal
up to float rounding)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import load_module

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "ddp_train.py")
ARGS = ["--device", "cpu", "--steps", "8", "--batch", "64", "--dim", "8", "--num-grids", "5"]


def _example_module():
    return load_module(EXAMPLE, "ddp_train")


def _run(command, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _two_processes_equal_one(tmp_path, args):
    """Train once in one process and once in two (torchrun); the parameters must agree."""
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, EXAMPLE, *args, "--save", str(single)], tmp_path)
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                EXAMPLE, *args, "--save", str(double)], tmp_path)
    assert "on 2 process(es)" in out
    one, two = torch.load(single, map_location="cpu"), torch.load(double, map_location="cpu")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=f"parameter {name}")
    # The steps did train: the tables moved away from their initial values.
    torch.manual_seed(0)
    initial = _example_module().make_model(8, 5).state_dict()
    assert (one["0.func_parameter"] - initial["0.func_parameter"]).abs().max() > 1e-4


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
def test_two_gloo_processes_equal_one_process_on_combined_batch(tmp_path):
    _two_processes_equal_one(tmp_path, ARGS)


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_available()
                    or not dist.is_nccl_available(), reason="needs two GPUs and NCCL")
def test_two_gpus_nccl_equal_one_gpu_on_combined_batch(tmp_path):
    """The CUDA kernels under DistributedDataParallel (NCCL), one process per GPU."""
    args = [a if a != "cpu" else "cuda" for a in ARGS]
    _two_processes_equal_one(tmp_path, args)
