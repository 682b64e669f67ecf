"""Automatic tile/block choice (lmKAN.tuning): cache, keys, resolution, lmKAN.tune, CLI, and the
package's structure (no import cycle, one device cache, per-layer state owned by the layer).

CPU tests drive the whole resolution path with a fake timer (the kernels are declared
present and the timer returns a figure per configuration); GPU tests time for real.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import lmKAN
from lmKAN import LMKAN2DLayer, ops, tuning
from conftest import requires_gpu, run_python

WORKTREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory and an empty in-memory cache."""
    monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(tuning.ENV_TUNING, raising=False)
    tuning.clear_memory_cache()
    yield
    tuning.clear_memory_cache()


class FakeTimer:
    """Stands for the CUDA-event timer: ms per choice from `table` (else 10 ms), and a log
    of the choices timed. tile 16 with block 256 (and fast mode) is the fastest."""

    def __init__(self, refuse=()):
        self.calls = []
        self.refuse = refuse

    def __call__(self, run, choice):
        self.calls.append(choice)
        if choice["tile_size"] in self.refuse:
            raise RuntimeError("refused by the kernel")
        ms = 10.0 - (choice["tile_size"] == 16) * 3 - (choice["block_size"] == 256) * 2
        return ms - choice.get("fast_mode", False) * 1


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend CPU tensors run kernels on a GPU called "Fake GPU"; return the fake timer."""
    timer = FakeTimer()
    monkeypatch.setattr(tuning.search, "_timer", timer)
    monkeypatch.setattr(tuning.resolve, "_kernels_apply", lambda layer, x: True)
    monkeypatch.setattr(tuning.resolve, "_has_backward_kernel", lambda: True)
    monkeypatch.setattr(tuning.key, "device_signature", lambda device: ("Fake GPU", "9.0"))
    return timer


def _layer(**kwargs):
    return LMKAN2DLayer(8, 6, 5, **kwargs)


def _x(batch=40):
    return torch.randn(6, batch, requires_grad=True)


def _config(layer, x, needs_backward):
    """What the layer's forward resolves, through the resolver the layer owns."""
    return layer._launch_resolver.config(layer, x, needs_backward)


# --- cache file ---------------------------------------------------------------------------

def _key(**changes):
    fields = dict(gpu="Fake GPU", capability="9.0", torch_version="2.14", lmkan_version="0.1.0",
                  layer="LMKAN2DLayer", input_dim=6, output_dim=5, num_grids=8, batch_bucket=64,
                  layout="batch_last", mode="forward", dtype="float32",
                  searched="tile_size=auto,block_size=auto")
    fields.update(changes)
    return tuning.TuningKey(**fields)


ENTRY = {"config": {"tile_size": 16, "block_size": 256}, "ms": 1.5, "default_ms": 2.0}


def test_cache_round_trip(tmp_path):
    tuning.store(_key(), ENTRY)
    path = tuning.cache_path()
    assert path == str(tmp_path / "cache" / "tuning.json")
    data = json.load(open(path))
    assert data["format"] == tuning.CACHE_FORMAT and _key().as_string() in data["entries"]
    tuning.clear_memory_cache()  # as a fresh process would start
    assert tuning.lookup(_key()) == ENTRY
    assert tuning.lookup(_key(num_grids=9)) is None


def test_cache_directory_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_path() == str(tmp_path / "xdg" / "lmKAN" / "tuning.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_path() == str(tmp_path / "home" / ".cache" / "lmKAN" / "tuning.json")
    monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(tmp_path / "mine"))
    assert tuning.cache_path() == str(tmp_path / "mine" / "tuning.json")


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"format": "other", "entries": {}}'])
def test_corrupt_or_foreign_file_warns_once_and_is_replaced(content):
    path = tuning.cache_path()
    os.makedirs(os.path.dirname(path))
    open(path, "w").write(content)
    with pytest.warns(RuntimeWarning, match="tuning cache"):
        assert tuning.lookup(_key()) is None
    tuning.clear_memory_cache()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second read of the same file stays quiet
        assert tuning.lookup(_key()) is None
        tuning.store(_key(), ENTRY)
    assert json.load(open(path))["entries"][_key().as_string()] == ENTRY


