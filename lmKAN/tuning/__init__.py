"""Automatic choice of tile and block sizes for the 2D layer's CUDA kernels.

A layer built with tile_size_*="auto" / block_size_*="auto" (the defaults) times the
candidate configurations once per key, on the first CUDA call for that key, and reuses the
fastest ever after. The key is (GPU model and compute capability, torch and lmKAN
versions, the latter with the digest of the kernel sources setup.py recorded, layer kind,
input_dim, output_dim, num_grids, batch bucket, layout, mode, dtype, which settings are
searched); see `TuningKey`.

Choices live in an in-memory dict in front of a JSON file: $LMKAN_CACHE_DIR/tuning.json,
else $XDG_CACHE_HOME/lmKAN/tuning.json, else ~/.cache/lmKAN/tuning.json. The file is
written atomically (temporary file + os.replace) and merged with what other processes
wrote, under a lock file (filelock); entries are validated when read; a corrupt, foreign,
non-regular or oversized file is ignored with one warning.

LMKAN_TUNING=off (or 0/false/no) disables timing: "auto" then means the defaults
(DEFAULTS_2D; lmKAN.tune() still times: it is an explicit request). A layer reads it when
it first sees a kind of call: later calls of that kind run the stored plan
(lmKAN/_call_plans.py).

Timing never happens on CPU tensors (no kernels: "auto" resolves to the defaults), inside
CUDA graph capture, or while torch.compile traces (both use the cached choice or the
default). The 1D layer's kernels take no tile or block size: nothing to tune there.

Modules (each imports only the ones above it, plus lmKAN's ops, _extension, _device,
_constants and _version; never the layer modules or the package itself):
  key.py      AUTO, DEFAULTS_2D, LaunchConfig2D, TuningKey, batch buckets, make_key
  cache.py    the memory + JSON file cache: lookup, store, clear_memory_cache, cache_path
  search.py   candidates, CUDA-event timing (measure_ms), the coordinate search
  session.py  lmKAN.tune() and its TuneRow report, PERFORMANCE_CASES
  resolve.py  the per-call resolution: LaunchResolver (owned by each 2D layer: its
              config() and describe()), tuning_enabled
  cli.py      the command line `python -m lmKAN.tune` (lmKAN/tune.py passes it the layer)
"""
from .cache import (CACHE_FORMAT, CACHE_VERSION, ENV_CACHE_DIR, cache_path,
                    clear_memory_cache, lookup, store)
from .key import (AUTO, BATCH_BUCKET_CAP, DEFAULTS_2D, LaunchConfig2D, TuningKey, batch_bucket,
                  device_signature, make_key)
from .resolve import ENV_TUNING, LaunchResolver, layer_settings, tuning_enabled
from .search import CANDIDATE_BUDGET_S, MAX_REPS, SHORT_RUN_MS, measure_ms
from .session import PERFORMANCE_CASES, TuneRow, format_config, tune

# Public: LaunchResolver, and the names lmKAN/tuning.py had before it became this package
# (launch_config_2d and describe are now LaunchResolver.config and .describe).
__all__ = ["AUTO", "LaunchConfig2D", "LaunchResolver", "TuningKey", "TuneRow", "tune",
           "cache_path", "clear_memory_cache", "tuning_enabled", "batch_bucket",
           "PERFORMANCE_CASES", "DEFAULTS_2D", "BATCH_BUCKET_CAP", "ENV_CACHE_DIR", "ENV_TUNING",
           "CACHE_FORMAT", "CACHE_VERSION", "MAX_REPS", "CANDIDATE_BUDGET_S", "SHORT_RUN_MS",
           "lookup", "store", "device_signature", "make_key", "measure_ms", "layer_settings",
           "format_config"]
