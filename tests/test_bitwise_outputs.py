"""tools/bitwise_outputs.py: its case list and its comparison of two dumps (the dumps
themselves need a GPU)."""
import os

import pytest
import torch
from conftest import load_module

TOOL_PATH = os.path.join(os.path.dirname(__file__), "..", "tools", "bitwise_outputs.py")


@pytest.fixture(scope="module")
def tool():
    return load_module(TOOL_PATH, "bitwise_outputs")


def test_cases_reach_every_packing_branch(tool):
    cases = list(tool.cases())
    assert len(cases) == len(set(cases)) == 441
    widths = {n_out for _, _, n_out, _, _, _ in cases}
    pairs = {n_in // 2 for _, n_in, _, _, _, _ in cases}
    assert {1, 2, 5, 8} <= widths  # the few-outputs kernels' packed widths 1, 2, 4 and 8
    assert any(w % 32 for w in widths if w > 8)  # a partial output tile
    assert any(p % 4 for p in pairs) and any(p % 4 == 0 for p in pairs)  # scalar and vector loads
    assert any(p > 32 and p % 32 for p in pairs)  # a partial group of 32 pairs
    for _, _, _, _, params_dtype, table in cases:  # 16-bit parameters: their own table only
        assert params_dtype == torch.float32 or table in (None, params_dtype)


def _dump(path, values):
    torch.save({"case": tuple(torch.tensor(v, dtype=torch.float64) for v in values)}, path)


def test_compare_flags_one_changed_bit(tool, tmp_path, capsys):
    a, b, c = (str(tmp_path / n) for n in ("a.pt", "b.pt", "c.pt"))
    _dump(a, ([1.0, 2.0], [3.0], [4.0]))
    _dump(b, ([1.0, 2.0], [3.0], [4.0]))
    _dump(c, ([1.0, 2.0], [3.0], [float.fromhex("0x1.0000000000001p2")]))  # 4 + 1 ulp (float64)
    assert tool.compare(a, b) == 0
    assert "0 differ" in capsys.readouterr().out
    assert tool.compare(a, c) == 1
    assert "1 differ" in capsys.readouterr().out


def test_compare_refuses_dumps_of_other_cases(tool, tmp_path, capsys):
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    _dump(a, ([1.0], [1.0], [1.0]))
    torch.save({"other": (torch.ones(1),) * 3}, b)
    assert tool.compare(a, b) == 1
    assert "different cases" in capsys.readouterr().out


def test_usage_without_arguments(tool, capsys):
    assert tool.main([]) == 2
    assert "bitwise" in capsys.readouterr().out.lower()
