"""Automatic choice of tile and block sizes for the 2D layer's CUDA kernels.

A layer built with tile_size_*="auto" / block_size_*="auto" (the defaults) times the
candidate configurations once per key, on the first CUDA call for that key, and reuses the
fastest ever after. The key is (GPU model and compute capability, torch and lmKAN
versions, layer kind, input_dim, output_dim, num_grids, batch bucket, layout, mode,
dtype, which settings are searched); see `TuningKey`.

Choices live in an in-memory dict in front of a JSON file: $LMKAN_CACHE_DIR/tuning.json,
else $XDG_CACHE_HOME/lmKAN/tuning.json, else ~/.cache/lmKAN/tuning.json. The file is
written atomically (temporary file + os.replace) and merged with what other processes
wrote since it was read; a corrupt or foreign file is ignored with one warning.

LMKAN_TUNING=off (or 0/false/no) disables timing: "auto" then means the defaults below
(lmKAN.tune() still times: it is an explicit request).

Timing never happens on CPU tensors (no kernels: "auto" resolves to the defaults), inside
CUDA graph capture, or while torch.compile traces (both use the cached choice or the
default). The 1D layer's kernels take no tile or block size: nothing to tune there.
"""
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
import warnings
from typing import NamedTuple

import torch

__all__ = ["AUTO", "LaunchConfig2D", "TuningKey", "TuneRow", "tune", "cache_path",
           "clear_memory_cache", "tuning_enabled", "batch_bucket", "PERFORMANCE_CASES"]

AUTO = "auto"
ENV_CACHE_DIR = "LMKAN_CACHE_DIR"
ENV_TUNING = "LMKAN_TUNING"
CACHE_FORMAT = "lmKAN-tuning"
CACHE_VERSION = 1

# Batches share a cache entry per power of two, up to this cap; larger batches are timed
# on their first BATCH_BUCKET_CAP samples (the kernels are saturated well before).
BATCH_BUCKET_CAP = 1 << 16
MAX_REPS = 5                # timed runs per candidate (after one warm-up run)
CANDIDATE_BUDGET_S = 0.15   # stop repeating a candidate once this much time has passed
SHORT_RUN_MS = 1.0          # runs shorter than this are timed in back-to-back groups

# The 2D layer's (and the original lmKAN's) defaults, used wherever "auto" is not timed.
DEFAULTS_2D = {"tile_size_forward": 8, "block_size_forward": 1024, "tile_size_backward": 8,
               "block_size_backward": 512, "backward_fast_mode": False}

# The 2D cases of docs/performance.md: (name, num_grids, input_dim, output_dim, batch).
PERFORMANCE_CASES = [
    ("G16 512->512 B=2^20", 16, 512, 512, 1 << 20),
    ("G8 512->512 B=2^18", 8, 512, 512, 1 << 18),
    ("G26 256->256 B=2^18", 26, 256, 256, 1 << 18),
    ("G26 128->128 B=1024", 26, 128, 128, 1024),
]


class LaunchConfig2D(NamedTuple):
    """The kernel settings of one 2D layer call, in the order ops.lmkan2d takes them."""
    tile_size_forward: int
    block_size_forward: int
    tile_size_backward: int
    block_size_backward: int
    backward_fast_mode: bool


# Per mode: the layer attribute of each searched setting, and its name in a cache entry.
_MODE_FIELDS = {
    "forward": (("tile_size_forward", "tile_size"), ("block_size_forward", "block_size")),
    "backward": (("tile_size_backward", "tile_size"), ("block_size_backward", "block_size"),
                 ("backward_fast_mode", "fast_mode")),
}


class TuningKey(NamedTuple):
    """Everything a timed choice depends on; `as_string()` is its key in the JSON file."""
    gpu: str
    capability: str
    torch_version: str
    lmkan_version: str
    layer: str
    input_dim: int
    output_dim: int
    num_grids: int
    batch_bucket: int
    layout: str
    mode: str
    dtype: str
    searched: str  # e.g. "tile_size=auto,block_size=auto,fast_mode=False"

    def as_string(self):
        return "|".join(f"{name}={value}" for name, value in zip(self._fields, self))


@dataclasses.dataclass
class TuneRow:
    """One (layer, mode) resolution reported by lmKAN.tune()."""
    layer: str
    shape: str
    mode: str
    config: dict
    ms: float
    default_ms: float
    cached: bool


# ---------------------------------------------------------------------------------------
# Switches and keys


