"""tools/time_run_chunks.py's arguments: malformed chunk sizes and rounds are refused before any
process starts, naming what was given (its timings need a GPU: docs/decisions.md, "Chunks for
16-bit rows")."""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                      "time_run_chunks.py")


@pytest.mark.parametrize("args, message", [
    (["--chunks", "24,x"], "--chunks takes integers (MiB) separated by commas, got '24,x'"),
    (["--chunks", "24,0"], "--chunks needs sizes >= 1 MiB and --rounds >= 1, got '24,0', 2"),
    (["--rounds", "0"], "--chunks needs sizes >= 1 MiB and --rounds >= 1, got '24,32,48,16', 0"),
])
def test_refuses_malformed_arguments(args, message):
    run = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
