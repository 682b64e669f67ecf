"""The choice cache: an in-memory dict in front of one JSON file.

Holds cache_path (where the file is), lookup and store (TuningKey -> entry, an entry being
{"config": {...}, "ms": ..., "default_ms": ...}), clear_memory_cache, the file's reading
(a corrupt or foreign file warns once and is ignored), its atomic merged writing, and
MEMORY_GENERATION, which clear_memory_cache() bumps so that the layers' resolvers drop
what they memoised from the memory it cleared.
"""
import contextlib
import json
import os
import tempfile
import threading
import warnings

from .key import parse_key

__all__ = ["ENV_CACHE_DIR", "CACHE_FORMAT", "CACHE_VERSION", "MEMORY_GENERATION", "cache_path",
           "lookup", "store", "clear_memory_cache"]

ENV_CACHE_DIR = "LMKAN_CACHE_DIR"
CACHE_FORMAT = "lmKAN-tuning"
CACHE_VERSION = 1

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