def tuning_enabled():
    """False when LMKAN_TUNING is off, 0, false or no."""
    return os.environ.get(ENV_TUNING, "on").strip().lower() not in ("off", "0", "false", "no")


def batch_bucket(batch):
    """The power of two at or above `batch`, capped at BATCH_BUCKET_CAP."""
    return min(1 << max(int(batch) - 1, 0).bit_length(), BATCH_BUCKET_CAP)


_DEVICE_SIGNATURES = {}


def device_signature(device):
    """(GPU name, "major.minor") of a CUDA device, looked up once per device index."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_SIGNATURES:
        major, minor = torch.cuda.get_device_capability(index)
        _DEVICE_SIGNATURES[index] = (torch.cuda.get_device_name(index), f"{major}.{minor}")
    return _DEVICE_SIGNATURES[index]


def _lmkan_version():
    import lmKAN  # the package imports this module, so read its version at call time
    return lmKAN.__version__


def make_key(layer, x, mode):
    """The TuningKey of a 2D layer's call on the 2-D input `x` for mode forward/backward."""
    gpu, capability = device_signature(x.device)
    batch = x.shape[1] if layer.batch_last else x.shape[0]
    searched = ",".join(f"{entry}={getattr(layer, attr)}" for attr, entry in _MODE_FIELDS[mode])
    if mode == "backward" and _deterministic(layer):  # other kernels run: tuned separately
        searched += ",deterministic=True"
    return TuningKey(gpu, capability, torch.__version__, _lmkan_version(), "LMKAN2DLayer",
                     layer.input_dim, layer.output_dim, layer.num_grids, batch_bucket(batch),
                     "batch_last" if layer.batch_last else "batch_first", mode,
                     str(x.dtype).replace("torch.", ""), searched)


# ---------------------------------------------------------------------------------------
# The cache: an in-memory dict in front of the JSON file


def cache_path():
    """$LMKAN_CACHE_DIR/tuning.json, else the user cache directory's lmKAN/tuning.json."""
    root = os.environ.get(ENV_CACHE_DIR)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "lmKAN")
    return os.path.join(root, "tuning.json")


_MEMORY = {}          # TuningKey -> entry dict (config, ms, default_ms)
_LOADED_PATHS = set()  # cache files already merged into _MEMORY
_WARNED = set()       # (path, problem) pairs already warned about
_LOCK = threading.RLock()
_GENERATION = [0]     # bumped by clear_memory_cache(): the layers' memos are then stale


def clear_memory_cache():
    """Forget every in-memory choice (the file stays); the next lookup re-reads the file."""
    with _LOCK:
        _MEMORY.clear()
        _LOADED_PATHS.clear()
        _GENERATION[0] += 1


def _warn_once(path, problem):
    if (path, problem) not in _WARNED:
        _WARNED.add((path, problem))
        warnings.warn(f"lmKAN tuning cache {path}: {problem}", RuntimeWarning, stacklevel=3)


def _read_entries(path):
    """The entries of the cache file (key string -> entry); {} if missing or unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        _warn_once(path, f"unreadable ({type(exc).__name__}: {exc}); ignored, will be rewritten")
        return {}
    if (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)):
        _warn_once(path, "not an lmKAN tuning cache (or another format version); ignored, "
                         "will be rewritten")
        return {}
    if data.get("version") != CACHE_VERSION:
        return {}
    return {k: v for k, v in data["entries"].items() if _valid_entry(v)}


def _valid_entry(entry):
    return (isinstance(entry, dict) and isinstance(entry.get("config"), dict)
            and all(isinstance(v, (int, bool)) for v in entry["config"].values()))


def _write_entries(path, new_entries):
    """Merge `new_entries` into the file (re-read now: other processes may have written)
    and replace it atomically. An unwritable location warns once; choices stay in memory."""
    entries = _read_entries(path)
    entries.update(new_entries)
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        _warn_once(path, f"cannot be written ({exc}); tuning choices are kept in memory only")


def lookup(key):
    """The cached entry of `key` (memory first, then the file, read once), or None."""
    with _LOCK:
        path = cache_path()
        if path not in _LOADED_PATHS:
            _LOADED_PATHS.add(path)
            for text, entry in _read_entries(path).items():
                parsed = _parse_key(text)
                if parsed is not None:
                    _MEMORY.setdefault(parsed, entry)
        return _MEMORY.get(key)


def store(key, entry, persist=True):
    with _LOCK:
        _MEMORY[key] = entry
        if persist:
            _write_entries(cache_path(), {key.as_string(): entry})


def _parse_key(text):
    fields = dict(part.split("=", 1) for part in text.split("|") if "=" in part)
    try:
        values = [fields[name] for name in TuningKey._fields]
    except KeyError:
        return None
    ints = {"input_dim", "output_dim", "num_grids", "batch_bucket"}
    try:
        return TuningKey(*(int(v) if n in ints else v for n, v in zip(TuningKey._fields, values)))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Timing


def _event_ms(run, count):
    """Milliseconds per run of `count` back-to-back runs, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(count):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / count


