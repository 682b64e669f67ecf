"""Finding the fastest settings of one mode: candidates, timing and the search.

Holds options (the values to try per searched setting), measure_ms (CUDA-event timing),
the timing inputs and launchers (the forward op, or the backward op alone),
coordinate_search, time_mode (all of that for one layer call and mode, returning a cache
entry) and stand_in_entry (the untimed default entry).
"""
import contextlib
import statistics
import time

import torch

from .. import ops
from .._constants import SUPPORTED_BLOCK_SIZES, SUPPORTED_TILE_SIZES
from .key import AUTO, BATCH_BUCKET_CAP, DEFAULTS_2D, MODE_FIELDS, deterministic_now

__all__ = ["MAX_REPS", "CANDIDATE_BUDGET_S", "SHORT_RUN_MS", "options", "measure_ms",
           "coordinate_search", "time_mode", "stand_in_entry"]

MAX_REPS = 5                # timed runs per candidate (after one warm-up run)
CANDIDATE_BUDGET_S = 0.15   # stop repeating a candidate once this much time has passed
SHORT_RUN_MS = 1.0          # runs shorter than this are timed in back-to-back groups

_POOLS = {"tile_size": SUPPORTED_TILE_SIZES, "block_size": SUPPORTED_BLOCK_SIZES,
          "fast_mode": (False, True)}


def options(layer, mode):
    """Per searched entry, the values to try (default first); a fixed setting has one."""
    found = {}
    for attr, entry in MODE_FIELDS[mode]:
        value = getattr(layer, attr)
        if value == AUTO:
            default = DEFAULTS_2D[attr]
            found[entry] = [default] + [v for v in _POOLS[entry] if v != default]
        else:
            found[entry] = [value]
    return found


def _default_choice(choices):
    return {entry: values[0] for entry, values in choices.items()}


def stand_in_entry(layer, mode, stand_in):
    """An untimed entry: the default choice. The caller keeps it in memory only, so that
    the key is settled for later calls; `stand_in` marks it for timing once timing is
    allowed (False: timing failed)."""
    return {"config": _default_choice(options(layer, mode)), "ms": None, "default_ms": None,
            "stand_in": stand_in}


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


def _launcher(layer, inputs, mode, table=torch.float32):
    """run(choice) for a mode: the forward op, or the backward op on its own, with the
    call's table dtype."""
    x, params, borders, grad_y = inputs
    table_dtype = None if table == params.dtype else table

    def run_forward(choice):
        d = DEFAULTS_2D
        return ops.lmkan2d(x, params, borders, layer.batch_last, choice["tile_size"],
                           choice["block_size"], d["tile_size_backward"],
                           d["block_size_backward"], d["backward_fast_mode"], False, table_dtype)

    def run_backward(choice):
        return torch.ops.lmkan.lmkan2d_backward(grad_y, x, params, borders, layer.batch_last,
                                                choice["tile_size"], choice["block_size"],
                                                choice["fast_mode"], deterministic_now(layer),
                                                table_dtype)
    return run_forward if mode == "forward" else run_backward


# ---------------------------------------------------------------------------------------
# The search


def coordinate_search(choices, time_choice):
    """Coordinate search: every (tile, fast mode) at the default block size, then every
    block size at the best of those. `choices` maps each setting to its values (default
    first); `time_choice(choice)` returns ms, or None for a refused candidate. Returns
    (best choice, its ms, the default's ms) or None."""
    timed = {}

    def attempt(choice):
        frozen = tuple(sorted(choice.items()))
        if frozen not in timed:
            timed[frozen] = time_choice(choice)
        return timed[frozen]

    default = _default_choice(choices)
    for tile in choices["tile_size"]:
        for fast in choices.get("fast_mode", [None]):
            attempt(dict(default, tile_size=tile, **({} if fast is None else {"fast_mode": fast})))
    best = _best(timed)
    if best is None:
        return None
    for block in choices["block_size"]:
        attempt(dict(best[0], block_size=block))
    choice, ms = _best(timed)
    return choice, ms, timed.get(tuple(sorted(default.items())))


def _best(timed):
    finished = [(ms, frozen) for frozen, ms in timed.items() if ms is not None]
    if not finished:
        return None
    ms, frozen = min(finished, key=lambda item: item[0])
    return dict(frozen), ms


def time_mode(layer, x, mode, table=torch.float32):
    """Time the candidates of one mode (with the call's table dtype); returns a cache entry
    (config, ms, default_ms), or None when the kernels refused every candidate."""
    run = _launcher(layer, _timing_inputs(layer, x, mode), mode, table)

    def time_choice(choice):
        try:
            return float(_timer(lambda: run(choice), dict(choice)))
        except (RuntimeError, ValueError):  # a configuration the kernels refuse: skip it
            return None

    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with torch.no_grad(), on_device:
        found = coordinate_search(options(layer, mode), time_choice)
    if found is None:
        return None
    choice, ms, default_ms = found
    return {"config": choice, "ms": ms, "default_ms": default_ms}