def test_entries_of_other_processes_are_merged():
    tuning.store(_key(), ENTRY)
    other = _key(num_grids=26)
    run_python(f"import sys; sys.path.insert(0, {WORKTREE!r}); from lmKAN import tuning\n"
               f"tuning.store(tuning.TuningKey(*{tuple(other)!r}), {ENTRY!r})")
    tuning.store(_key(num_grids=3), ENTRY)  # re-reads the file before writing it
    entries = json.load(open(tuning.cache_path()))["entries"]
    assert {_key().as_string(), other.as_string(), _key(num_grids=3).as_string()} <= set(entries)
    assert not [f for f in os.listdir(os.path.dirname(tuning.cache_path())) if f.startswith(".")]


def test_unwritable_cache_keeps_choices_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(blocker / "sub"))  # a directory inside a file
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        tuning.store(_key(), ENTRY)
    assert tuning.lookup(_key()) == ENTRY


# --- keys ---------------------------------------------------------------------------------

def test_batch_bucket():
    assert [tuning.batch_bucket(b) for b in (0, 1, 2, 3, 1000, 1024, 1025)] == [1, 1, 2, 4, 1024, 1024, 2048]
    assert tuning.batch_bucket(10**9) == tuning.BATCH_BUCKET_CAP


def test_key_names_the_kernel_build(monkeypatch):
    """Keys carry the digest of the kernel sources the build recorded: a rebuild after a kernel
    change (same package version) must not reuse the old build's timings."""
    from lmKAN import _extension
    digest = _extension.kernel_sources_digest()
    expected = f"{lmKAN.__version__}+kernels.{digest}" if digest else lmKAN.__version__
    assert tuning.key.LMKAN_BUILD == expected
    monkeypatch.setattr(_extension, "_build_status",
                        lambda: {"cuda_extension": "built", "kernel_sources": "0123456789ab"})
    assert _extension.kernel_sources_digest() == "0123456789ab"
    for status in ({"cuda_extension": "failed", "kernel_sources": "0123456789ab"},
                   {"cuda_extension": "built", "kernel_sources": 7}, {"cuda_extension": "built"},
                   None):
        monkeypatch.setattr(_extension, "_build_status", lambda status=status: status)
        assert _extension.kernel_sources_digest() == ""


def test_key_contents(fake_gpu):
    layer = LMKAN2DLayer(8, 6, 5, tile_size_backward=4, backward_fast_mode="auto", batch_last=False)
    key = tuning.make_key(layer, torch.randn(1000, 6), "backward")
    assert key.gpu == "Fake GPU" and key.capability == "9.0"
    assert key.torch_version == torch.__version__ and key.lmkan_version == tuning.key.LMKAN_BUILD
    assert (key.layer, key.input_dim, key.output_dim, key.num_grids) == ("LMKAN2DLayer", 6, 5, 8)
    assert (key.batch_bucket, key.layout, key.mode, key.dtype) == (1024, "batch_first", "backward", "float32")
    assert key.searched == "tile_size=4,block_size=auto,fast_mode=auto"
    assert tuning.key.parse_key(key.as_string()) == key
    forward = tuning.make_key(layer, torch.randn(1000, 6), "forward")
    assert forward.searched == "tile_size=auto,block_size=auto" and forward != key
    # a 16-bit table is timed apart (autocast, table_dtype); a float32 table keeps its key
    sixteen = tuning.make_key(layer, torch.randn(1000, 6), "forward", torch.bfloat16)
    assert sixteen.dtype == "float32+table=bfloat16" and sixteen != forward
    assert tuning.key.parse_key(sixteen.as_string()) == sixteen
    assert tuning.make_key(layer, torch.randn(1000, 6), "forward", torch.float32) == forward


# --- resolution ---------------------------------------------------------------------------

def test_auto_is_the_default_and_state_dict_unchanged():
    auto = _layer()
    assert (auto.tile_size_forward, auto.block_size_backward) == ("auto", "auto")
    explicit = _layer(tile_size_forward=16, block_size_forward=256, tile_size_backward=4,
                      block_size_backward=128, backward_fast_mode=True)
    assert set(auto.state_dict()) == set(explicit.state_dict()) == {"func_parameter", "borders"}
    explicit.load_state_dict(auto.state_dict())
    x = torch.randn(6, 7)
    torch.testing.assert_close(auto(x), explicit(x))
    with pytest.raises(ValueError, match="tile_size_forward"):
        _layer(tile_size_forward="fast")