def measure_ms(run):
    """Median milliseconds of `run()` on the current stream: one warm-up run (which also
    raises for a refused configuration), then up to MAX_REPS timed repetitions, stopping
    early once CANDIDATE_BUDGET_S has passed (at least one). A run shorter than
    SHORT_RUN_MS is repeated back to back within each repetition, so that host launch
    overhead does not drown the kernel time of small shapes."""
    run()
    torch.cuda.synchronize()
    deadline = time.perf_counter() + CANDIDATE_BUDGET_S
    first = _event_ms(run, 1)
    count = max(1, min(100, int(SHORT_RUN_MS / max(first, 1e-3))))
    times = [first] if count == 1 else []
    while len(times) < MAX_REPS and (not times or time.perf_counter() < deadline):
        times.append(_event_ms(run, count))
    return statistics.median(times)


# The timer the search calls: timer(run, choice) -> ms. Tests replace it (the choice tells
# a fake timer which configuration it is timing).
_timer = lambda run, choice: measure_ms(run)  # noqa: E731


def _timing_inputs(layer, x, mode):
    """Detached inputs for timing: x cut to BATCH_BUCKET_CAP samples (contiguous, so the
    timed op does not copy), the layer's table and borders, and for the backward a fixed
    pseudo-random grad_y from a private generator (the user's RNG stream is untouched)."""
    batch = x.shape[1] if layer.batch_last else x.shape[0]
    if batch > BATCH_BUCKET_CAP:
        x = x[:, :BATCH_BUCKET_CAP] if layer.batch_last else x[:BATCH_BUCKET_CAP]
        batch = BATCH_BUCKET_CAP
    x = x.detach().contiguous()
    params = layer.func_parameter.detach().contiguous()
    borders = layer.borders.detach().contiguous()
    if mode == "forward":
        return x, params, borders, None
    shape = (layer.output_dim, batch) if layer.batch_last else (batch, layer.output_dim)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(0)
    grad_y = torch.randn(shape, device=x.device, dtype=x.dtype, generator=gen)
    return x, params, borders, grad_y


def _launcher(layer, inputs, mode):
    """run(choice) for a mode: the forward op, or the backward op on its own."""
    from . import ops
    x, params, borders, grad_y = inputs

    def run_forward(choice):
        d = DEFAULTS_2D
        return ops.lmkan2d(x, params, borders, layer.batch_last, choice["tile_size"],
                           choice["block_size"], d["tile_size_backward"],
                           d["block_size_backward"], d["backward_fast_mode"])

    def run_backward(choice):
        return torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, layer.batch_last,
                                                choice["tile_size"], choice["block_size"],
                                                choice["fast_mode"], _deterministic(layer))
    return run_forward if mode == "forward" else run_backward


# ---------------------------------------------------------------------------------------
# Candidates and the search


def _options(layer, mode):
    """Per searched entry, the values to try (default first); a fixed setting has one."""
    from .lmkan2d import SUPPORTED_BLOCK_SIZES, SUPPORTED_TILE_SIZES
    pools = {"tile_size": SUPPORTED_TILE_SIZES, "block_size": SUPPORTED_BLOCK_SIZES,
             "fast_mode": (False, True)}
    options = {}
    for attr, entry in _MODE_FIELDS[mode]:
        value = getattr(layer, attr)
        if value == AUTO:
            default = DEFAULTS_2D[attr]
            options[entry] = [default] + [v for v in pools[entry] if v != default]
        else:
            options[entry] = [value]
    return options


def _deterministic(layer):
    now = getattr(layer, "_deterministic_now", None)
    return bool(now()) if now is not None else False


def _default_choice(options):
    return {entry: values[0] for entry, values in options.items()}


