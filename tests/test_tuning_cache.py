"""The tuning cache file under concurrency and bad contents (issue 18, item 2): no entry lost
when processes store at once, no malformed entry used, no path that hangs, exhausts memory
or recursion, one warning per problem."""
import json
import multiprocessing
import os
import time
import warnings

import pytest

from lmKAN import tuning
from lmKAN.tuning import cache


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_WARNED", set())
    tuning.clear_memory_cache()
    yield
    tuning.clear_memory_cache()


def _key(i, mode="forward"):
    return tuning.TuningKey("Fake GPU", "9.0", "2.x", "0.x", "LMKAN2DLayer", 8, 8, 10, 1024,
                            "batch_last", mode, "float32", f"case={i}")


def _entry(tile=8, block=256, **extra):
    return {"config": {"tile_size": tile, "block_size": block}, "ms": 1.0, "default_ms": 2.0,
            **extra}


def _store_many(first, count):
    for i in range(first, first + count):
        cache.store(_key(i), _entry())


def _file_entries():
    with open(tuning.cache_path(), encoding="utf-8") as f:
        return json.load(f)["entries"]


def test_processes_storing_at_once_lose_no_entry():
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_store_many, args=(25 * w, 25)) for w in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert len(_file_entries()) == 200


def _write_cache(entries):
    path = tuning.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"format": tuning.CACHE_FORMAT, "version": tuning.CACHE_VERSION,
                   "entries": entries}, f)
    return path


POISONED = {
    "tile 3": _entry(tile=3),
    "block 48": _entry(block=48),
    "tile as bool": _entry(tile=True),
    "huge int": _entry(block=10 ** 30),
    "negative ms": dict(_entry(), ms=-1.0),
    "no ms": {"config": {"tile_size": 8, "block_size": 256}, "default_ms": 2.0},
    "extra setting": {"config": {"tile_size": 8, "block_size": 256, "fast_mode": True},
                      "ms": 1.0, "default_ms": 2.0},
    "config not a dict": {"config": [8, 256], "ms": 1.0, "default_ms": 2.0},
    "fast_mode not a bool": {"config": {"tile_size": 8, "block_size": 256, "fast_mode": 1},
                             "ms": 1.0, "default_ms": 2.0},
}


def test_malformed_entries_are_dropped_with_one_warning():
    keys = {name: _key(i, "backward" if "fast_mode" in name else "forward")
            for i, name in enumerate(POISONED)}
    good = _key(99)
    path = _write_cache({**{keys[n].as_string(): e for n, e in POISONED.items()},
                         good.as_string(): _entry(tile=16, block=64)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.lookup(good)["config"] == {"tile_size": 16, "block_size": 64}
        for name, key in keys.items():
            assert cache.lookup(key) is None, name
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and path in messages[0] and f"{len(POISONED)} malformed" in messages[0]


def test_tune_rows_of_a_cache_without_ms_do_not_fail():
    """Entries without "ms" used to make lmKAN.tune raise KeyError: they are dropped now."""
    key = _key(1)
    _write_cache({key.as_string(): {"config": {"tile_size": 8, "block_size": 256}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cache.lookup(key) is None


def _bad_path(kind):
    path = tuning.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "deep-json":
        with open(path, "w") as f:
            f.write("[" * 100000)
    elif kind == "oversized":
        with open(path, "wb") as f:
            f.truncate(cache.MAX_FILE_BYTES + 1)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep-json", "oversized"])
def test_unusable_files_are_ignored_with_one_warning(kind):
    path = _bad_path(kind)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.lookup(_key(1)) is None
        cache.store(_key(2), _entry())  # neither blocks nor raises
        cache.store(_key(3), _entry())
        tuning.clear_memory_cache()
        assert cache.lookup(_key(4)) is None
    assert time.monotonic() - start < 5
    assert len(caught) == 1 and path in str(caught[0].message)
    if kind == "deep-json":  # a malformed file is rewritten, the others are left alone
        assert set(_file_entries()) == {_key(2).as_string(), _key(3).as_string()}


def test_unwritable_location_warns_once(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(blocker / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            cache.store(_key(i), _entry())
    assert len(caught) == 1 and "cannot be written" in str(caught[0].message)
    assert cache.lookup(_key(2)) is not None  # kept in memory
