"""Ahead-of-time tuning: lmKAN.tune(model, example_input) and what it reports.

Holds tune(), SESSION (while tune() runs: whether to re-time cached keys, and the rows
being recorded; the per-call resolution in resolve.py reads it), TuneRow, format_config
and PERFORMANCE_CASES (the shapes the command line tunes by default).
"""
import dataclasses
import threading
import warnings

import torch

__all__ = ["PERFORMANCE_CASES", "SESSION", "TuneRow", "tune", "format_config"]

# The 2D cases of docs/performance.md: (name, num_grids, input_dim, output_dim, batch).
PERFORMANCE_CASES = [
    ("G16 512->512 B=2^20", 16, 512, 512, 1 << 20),
    ("G8 512->512 B=2^18", 8, 512, 512, 1 << 18),
    ("G26 256->256 B=2^18", 26, 256, 256, 1 << 18),
    ("G26 128->128 B=1024", 26, 128, 128, 1024),
]


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


class _Session(threading.local):
    """While lmKAN.tune() runs: whether to re-time cached keys, and the rows it reports."""
    force = None  # None: no session; False: reuse cached choices; True: re-time them
    rows = None

    def record(self, layer, key, entry, cached):
        if self.rows is not None:
            self.rows.append((layer, key, entry, cached))


SESSION = _Session()


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
    SESSION.force, SESSION.rows = bool(force), []
    try:
        with torch.set_grad_enabled(backward):  # no grad: the backward settings stay untouched
            output = model(*args)
            if backward:
                _backward_once(model, output)
        recorded = SESSION.rows
    finally:
        SESSION.force, SESSION.rows = None, None
    rows = [_row(names.get(id(layer), type(layer).__name__), key, entry, cached)
            for layer, key, entry, cached in _unique(recorded)]
    if not rows:
        warnings.warn("lmKAN.tune: nothing was tuned: no LMKAN2DLayer with \"auto\" settings ran "
                      "its CUDA kernels in this call (on the CPU, or for float64 or 16-bit "
                      "layers, there are no kernels and \"auto\" means the defaults; move the "
                      "model and the example input to a CUDA device)", RuntimeWarning, stacklevel=2)
    return rows


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