def _search(options, time_choice):
    """Coordinate search: every (tile, fast mode) at the default block size, then every
    block size at the best of those. `time_choice(choice)` returns ms, or None for a
    refused candidate. Returns (best choice, its ms, the default's ms) or None."""
    timed = {}

    def attempt(choice):
        frozen = tuple(sorted(choice.items()))
        if frozen not in timed:
            timed[frozen] = time_choice(choice)
        return timed[frozen]

    default = _default_choice(options)
    for tile in options["tile_size"]:
        for fast in options.get("fast_mode", [None]):
            attempt(dict(default, tile_size=tile, **({} if fast is None else {"fast_mode": fast})))
    best = _best(timed)
    if best is None:
        return None
    for block in options["block_size"]:
        attempt(dict(best[0], block_size=block))
    choice, ms = _best(timed)
    return choice, ms, timed.get(tuple(sorted(default.items())))


def _best(timed):
    finished = [(ms, frozen) for frozen, ms in timed.items() if ms is not None]
    if not finished:
        return None
    ms, frozen = min(finished, key=lambda item: item[0])
    return dict(frozen), ms


def _time_mode(layer, x, mode):
    """Time the candidates of one mode; returns a cache entry (config, ms, default_ms)."""
    options = _options(layer, mode)
    run = _launcher(layer, _timing_inputs(layer, x, mode), mode)

    def time_choice(choice):
        try:
            return float(_timer(lambda: run(choice), dict(choice)))
        except (RuntimeError, ValueError):  # a configuration the kernels refuse: skip it
            return None

    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with torch.no_grad(), on_device:
        found = _search(options, time_choice)
    if found is None:
        return None
    choice, ms, default_ms = found
    return {"config": choice, "ms": ms, "default_ms": default_ms}


# ---------------------------------------------------------------------------------------
# Resolution (called by LMKAN2DLayer.forward)


def layer_settings(layer):
    """The layer's five kernel settings as given ("auto" or a value)."""
    return LaunchConfig2D(*(getattr(layer, name) for name in LaunchConfig2D._fields))


def launch_config_2d(layer, x, needs_backward):
    """The concrete LaunchConfig2D for a call of `layer` on the 2-D input `x`.

    Explicit settings are returned as given. "auto" settings are resolved per mode: the
    cached choice, else (on a CUDA float32 input with kernels, outside graph capture and
    torch.compile tracing, with tuning enabled) a timed one, else the default.
    """
    settings = layer_settings(layer)
    if AUTO not in settings:
        return settings
    if torch.compiler.is_compiling():
        # No timing, file or device queries while tracing: the layer's last eager choice.
        return _with_defaults(settings, getattr(layer, "_tuned_choices", {}))
    if not _kernels_apply(layer, x):
        return _with_defaults(settings, {})
    enabled = tuning_enabled()
    may_time = ((enabled or _SESSION.force is not None)
                and not (x.is_cuda and torch.cuda.is_current_stream_capturing()))
    # Steady state: one tuple and one dict lookup per call (the full key costs ~10x more).
    batch = x.shape[1] if layer.batch_last else x.shape[0]
    memo_key = (x.device, batch_bucket(batch), x.dtype, needs_backward, settings, may_time,
                enabled, _GENERATION[0])
    memo = layer.__dict__.setdefault("_tuning_memo", {})
    if _SESSION.force is None and memo_key in memo:  # lmKAN.tune() resolves (and reports) anew
        return memo[memo_key]
    memo[memo_key] = _resolve_modes(layer, x, needs_backward, settings, may_time)
    return memo[memo_key]


def _resolve_modes(layer, x, needs_backward, settings, may_time):
    """Resolve the "auto" settings of each mode the call needs (backward only with grad)."""
    chosen = {}
    for mode in ("forward", "backward") if needs_backward else ("forward",):
        if any(getattr(layer, attr) == AUTO for attr, _ in _MODE_FIELDS[mode]):
            chosen[mode] = _resolve_mode(layer, x, mode, may_time)
    layer.__dict__.setdefault("_tuned_choices", {}).update(chosen)
    return _with_defaults(settings, chosen)


def _kernels_apply(layer, x):
    from . import ops
    return ops._kernel_applies("lmkan2d_forward", x, layer.func_parameter, layer.borders)


def _with_defaults(settings, chosen):
    """Settings with "auto" replaced by the chosen value of its mode, else the default."""
    values = settings._asdict()
    for mode, fields in _MODE_FIELDS.items():
        for attr, entry in fields:
            if values[attr] == AUTO:
                values[attr] = chosen[mode][entry] if mode in chosen else DEFAULTS_2D[attr]
    return LaunchConfig2D(**values)


