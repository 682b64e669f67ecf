"""The per-call resolution of "auto" settings, which LMKAN2DLayer.forward runs on every call.

Holds LaunchResolver (the per-layer state: memo and last choices, owned by the layer),
layer_settings and tuning_enabled (the LMKAN_TUNING switch).
"""
import functools
import os

import torch

from .._extension import has_cuda_kernel
from ..ops import kernel_applies
from .cache import MEMORY_GENERATION, lookup, store
from .key import AUTO, DEFAULTS_2D, MODE_FIELDS, LaunchConfig2D, batch_bucket, make_key
from .search import stand_in_entry, time_mode
from .session import SESSION

__all__ = ["ENV_TUNING", "LaunchResolver", "layer_settings", "tuning_enabled"]

ENV_TUNING = "LMKAN_TUNING"


def tuning_enabled():
    """False when LMKAN_TUNING is off, 0, false or no."""
    return os.environ.get(ENV_TUNING, "on").strip().lower() not in ("off", "0", "false", "no")


def layer_settings(layer):
    """The layer's five kernel settings as given ("auto" or a value)."""
    return LaunchConfig2D(layer.tile_size_forward, layer.block_size_forward,
                          layer.tile_size_backward, layer.block_size_backward,
                          layer.backward_fast_mode)


class LaunchResolver:
    """The state that resolving a layer's "auto" settings keeps between its calls.

    A 2D layer creates one in __init__ and hands it its calls: `config(layer, x,
    needs_backward)` in forward, `describe(layer)` in extra_repr. The tuning code writes
    only here, never into the layer. It holds no reference to the layer (the layer passes
    itself), so it adds no reference cycle and pickles on its own.

    memo: per call key (device, batch bucket, dtype, needs_backward, settings, whether
        timing was allowed, LMKAN_TUNING, the cache's MEMORY_GENERATION) the resolved
        LaunchConfig2D: the steady state of a layer is one lookup here.
    choices: per mode, the choice (entry name -> value) last resolved: shown by describe()
        and used while torch.compile traces (no timing, file or device queries there).
    """

    def __init__(self):
        self.memo = {}
        self.choices = {}

    def __getstate__(self):
        # The memo's keys name a device index and this process's cache generation: in
        # another process (perhaps another GPU) they would match wrongly, so they stay here.
        return {"choices": dict(self.choices)}

    def __setstate__(self, state):
        self.memo = {}
        self.choices = dict(state.get("choices", {}))

    def config(self, layer, x, needs_backward, table=torch.float32):
        """The concrete LaunchConfig2D for a call of `layer` on the 2-D input `x` whose table
        is rounded to `table` (lmKAN.ops.call_table_dtype: 16-bit tables are timed apart).

        Explicit settings are returned as given. "auto" settings are resolved per mode: the
        cached choice, else (on a CUDA float32 input with kernels, outside graph capture and
        torch.compile tracing, with tuning enabled) a timed one, else the default.
        """
        settings = layer_settings(layer)
        if AUTO not in settings:
            return settings
        if torch.compiler.is_compiling():
            # No timing, file or device queries while tracing: the layer's last eager choice.
            return _with_defaults(settings, self.choices)
        if not _kernels_apply(layer, x):
            return _defaults_only(settings)
        enabled = tuning_enabled()
        may_time = ((enabled or SESSION.force is not None)
                    and not (x.is_cuda and torch.cuda.is_current_stream_capturing()))
        # Steady state: one tuple and one dict lookup per call (the full key costs ~10x more).
        batch = x.shape[1] if layer.batch_last else x.shape[0]
        memo_key = (x.device, batch_bucket(batch), x.dtype, table, needs_backward, settings,
                    may_time, enabled, MEMORY_GENERATION[0])
        memo = self.memo
        if SESSION.force is None and memo_key in memo:  # lmKAN.tune() resolves (and reports) anew
            return memo[memo_key]
        memo[memo_key] = config = self._resolve_modes(layer, x, needs_backward, settings,
                                                      may_time, table)
        return config

    def _resolve_modes(self, layer, x, needs_backward, settings, may_time, table):
        """Resolve the "auto" settings of each mode the call needs (backward only with grad)."""
        chosen = {}
        for mode in ("forward", "backward") if needs_backward else ("forward",):
            if any(getattr(layer, attr) == AUTO for attr, _ in MODE_FIELDS[mode]):
                # only the forward reads a 16-bit table; the backward kernels read a float32
                # copy of it, so their timing does not depend on the table dtype
                chosen[mode] = _resolve_mode(layer, x, mode, may_time,
                                             table if mode == "forward" else torch.float32)
        self.choices.update(chosen)
        return _with_defaults(settings, chosen)

    def describe(self, layer):
        """For extra_repr: each setting as given, with the resolved value after "auto"."""
        parts = []
        for mode, fields in MODE_FIELDS.items():
            for attr, entry in fields:
                value = getattr(layer, attr)
                if value == AUTO and mode in self.choices:
                    parts.append(f"{attr}=auto:{self.choices[mode][entry]}")
                else:
                    parts.append(f"{attr}={value}")
        return ", ".join(parts)


# Module-level, so that tests can stand in for a GPU with kernels.
def _kernels_apply(layer, x):
    # x.is_cuda first: on CPU the parameter and buffer lookups (nn.Module.__getattr__,
    # about 1 us each) are skipped.
    return x.is_cuda and kernel_applies("lmkan2d_forward", x, layer.func_parameter,
                                        layer.borders)


def _has_backward_kernel():
    return has_cuda_kernel("lmkan2d_backward")


def _with_defaults(settings, chosen):
    """Settings with "auto" replaced by the chosen value of its mode, else the default."""
    values = settings._asdict()
    for mode, fields in MODE_FIELDS.items():
        for attr, entry in fields:
            if values[attr] == AUTO:
                values[attr] = chosen[mode][entry] if mode in chosen else DEFAULTS_2D[attr]
    return LaunchConfig2D(**values)


# Calls without kernels (CPU, float64) resolve "auto" to the defaults on every call: cached
# per settings tuple (a handful of distinct values in a process).
@functools.lru_cache(maxsize=64, typed=True)
def _defaults_only(settings):
    return _with_defaults(settings, {})


def _resolve_mode(layer, x, mode, may_time, table=torch.float32):
    """The choice (entry name -> value) of one mode, from the cache or timed now."""
    key = make_key(layer, x, mode, table)
    entry = lookup(key)
    if entry is not None and not entry.get("stand_in") and not may_time:
        if not tuning_enabled() and SESSION.force is None:
            entry = None  # LMKAN_TUNING=off means the defaults, not earlier timed choices
    may_time = may_time and (mode == "forward" or _has_backward_kernel())
    # An untimed stand-in (made where timing was not allowed) is timed once it is.
    cached = entry is not None and not SESSION.force and not (may_time and entry.get("stand_in"))
    if not cached and may_time:
        timed = time_mode(layer, x, mode, table)
        entry = timed or stand_in_entry(layer, mode, stand_in=False)
        store(key, entry, persist=timed is not None)
    elif entry is None:
        entry = stand_in_entry(layer, mode, stand_in=True)
        store(key, entry, persist=False)
    SESSION.record(layer, key, entry, cached)
    return dict(entry["config"])