def test_cpu_resolves_to_defaults_without_timing(monkeypatch):
    timer = FakeTimer()
    monkeypatch.setattr(tuning.search, "_timer", timer)
    layer = _layer(backward_fast_mode="auto")
    config = _config(layer, _x(), needs_backward=True)
    assert config == tuning.LaunchConfig2D(8, 1024, 8, 512, False)
    assert timer.calls == [] and not os.path.exists(tuning.cache_path())


def test_first_call_times_then_steady_state_is_a_lookup(fake_gpu, monkeypatch):
    layer = _layer(backward_fast_mode="auto")
    seen = []
    real = ops.lmkan2d
    monkeypatch.setattr(ops, "lmkan2d", lambda x, p, b, bl, *config: seen.append(config[:5]) or real(x, p, b, bl))
    layer(_x()).sum().backward()
    # forward: 3 tiles + 5 more blocks; backward: 3 tiles x 2 modes + 5 more blocks
    assert len(fake_gpu.calls) == 8 + 11
    assert seen[-1] == (16, 256, 16, 256, True)
    assert "tile_size_forward=auto:16" in repr(layer) and "backward_fast_mode=auto:True" in repr(layer)
    fake_gpu.calls.clear()
    for batch in (40, 33, 64):  # the same batch bucket
        layer(_x(batch)).sum().backward()
    assert fake_gpu.calls == [] and seen[-1] == (16, 256, 16, 256, True)
    _layer(backward_fast_mode="auto")(_x())  # another layer of the same shape: cached too
    assert fake_gpu.calls == []
    layer(_x(65))  # a new batch bucket: timed again
    assert fake_gpu.calls


def test_choice_is_reused_from_disk_by_a_fresh_process(fake_gpu):
    layer = _layer()
    layer(_x())
    entries = json.load(open(tuning.cache_path()))["entries"]
    assert len(entries) == 2  # forward and backward
    tuning.clear_memory_cache()
    fake_gpu.calls.clear()
    assert _config(_layer(), _x(), True) == (16, 256, 16, 256, False)
    assert fake_gpu.calls == []


def test_no_grad_resolves_the_forward_only(fake_gpu):
    layer = _layer()
    with torch.no_grad():
        config = _config(layer, _x(), needs_backward=torch.is_grad_enabled())
    assert config == (16, 256, 8, 512, False)
    assert len(fake_gpu.calls) == 8 and "tile_size_backward=auto," in repr(layer)


def test_explicit_values_bypass_tuning(fake_gpu, monkeypatch):
    monkeypatch.setattr(tuning.resolve, "make_key", lambda *a: pytest.fail("explicit settings built a key"))
    layer = _layer(tile_size_forward=4, block_size_forward=64, tile_size_backward=8,
                   block_size_backward=128, backward_fast_mode=False)
    assert _config(layer, _x(), True) == (4, 64, 8, 128, False)
    assert fake_gpu.calls == []


def test_partly_explicit_searches_only_the_auto_settings(fake_gpu):
    layer = _layer(tile_size_forward=4, block_size_backward=64)
    config = _config(layer, _x(), True)
    assert config == (4, 256, 16, 64, False)
    assert {c["tile_size"] for c in fake_gpu.calls if "fast_mode" not in c} == {4}
    assert {c["block_size"] for c in fake_gpu.calls if "fast_mode" in c} == {64}


def test_refused_candidates_are_skipped(fake_gpu):
    fake_gpu.refuse = (16,)  # the kernel raises for tile 16
    layer = _layer()
    # tile 16 would be the fastest: it was tried in both modes, and the choice is the best
    # of the rest (tiles 4 and 8 tie, the default tile 8 was timed first)
    assert _config(layer, _x(), True) == (8, 256, 8, 256, False)
    assert {c["tile_size"] for c in fake_gpu.calls} == {4, 8, 16}


