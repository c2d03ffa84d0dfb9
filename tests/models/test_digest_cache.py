"""Weight digests remembered across driver starts: reused only for the same file state."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from berg_scale.models import store as weight_store
from berg_scale.models.store import WeightStore
from berg_scale.weights.digest_cache import DigestCache, default_cache_path, forget_remembered_digest


def _counting(value: str):
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return value

    return compute, calls


def test_a_digest_is_reused_by_a_later_cache_on_the_same_file(tmp_path):
    path = str(tmp_path / "digests.json")
    first = DigestCache(path)
    compute, calls = _counting("a" * 64)
    assert first.digest("u\t1\tstamp", compute) == "a" * 64
    first.save()

    later = DigestCache(path)  # another driver start
    again, calls_again = _counting("b" * 64)
    assert later.digest("u\t1\tstamp", again) == "a" * 64
    assert calls == [1] and calls_again == []
    other_stamp, calls_other = _counting("c" * 64)
    assert later.digest("u\t1\tnewer", other_stamp) == "c" * 64
    assert calls_other == [1]


def test_no_stamp_means_no_caching(tmp_path):
    cache = DigestCache(str(tmp_path / "digests.json"))
    compute, calls = _counting("a" * 64)
    cache.digest(None, compute)
    cache.digest(None, compute)
    assert calls == [1, 1]


def test_an_unreadable_cache_file_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "digests.json"
    path.write_text("{not json")
    cache = DigestCache(str(path))
    assert cache.entries == {}
    cache.digest("k", lambda: "d" * 64)
    cache.save()
    assert json.loads(path.read_text()) == {"k": "d" * 64}
    path.write_text(json.dumps({"k": "short", "j": 3}))  # entries that are not digests
    assert DigestCache(str(path)).entries == {}


def test_two_drivers_keep_each_others_entries(tmp_path):
    path = str(tmp_path / "digests.json")
    one, two = DigestCache(path), DigestCache(path)
    one.digest("k1", lambda: "1" * 64)
    two.digest("k2", lambda: "2" * 64)
    one.save()
    two.save()
    assert DigestCache(path).entries == {"k1": "1" * 64, "k2": "2" * 64}
    assert [name for name in os.listdir(tmp_path)] == ["digests.json"], "no temporary left behind"


def test_forgetting_a_url_drops_it_from_the_file(tmp_path, monkeypatch):
    path = str(tmp_path / "digests.json")
    monkeypatch.setenv("BERG_SCALE_DIGEST_CACHE", path)
    cache = DigestCache(path)
    cache.digest("s3://b/w.npy\t8\te1", lambda: "1" * 64)
    cache.digest("s3://b/w.npy.bak\t8\te1", lambda: "2" * 64)
    cache.save()
    forget_remembered_digest("s3://b/w.npy")
    assert DigestCache(path).entries == {"s3://b/w.npy.bak\t8\te1": "2" * 64}


@pytest.mark.parametrize("value", ["off", "OFF", "0", "no"])
def test_the_cache_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("BERG_SCALE_DIGEST_CACHE", value)
    assert default_cache_path() is None
    cache = DigestCache(default_cache_path())
    cache.digest("k", lambda: "a" * 64)
    cache.save()  # nowhere to write: nothing happens, nothing fails


def test_weight_store_hashes_a_rewritten_file_again(tmp_path):
    """A new modification time (any rewrite) is a new entry: the bytes are read again."""
    np.save(tmp_path / "w.npy", np.zeros(16, dtype=np.float32))
    digests = DigestCache(str(tmp_path / "digests.json"))
    store = WeightStore(str(tmp_path))
    first = store.sha256("w.npy", digests)
    digests.save()
    np.save(tmp_path / "w.npy", np.ones(16, dtype=np.float32))  # same size, new bytes
    stat = os.stat(tmp_path / "w.npy")
    os.utime(tmp_path / "w.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    weight_store._HASH_CACHE.clear()  # as in a new process
    before = weight_store.hash_computations
    second = WeightStore(str(tmp_path)).sha256("w.npy", DigestCache(str(tmp_path / "digests.json")))
    assert second != first
    assert weight_store.hash_computations - before == 1
