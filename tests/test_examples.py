"""The examples run end to end: train_digits.py and train_digits_cnn.py (1 epoch; they need
scikit-learn and are skipped without it), train_forces.py (a few steps)."""
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


def test_train_forces_runs_on_the_cpu():
    """examples/train_forces.py: energies and forces (create_graph=True through both
    models), a few steps on a small data set."""
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_forces.py"), "--steps", "15",
                             "--train", "300", "--test", "60", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["lmKAN"], ["MLP"])]
    assert [r[0] for r in rows] == ["lmKAN", "MLP"]
    for r in rows:  # energy RMSE, force RMSE: finite numbers
        assert all(float(v) == float(v) and float(v) < 1e6 for v in r[1:3])


def test_train_digits_cnn_one_epoch():
    pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_digits_cnn.py"), "--epochs", "1",
                             "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("lmKAN CNN", "CNN "))]
    assert len(rows) == 2 and all(r[-4].endswith("%") for r in rows)