def _resolve_mode(layer, x, mode, may_time):
    """The choice (entry name -> value) of one mode, from the cache or timed now."""
    key = make_key(layer, x, mode)
    entry = lookup(key)
    if entry is not None and not entry.get("stand_in") and not may_time:
        if not tuning_enabled() and _SESSION.force is None:
            entry = None  # LMKAN_TUNING=off means the defaults, not earlier timed choices
    may_time = may_time and (mode == "forward" or _has_backward_kernel())
    # An untimed stand-in (made where timing was not allowed) is timed once it is.
    cached = entry is not None and not _SESSION.force and not (may_time and entry.get("stand_in"))
    if not cached and may_time:
        timed = _time_mode(layer, x, mode)
        entry = timed or _stand_in(layer, mode, stand_in=False)
        store(key, entry, persist=timed is not None)
    elif entry is None:
        entry = _stand_in(layer, mode, stand_in=True)
        store(key, entry, persist=False)
    _SESSION.record(layer, key, entry, cached)
    return dict(entry["config"])


def _stand_in(layer, mode, stand_in):
    """An untimed entry: the default choice. The caller keeps it in memory only, so that
    the key is settled for later calls; `stand_in` marks it for timing once timing is
    allowed (False: timing failed)."""
    return {"config": _default_choice(_options(layer, mode)), "ms": None, "default_ms": None,
            "stand_in": stand_in}


def _has_backward_kernel():
    from ._extension import has_cuda_kernel
    return has_cuda_kernel("lmkan2d_backward")


def describe(layer):
    """For extra_repr: each setting as given, with the resolved value after "auto"."""
    tuned = getattr(layer, "_tuned_choices", {})
    parts = []
    for mode, fields in _MODE_FIELDS.items():
        for attr, entry in fields:
            value = getattr(layer, attr)
            if value == AUTO and mode in tuned:
                parts.append(f"{attr}=auto:{tuned[mode][entry]}")
            else:
                parts.append(f"{attr}={value}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Ahead-of-time tuning: lmKAN.tune(model, example_input)


class _Session(threading.local):
    """While lmKAN.tune() runs: whether to re-time cached keys, and the rows it reports."""
    force = None  # None: no session; False: reuse cached choices; True: re-time them
    rows = None

    def record(self, layer, key, entry, cached):
        if self.rows is not None:
            self.rows.append((layer, key, entry, cached))


_SESSION = _Session()


def tune(model, example_input, force=False, backward=True):
    """Tune every "auto" setting of the lmKAN 2D layers in `model` ahead of time.

    Runs `model(example_input)` (a tuple is unpacked into arguments) once with tuning on
    (even where LMKAN_TUNING is off): with grad enabled and one backward pass if
    `backward` (by torch.autograd.grad: no .grad is left on the parameters), else under
    no_grad (forward settings only). `force` re-times keys that are already cached.
    Choices are stored in the cache file like those made on the fly.

    Returns a list of TuneRow, one per (layer, mode) resolved: layer name, shape, the
    chosen configuration, its time and the default's (ms; None where nothing was timed,
    e.g. on CPU, where there is nothing to tune).
    """
    names = {id(module): name or type(module).__name__ for name, module in model.named_modules()}
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    _SESSION.force, _SESSION.rows = bool(force), []
    try:
        with torch.set_grad_enabled(backward):  # no grad: the backward settings stay untouched
            output = model(*args)
            if backward:
                _backward_once(model, output)
        recorded = _SESSION.rows
    finally:
        _SESSION.force, _SESSION.rows = None, None
    return [_row(names.get(id(layer), type(layer).__name__), key, entry, cached)
            for layer, key, entry, cached in _unique(recorded)]


def _backward_once(model, output):
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    outputs = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    if outputs and params:
        loss = sum(o.float().sum() for o in outputs)
        torch.autograd.grad(loss, params, allow_unused=True)


def _unique(recorded):
    seen, kept = set(), []
    for layer, key, entry, cached in recorded:
        if (id(layer), key) not in seen:
            seen.add((id(layer), key))
            kept.append((layer, key, entry, cached))
    return kept


def _row(name, key, entry, cached):
    shape = (f"G={key.num_grids} {key.input_dim}->{key.output_dim} B<={key.batch_bucket} "
             f"{key.layout}")
    return TuneRow(name, shape, key.mode, dict(entry["config"]), entry["ms"],
                   entry["default_ms"], cached)


def format_config(config):
    """'tile 16, block 512, fast' style text of a cache entry's config."""
    text = f"tile {config['tile_size']}, block {config['block_size']}"
    if config.get("fast_mode"):
        text += ", fast"
    return text
