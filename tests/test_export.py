"""Export for deployment (issue 20, item 5): torch.export with a dynamic batch, then
AOTInductor, loaded in a fresh process that imports lmKAN, equal to eager.

The model holds every lmKAN module kind: LMKAN2DConv2d, LMKAN1DConv2d, LMKAN2DLayer,
LMKAN1DLayer. AOTInductor compiles C++ with the compiler `CXX` names (README, "Export").
"""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lmKAN import LMKAN1DConv2d, LMKAN1DLayer, LMKAN2DConv2d, LMKAN2DLayer

from conftest import requires_gpu

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

LOAD_AND_RUN = """
import sys, torch
import lmKAN  # registers the lmkan ops the package may call
package, inputs, expected = sys.argv[1:4]
model = torch._inductor.aoti_load_package(package)
x, want = torch.load(inputs), torch.load(expected)
got = model(x)
err = ((got - want).norm() / want.norm()).item()
print(f"relative L2 {err:.3e}")
sys.exit(0 if err <= 1e-5 else 1)
"""


def _model(device):
    torch.manual_seed(0)
    return nn.Sequential(
        LMKAN2DConv2d(6, 2, 6, 3, padding=1), nn.BatchNorm2d(6),
        LMKAN1DConv2d(6, 6, 4, 2, stride=2), nn.Flatten(),
        LMKAN2DLayer(6, 4 * 4 * 4, 16, batch_last=False), nn.LayerNorm(16),
        LMKAN1DLayer(6, 16, 3, batch_last=False)).to(device).eval()


def _export_and_check(device, tmp_path):
    model = _model(device)
    example = torch.randn(5, 2, 8, 8, device=device)
    # max 65535: on CUDA, torch's batch norm adds the guard N <= 65535 (its cuDNN choice), and
    # export refuses a range wider than the guards it traced
    batch = torch.export.Dim("batch", min=2, max=65535)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    package = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "lmkan_model.pt2"))
    x = torch.randn(37, 2, 8, 8, device=device)  # another batch size than the example's
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))
        torch.save(x, tmp_path / "x.pt")
        torch.save(model(x), tmp_path / "y.pt")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, package, str(tmp_path / "x.pt"),
                             str(tmp_path / "y.pt")], capture_output=True, text=True, env=env,
                            timeout=600)
    hint = ("\n(SIGSEGV: was the package compiled with a CXX that links libstdc++ statically? "
            "README, 'Export')" if result.returncode == -11 else "")
    assert result.returncode == 0, result.stdout + result.stderr + hint


def test_export_and_aoti_cpu(tmp_path):
    _export_and_check("cpu", tmp_path)


@requires_gpu
def test_export_and_aoti_cuda(tmp_path):
    pytest.importorskip("triton")
    _export_and_check("cuda", tmp_path)
