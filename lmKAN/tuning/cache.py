"""The choice cache: an in-memory dict in front of one JSON file.

Holds cache_path (where the file is), lookup and store (TuningKey -> entry, an entry being
{"config": {...}, "ms": ..., "default_ms": ...}), clear_memory_cache, the file's reading
(a corrupt or foreign file warns once and is ignored; so are non-regular and oversized
files; malformed entries are dropped with one warning, so no configuration outside the
supported sets reaches a kernel), its atomic merged writing under a lock file, and
MEMORY_GENERATION, which clear_memory_cache() bumps so that the layers' resolvers drop
what they memoised from the memory it cleared.
"""
import contextlib
import json
import math
import os
import stat
import tempfile
import threading
import warnings

from filelock import FileLock, Timeout

from .._constants import SUPPORTED_BLOCK_SIZES, SUPPORTED_TILE_SIZES
from .key import MODE_FIELDS, parse_key

__all__ = ["ENV_CACHE_DIR", "CACHE_FORMAT", "CACHE_VERSION", "MEMORY_GENERATION", "MAX_FILE_BYTES",
           "LOCK_TIMEOUT_S", "cache_path", "lookup", "store", "clear_memory_cache", "valid_entry"]

ENV_CACHE_DIR = "LMKAN_CACHE_DIR"
CACHE_FORMAT = "lmKAN-tuning"
CACHE_VERSION = 1
# A cache entry takes ~300 bytes: 8 MiB is ~25,000 tuned shapes.
MAX_FILE_BYTES = 8 << 20
LOCK_TIMEOUT_S = 60  # longest wait for another process's read-merge-replace

_SUPPORTED = {"tile_size": SUPPORTED_TILE_SIZES, "block_size": SUPPORTED_BLOCK_SIZES}

_MEMORY = {}           # TuningKey -> entry dict (config, ms, default_ms)
_LOADED_PATHS = set()  # cache files already merged into _MEMORY
_WARNED = set()        # (path, problem) pairs already warned about
_LOCK = threading.RLock()
# A one-element list, so that modules holding it by name see the bumps. Resolvers put it
# in their memo keys: after clear_memory_cache() their memos are stale.
MEMORY_GENERATION = [0]


def cache_path():
    """$LMKAN_CACHE_DIR/tuning.json, else the user cache directory's lmKAN/tuning.json."""
    root = os.environ.get(ENV_CACHE_DIR)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "lmKAN")
    return os.path.join(root, "tuning.json")


def clear_memory_cache():
    """Forget every in-memory choice (the file stays); the next lookup re-reads the file."""
    with _LOCK:
        _MEMORY.clear()
        _LOADED_PATHS.clear()
        MEMORY_GENERATION[0] += 1


def _warn_once(path, kind, message):
    """One warning per (file, kind of problem) and process, whatever the message's details."""
    if (path, kind) not in _WARNED:
        _WARNED.add((path, kind))
        warnings.warn(f"lmKAN tuning cache {path}: {message}", RuntimeWarning, stacklevel=4)


def _usable_file(path):
    """False (after one warning) for a path that exists but is not a regular file of at most
    MAX_FILE_BYTES: a FIFO would block, /dev/zero never ends, a huge file costs seconds per
    read. Such a path is neither read nor written; choices stay in memory."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError as exc:
        _warn_once(path, "stat", f"cannot be examined ({exc}); ignored, choices stay in memory")
        return False
    if not stat.S_ISREG(info.st_mode):
        _warn_once(path, "not-regular", "not a regular file; ignored, choices stay in memory")
        return False
    if info.st_size > MAX_FILE_BYTES:
        _warn_once(path, "oversized", f"{info.st_size} bytes, more than a tuning cache holds "
                                      f"({MAX_FILE_BYTES} at most); ignored, choices stay in memory")
        return False
    return True


def _read_entries(path):
    """The valid entries of the cache file (key string -> entry); {} if missing or unusable.
    Malformed entries are dropped with one warning per file."""
    if not _usable_file(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        _warn_once(path, "unreadable", f"unreadable ({type(exc).__name__}); ignored, will be "
                                       f"rewritten")
        return {}
    if (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)):
        _warn_once(path, "foreign", "not an lmKAN tuning cache (or another format version); "
                                    "ignored, will be rewritten")
        return {}
    if data.get("version") != CACHE_VERSION:
        return {}
    entries, dropped = {}, []
    for text, entry in data["entries"].items():
        key = parse_key(text) if isinstance(text, str) else None
        if key is not None and valid_entry(entry, key.mode):
            entries[text] = entry
        else:
            dropped.append(text)
    if dropped:
        _warn_once(path, "entries", f"{len(dropped)} malformed entr{'y' if len(dropped) == 1 else 'ies'} "
                                    f"dropped (e.g. {str(dropped[0])[:120]!r}): a configuration "
                                    f"outside the supported sets, or missing fields")
    return entries


def valid_entry(entry, mode):
    """Whether `entry` is a well-formed choice for `mode`: exactly that mode's settings, each
    in its supported set (tile sizes, block sizes, fast mode a bool), "ms" and "default_ms"
    present (None or a finite number >= 0), "stand_in" (if present) a bool."""
    fields = MODE_FIELDS.get(mode)
    if fields is None or not isinstance(entry, dict):
        return False
    config = entry.get("config")
    if not isinstance(config, dict) or set(config) != {name for _, name in fields}:
        return False
    for name, value in config.items():
        if name == "fast_mode":
            if not isinstance(value, bool):
                return False
        elif isinstance(value, bool) or value not in _SUPPORTED[name]:
            return False
    for name in ("ms", "default_ms"):
        if name not in entry:
            return False
        value = entry[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            return False
    return isinstance(entry.get("stand_in", False), bool)


def _write_entries(path, new_entries):
    """Merge `new_entries` into the file and replace it atomically, under a lock file beside
    it: the read-merge-replace of every process (DDP ranks, parallel jobs) is serialised, so
    no process's entries are lost. An unusable or unwritable location warns once; choices
    stay in memory."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path + ".lock", timeout=LOCK_TIMEOUT_S):
            if not _usable_file(path):
                return
            entries = _read_entries(path)  # re-read under the lock: other processes wrote
            entries.update(new_entries)
            payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries}
            fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json",
                                       dir=os.path.dirname(path))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except Timeout:
        _warn_once(path, "locked", f"its lock {path}.lock was held for over {LOCK_TIMEOUT_S} s; "
                                   f"tuning choices are kept in memory only")
    except OSError as exc:
        _warn_once(path, "unwritable", f"cannot be written ({type(exc).__name__}: "
                                       f"{exc.strerror or exc}); tuning choices are kept in "
                                       f"memory only")


def lookup(key):
    """The cached entry of `key` (memory first, then the file, read once), or None."""
    with _LOCK:
        path = cache_path()
        if path not in _LOADED_PATHS:
            _LOADED_PATHS.add(path)
            for text, entry in _read_entries(path).items():
                parsed = parse_key(text)
                if parsed is not None:
                    _MEMORY.setdefault(parsed, entry)
        return _MEMORY.get(key)


def store(key, entry, persist=True):
    """Keep `entry` for `key` in memory and, if `persist`, merge it into the file."""
    with _LOCK:
        _MEMORY[key] = entry
        if persist:
            _write_entries(cache_path(), {key.as_string(): entry})