def test_nothing_fits_falls_back_to_the_default_and_is_not_retried(fake_gpu):
    fake_gpu.refuse = (4, 8, 16)
    layer = _layer()
    assert _config(layer, _x(), True) == (8, 1024, 8, 512, False)
    fake_gpu.calls.clear()
    _config(layer, _x(), True)
    assert fake_gpu.calls == [] and not os.path.exists(tuning.cache_path())


def test_tuning_off_uses_the_defaults(fake_gpu, monkeypatch):
    _layer()(_x())  # a timed choice in the cache...
    fake_gpu.calls.clear()
    monkeypatch.setenv(tuning.ENV_TUNING, "off")
    assert _config(_layer(), _x(), True) == (8, 1024, 8, 512, False)
    assert fake_gpu.calls == []  # ...is not used, and nothing is timed


def test_no_timing_during_graph_capture_then_timed_later(fake_gpu, monkeypatch):
    class CudaLooking(torch.Tensor):  # x.is_cuda decides whether capture is asked about
        is_cuda = True
    x = _x().detach().as_subclass(CudaLooking)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    layer = _layer()
    assert _config(layer, x, True) == (8, 1024, 8, 512, False)
    assert fake_gpu.calls == []
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _config(layer, _x(), True) == (16, 256, 16, 256, False)
    assert fake_gpu.calls


