"""Node-local weight cache: many workers on one node, one download."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from berg_scale.errors import BergScaleError
from berg_scale.weights import ensure_local_weights
from berg_scale.weights.node_cache import LOG_NAME, cache_root_for

from cache_worker import fetch_like_a_worker
from cluster_support import local_files

WORKERS = 4


@pytest.mark.s3
def test_concurrent_workers_download_once(remote_root, tmp_path):
    cache_dir = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=fetch_like_a_worker,
            args=(remote_root.url, remote_root.storage, remote_root.needed, cache_dir, barrier, results),
        )
        for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    roots = {root for root, _ in outcomes}
    assert roots == {cache_root_for(remote_root.url, cache_dir)}
    root = roots.pop()
    needed_bytes = sum(len(remote_root.contents[rel]) for rel in remote_root.needed)
    # Exactly one process moved the bytes, each byte once; the others read nothing.
    received = sorted(count for _, count in outcomes)
    assert received == [0] * (WORKERS - 1) + [needed_bytes]
    with open(os.path.join(root, LOG_NAME)) as handle:
        log = [json.loads(line) for line in handle]
    assert len(log) == 1 and sorted(log[0]["files"]) == sorted(remote_root.needed)
    assert local_files(root) == set(remote_root.needed) | {LOG_NAME}
    for rel in remote_root.needed:
        with open(os.path.join(root, rel), "rb") as handle:
            assert handle.read() == remote_root.contents[rel]


@pytest.mark.s3
def test_complete_cache_answers_without_storage(remote_root, tmp_path, byte_counter):
    cache_dir = str(tmp_path / "cache")
    root = ensure_local_weights(remote_root.url, remote_root.needed, cache_dir, remote_root.storage)
    byte_counter.clear()
    unreachable = type(remote_root.storage)(endpoint_url="http://127.0.0.1:9", anon=False)
    assert ensure_local_weights(remote_root.url, remote_root.needed, cache_dir, unreachable) == root
    assert sum(byte_counter.values()) == 0


@pytest.mark.s3
def test_damaged_cache_file_is_repaired(remote_root, tmp_path):
    cache_dir = str(tmp_path / "cache")
    root = ensure_local_weights(remote_root.url, remote_root.needed, cache_dir, remote_root.storage)
    rel = remote_root.needed[0]
    with open(os.path.join(root, rel), "wb") as handle:
        handle.write(b"short")
    ensure_local_weights(remote_root.url, remote_root.needed, cache_dir, remote_root.storage)
    with open(os.path.join(root, rel), "rb") as handle:
        assert handle.read() == remote_root.contents[rel]


def test_local_root_is_used_in_place(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.npy").write_bytes(b"1")
    assert ensure_local_weights(str(tmp_path), ["a/w.npy"], str(tmp_path / "cache")) == str(tmp_path)
    with pytest.raises(BergScaleError, match="fetch-weights"):
        ensure_local_weights(str(tmp_path), ["a/missing.npy"], str(tmp_path / "cache"))


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    from berg_scale.errors import StorageError
    from berg_scale.weights.locking import directory_lock

    with directory_lock(str(tmp_path)):
        with pytest.raises(StorageError, match="held"):
            with directory_lock(str(tmp_path), timeout_s=0.3):
                pass
    with directory_lock(str(tmp_path), timeout_s=0.3):  # released on exit
        pass
