"""examples/train_digits.py runs end to end (1 epoch; needs scikit-learn, skipped without it)."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def test_train_digits_one_epoch(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_digits.py"), "--epochs", "1",
                             "--device", "cpu", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lmKAN 2D + Hessian schedule" in result.stdout and "MLP (similar FLOPs)" in result.stdout
    assert (tmp_path / "digits_lmkan_layer0.png").stat().st_size > 0
