"""examples/ddp_train.py: 2 CPU processes (gloo, launched by torchrun) end with the parameters
of 1 process trained on the combined batch (SGD, no BatchNorm: equal up to float rounding)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "ddp_train.py")
ARGS = ["--device", "cpu", "--steps", "8", "--batch", "64", "--dim", "8", "--num-grids", "5"]


def _example_module():
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(command, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
def test_two_gloo_processes_equal_one_process_on_combined_batch(tmp_path):
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, EXAMPLE, *ARGS, "--save", str(single)], tmp_path)
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                EXAMPLE, *ARGS, "--save", str(double)], tmp_path)
    assert "on 2 process(es)" in out
    one, two = torch.load(single), torch.load(double)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=f"parameter {name}")
    # The steps did train: the tables moved away from their initial values.
    torch.manual_seed(0)
    initial = _example_module().make_model(8, 5).state_dict()
    assert (one["0.func_parameter"] - initial["0.func_parameter"]).abs().max() > 1e-4