def test_no_timing_while_compiling(fake_gpu, monkeypatch):
    layer = _layer()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _config(layer, _x(), True) == (8, 1024, 8, 512, False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    _config(layer, _x(), True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    fake_gpu.calls.clear()
    assert _config(layer, _x(), True) == (16, 256, 16, 256, False)  # last eager
    assert fake_gpu.calls == []


def test_search_is_a_coordinate_search():
    options = {"tile_size": [8, 4, 16], "block_size": [1024, 32, 256], "fast_mode": [False, True]}
    timed = []

    def time_choice(choice):
        timed.append(choice)
        return 5.0 - (choice["tile_size"] == 4) - (choice["block_size"] == 32) * 2

    choice, ms, default_ms = tuning.search.coordinate_search(options, time_choice)
    assert choice == {"tile_size": 4, "block_size": 32, "fast_mode": False}
    assert (ms, default_ms) == (2.0, 5.0) and len(timed) == 6 + 2


# --- lmKAN.tune and the command line ------------------------------------------------------

def test_tune_reports_rows_and_force_retimes(fake_gpu):
    model = torch.nn.Sequential(LMKAN2DLayer(8, 6, 6), torch.nn.Tanh(), LMKAN2DLayer(8, 6, 4))
    rows = lmKAN.tune(model, torch.randn(6, 100))
    assert [(r.layer, r.mode) for r in rows] == [("0", "forward"), ("0", "backward"),
                                                 ("2", "forward"), ("2", "backward")]
    assert rows[0].config == {"tile_size": 16, "block_size": 256} and rows[0].ms == 5.0
    assert rows[0].default_ms == 10.0 and not rows[0].cached
    assert all(p.grad is None for p in model.parameters())
    n_calls = len(fake_gpu.calls)
    again = lmKAN.tune(model, torch.randn(6, 100))
    assert len(fake_gpu.calls) == n_calls and all(r.cached for r in again)
    lmKAN.tune(model, torch.randn(6, 100), force=True)
    assert len(fake_gpu.calls) == 2 * n_calls


def test_tune_times_even_when_tuning_is_off(fake_gpu, monkeypatch):
    monkeypatch.setenv(tuning.ENV_TUNING, "off")
    rows = lmKAN.tune(_layer(), torch.randn(6, 10), backward=False)
    assert [r.mode for r in rows] == ["forward"] and fake_gpu.calls


def test_tune_on_cpu_says_there_is_nothing_to_time():
    with pytest.warns(RuntimeWarning, match="nothing was tuned.*move the model and the example "
                                            "input to a CUDA device"):
        rows = lmKAN.tune(torch.nn.Sequential(_layer()), torch.randn(6, 10))
    assert rows == []


@pytest.mark.parametrize("args,exc,words", [
    ((8, "forward", "cpu"), ValueError, ["CUDA device", "cpu"]),
    ((8, "forward", 3.5), TypeError, ["device", "float"]),
    ((12, "forward", "cuda"), ValueError, ["tile_size", "[4, 8, 16]", "12"]),
    ((8, "sideways", "cuda"), ValueError, ["mode", "backward_deterministic", "sideways"]),
])
def test_max_num_grids_arguments(args, exc, words):
    with pytest.raises(exc) as info:
        lmKAN.max_num_grids(*args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_tune_is_callable_after_importing_the_cli_module(fake_gpu):
    import lmKAN.tune  # rebinds the package attribute lmKAN.tune to the module
    rows = lmKAN.tune(_layer(), torch.randn(6, 10), backward=False)
    assert [r.mode for r in rows] == ["forward"]


def test_cli_table_format():
    from lmKAN.tune import format_table
    rows = [tuning.TuneRow("G8 512->512", "G=8", "backward",
                           {"tile_size": 16, "block_size": 256, "fast_mode": True}, 2.0, 3.0, False)]
    table = format_table(rows, "/x/tuning.json")
    assert "tile 16, block 256, fast" in table and "1.50x" in table and "/x/tuning.json" in table


def test_cli_runs_on_cpu():
    env = dict(os.environ, PYTHONPATH=WORKTREE)
    done = subprocess.run([sys.executable, "-m", "lmKAN.tune", "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing to tune" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "lmKAN.tune", "--num-grids", "8"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "go together" in bad.stderr


# --- GPU ------------------------------------------------------------------------------------

@requires_gpu
def test_gpu_auto_resolves_and_matches_explicit():
    layer = LMKAN2DLayer(8, 64, 48, backward_fast_mode="auto").cuda()
    x = (torch.randn(64, 3000, device="cuda") * 1.5).requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    choice = layer._launch_resolver.choices
    assert set(choice) == {"forward", "backward"}
    entries = json.load(open(tuning.cache_path()))["entries"]
    assert len(entries) == 2 and all(e["ms"] > 0 for e in entries.values())
    explicit = LMKAN2DLayer(8, 64, 48, tile_size_forward=choice["forward"]["tile_size"],
                            block_size_forward=choice["forward"]["block_size"]).cuda()
    explicit.load_state_dict(layer.state_dict())
    torch.testing.assert_close(explicit(x), y, rtol=1e-5, atol=1e-6)


@requires_gpu
def test_gpu_choice_reused_by_a_fresh_process():
    code = (f"import sys, json; sys.path.insert(0, {WORKTREE!r})\n"
            "import torch; from lmKAN import LMKAN2DLayer, tuning\n"
            "layer = LMKAN2DLayer(8, 64, 48).cuda()\n"
            "layer(torch.randn(64, 3000, device='cuda', requires_grad=True)).sum().backward()\n"
            "print(json.dumps(layer._launch_resolver.choices, sort_keys=True))\n")
    first = run_python(code)
    assert first.returncode == 0, first.stderr
    # The second process must not time: its timer fails the run if called.
    second = run_python(code.replace("layer = ", "tuning.search._timer = None\nlayer = ", 1))
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout


@requires_gpu
def test_gpu_tuning_cost_per_shape():
    layer = LMKAN2DLayer(8, 512, 512, backward_fast_mode="auto").cuda()
    x = torch.randn(512, 1 << 16, device="cuda")
    layer(x[:, :1024])  # load the kernels once (not part of the tuning cost)
    start = time.perf_counter()
    rows = lmKAN.tune(layer, x, force=True)
    elapsed = time.perf_counter() - start
    assert [r.mode for r in rows] == ["forward", "backward"]
    assert elapsed < 8.0, f"tuning one shape (forward + backward) took {elapsed:.1f} s"


@requires_gpu
def test_gpu_auto_layer_in_cuda_graph():
    layer = LMKAN2DLayer(8, 32, 24).cuda()
    x = torch.randn(32, 999, device="cuda")
    with torch.no_grad():
        eager = layer(x)  # tunes here, outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = layer(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static, eager)


@requires_gpu
def test_gpu_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=WORKTREE)
    done = subprocess.run([sys.executable, "-m", "lmKAN.tune", "--num-grids", "8", "--in", "64",
                           "--out", "64", "--batch", "4096"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "forward" in done.stdout and "backward" in done.stdout and "tile" in done.stdout


def test_measure_groups_short_runs(monkeypatch):
    counts = []

    def fake_event_ms(run, count):
        counts.append(count)
        return 0.02  # a 20-microsecond kernel
    monkeypatch.setattr(tuning.search, "_event_ms", fake_event_ms)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    runs = []
    assert tuning.measure_ms(lambda: runs.append(1)) == 0.02
    assert runs == [1]  # the warm-up (the fake timer runs nothing itself)
    assert counts == [1] + [50] * tuning.MAX_REPS


def test_forced_tune_updates_layers_already_resolved(fake_gpu, monkeypatch):
    layer = _layer()
    x = _x()
    assert _config(layer, x, True) == (16, 256, 16, 256, False)
    monkeypatch.setattr(tuning.search, "_timer", lambda run, choice: 1.0 + (choice["tile_size"] != 4))
    lmKAN.tune(layer, x.detach(), force=True)
    assert _config(layer, x, True) == (4, 1024, 4, 512, False)  # ties: default block


# --- package structure: no import cycle, one device cache, the layer owns its state -------

TUNING_DIR = os.path.join(WORKTREE, "lmKAN", "tuning")
TUNING_MODULES = sorted(f[:-3] for f in os.listdir(TUNING_DIR) if f.endswith(".py"))


def _lmkan_imports(path):
    """(line, absolute lmKAN module or package attribute) of every import in `path`, and of
    every importlib.import_module / __import__ call with a literal name."""
    import ast
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module
            else:  # relative to lmKAN.tuning (its modules are lmKAN.tuning.<name>)
                parts = ["lmKAN", "tuning"][:max(3 - node.level, 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if node.module is None:  # "from .. import x": x is a module or a package attribute
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            found.append((node.lineno, str(node.args[0].value)))
    return [(line, name) for line, name in found if name == "lmKAN" or name.startswith("lmKAN.")]


def test_tuning_package_imports_no_layer_module_nor_the_package():
    """The tuning package imports lmKAN's leaf modules only (ops, _extension, _device,
    _constants, _version) and itself: never lmKAN (its __init__ imports the layers, which
    import tuning), lmKAN.lmkan2d, lmKAN.lmkan1d or the CLI module lmKAN.tune."""
    lmkan_dir = os.path.join(WORKTREE, "lmKAN")
    bad = []
    for module in TUNING_MODULES:
        for line, name in _lmkan_imports(os.path.join(TUNING_DIR, module + ".py")):
            inside = name.startswith("lmKAN.tuning")
            leaf = name.count(".") == 1 and os.path.isfile(os.path.join(lmkan_dir, name[6:] + ".py"))
            if not inside and not (leaf and name[6:] not in ("lmkan2d", "lmkan1d", "tune")):
                bad.append(f"{module}.py:{line}: {name}")
    assert bad == []


def test_import_scan_sees_forbidden_imports(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import lmKAN\nfrom .. import __version__\nfrom ..lmkan2d import X\n"
                    "from . import key\nfrom .. import ops\ndef f():\n    from lmKAN import lmkan1d\n")
    assert [name for _, name in _lmkan_imports(str(path))] == [
        "lmKAN", "lmKAN.__version__", "lmKAN.lmkan2d", "lmKAN.tuning.key", "lmKAN.ops", "lmKAN"]


def test_version_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from lmKAN._version import __version__
    with open(os.path.join(WORKTREE, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["version"] == __version__ == lmKAN.__version__


def test_every_subpackage_is_packaged():
    """pyproject.toml lists every subpackage (setuptools installs only the listed ones: a
    missing lmKAN.tuning would make an installed lmKAN fail on import)."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(WORKTREE, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    root = os.path.join(WORKTREE, "lmKAN")
    found = {"lmKAN"} | {"lmKAN." + d for d in os.listdir(root)
                         if os.path.isfile(os.path.join(root, d, "__init__.py"))}
    assert found <= listed


def test_one_device_cache_serves_signatures_and_limits(monkeypatch):
    from lmKAN import _device
    from lmKAN.lmkan1d import _max_num_grids_1d
    monkeypatch.setattr(_device, "_FACTS", {})
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 4 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: asked.append(i) or (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    monkeypatch.setattr(_device, "_ask_limit_2d",
                        lambda t, m, i, table, n_out: asked.append((t, m, i, table, n_out)) or 100 + t)
    monkeypatch.setattr(_device, "_ask_limit_1d", lambda i: asked.append(i) or 50)
    monkeypatch.delenv("LMKAN_SMEM_BUDGET_KB", raising=False)
    for _ in range(2):  # the second round is answered from the cache
        assert _device.device_signature(torch.device("cuda", 3)) == ("GPU 3", "9.0")
        assert lmKAN.max_num_grids(8, "forward", "cuda:3") == 108
        assert _max_num_grids_1d(torch.device("cuda", 3)) == 50
    assert asked == [3, (8, "forward", 3, None, None), 3]
    # float32 named or not is one entry; a 16-bit table is its own, and so is a layer width
    assert lmKAN.max_num_grids(8, "forward", "cuda:3", torch.float32) == 108
    assert lmKAN.max_num_grids(8, "forward", "cuda:3", torch.bfloat16) == 108
    assert lmKAN.max_num_grids(8, "forward", "cuda:3", output_dim=1) == 108
    assert asked == [3, (8, "forward", 3, None, None), 3, (8, "forward", 3, torch.bfloat16, None),
                     (8, "forward", 3, None, 1)]
    with pytest.raises(ValueError, match="output_dim must be >= 1, got 0"):
        lmKAN.max_num_grids(8, "forward", "cuda:3", output_dim=0)
    del asked[3:]
    monkeypatch.setenv("LMKAN_SMEM_BUDGET_KB", "64")  # the kernels' limits depend on it
    lmKAN.max_num_grids(8, "forward", "cuda:3")
    _device.device_signature(torch.device("cuda", 3))
    assert asked == [3, (8, "forward", 3, None, None), 3, (8, "forward", 3, None, None)]
    assert len(_device._FACTS) == 6


def test_resolution_state_lives_in_the_resolver_not_the_layer(fake_gpu):
    layer = _layer(backward_fast_mode="auto")
    before = dict(layer.__dict__)
    layer(_x()).sum().backward()
    repr(layer)
    assert set(layer.__dict__) == set(before)  # no attribute added to the layer
    resolver = layer._launch_resolver
    assert resolver is before["_launch_resolver"]
    assert set(resolver.choices) == {"forward", "backward"} and len(resolver.memo) == 1


def _pickled_and_loaded(layer, tmp_path):
    path = tmp_path / "layer.pt"
    torch.save(layer, path)
    return torch.load(path, weights_only=False)


def test_pickled_layer_keeps_its_choices_and_drops_its_memo(fake_gpu, tmp_path):
    layer = _layer()
    layer(_x()).sum().backward()
    loaded = _pickled_and_loaded(layer, tmp_path)
    assert loaded._launch_resolver is not layer._launch_resolver
    assert loaded._launch_resolver.choices == layer._launch_resolver.choices
    assert loaded._launch_resolver.memo == {}  # keyed by this process's devices: not carried
    assert repr(loaded) == repr(layer)
    fake_gpu.calls.clear()
    assert _config(loaded, _x(), True) == (16, 256, 16, 256, False) and fake_gpu.calls == []


def test_layer_pickled_by_the_previous_version_loads(fake_gpu, tmp_path):
    """lmKAN <= 0.3.0 kept the memo and choices in the layer's own attributes."""
    layer = _layer()
    del layer._launch_resolver
    layer.__dict__["_tuning_memo"] = {("stale",): "ignored"}
    layer.__dict__["_tuned_choices"] = {"forward": {"tile_size": 4, "block_size": 64}}
    loaded = _pickled_and_loaded(layer, tmp_path)
    assert "_tuning_memo" not in loaded.__dict__ and "_tuned_choices" not in loaded.__dict__
    assert "tile_size_forward=auto:4, block_size_forward=auto:64" in repr(loaded)
    loaded(_x()).sum().backward()
    assert "tile_size_forward=auto:16" in repr(loaded)
