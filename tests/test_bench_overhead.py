"""benchmarks/bench_overhead.py (the per-call cost of small models) runs on the CPU and writes
its rows; on the GPU machine it gives the figures of issue 16's lean-call-path targets."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_overhead  # noqa: E402


def test_bench_overhead_runs_on_cpu(tmp_path, capsys):
    path = tmp_path / "overhead.json"
    bench_overhead.main(["--device", "cpu", "--calls", "10", "--samples", "1", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["device"] == "CPU"
    cases = [row["case"] for row in report["rows"]]
    assert cases == ["lmKAN 2D forward, no grad", "nn.Linear forward, no grad",
                     "lmKAN 2D forward, bf16", "nn.Linear forward, bf16",
                     "lmKAN training step", "MLP training step"]
    assert all(row["us_per_call"] > 0 and row["target_us"] is None for row in report["rows"])
    assert report["step_ratio"] > 0 and len(report["step_ratios"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("MLP training step")
    assert lines[-1].startswith("step time lmKAN / MLP: ")
