"""A node-local copy of a remote BERG root, shared by every worker on the node.

With eight GPU workers on a node and `berg_root` in S3, each worker fetching its own
copy would move eight times 0.5-6 GB. Instead the first worker to take the cache
directory's lock downloads, the others wait on the lock and then find every file
present. Files appear under their final names only when complete (see `fetch`), so a
reader never sees a partial file, and a crashed downloader leaves a resumable `.part`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Iterable

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote
from berg_scale.weights.fetch import fetch_files
from berg_scale.weights.locking import directory_lock

STAMP_NAME = ".berg-scale-cache.json"
LOG_NAME = "fetch-log.jsonl"
CACHE_DIR_VARIABLE = "BERG_SCALE_WEIGHTS_CACHE"


def default_cache_dir() -> str:
    """$BERG_SCALE_WEIGHTS_CACHE (cluster configs point it at local NVMe), else ~/.cache."""
    return os.environ.get(CACHE_DIR_VARIABLE) or os.path.join(
        os.path.expanduser("~"), ".cache", "berg-scale", "weights"
    )


def cache_root_for(remote_root: str, cache_dir: str) -> str:
    """One sub-folder per remote root, so two buckets never mix files in one cache."""
    name = hashlib.sha256(remote_root.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), name)


def _read_stamp(local_root: str) -> dict[str, int]:
    try:
        with open(os.path.join(local_root, STAMP_NAME), encoding="utf-8") as handle:
            files = json.load(handle).get("files", {})
        return {str(k): int(v) for k, v in files.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _already_complete(local_root: str, files: list[str]) -> bool:
    """True when an earlier fetch recorded every file and each is still there, same size."""
    stamp = _read_stamp(local_root)
    for rel in files:
        size = stamp.get(rel)
        path = os.path.join(local_root, rel)
        if size is None or not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
    return True


def _write_stamp(local_root: str, remote_root: str, sizes: dict[str, int]) -> None:
    merged = {**_read_stamp(local_root), **sizes}
    tmp = os.path.join(local_root, f"{STAMP_NAME}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"remote_root": remote_root, "files": merged}, handle, indent=1)
    os.replace(tmp, os.path.join(local_root, STAMP_NAME))


def ensure_local_weights(
    remote_root: str,
    files: Iterable[str],
    cache_dir: str | None = None,
    storage: StorageOptions | None = None,
    *,
    lock_timeout_s: float = 3600.0,
    progress: bool = False,
) -> str:
    """Return a local BERG root holding `files` of `remote_root`, fetching at most once.

    A local `remote_root` is returned unchanged (after checking the files exist). Call
    it in each worker before building `ModelSet`, with the relative paths from
    `berg_scale.weights.files_for_readouts(specs)`, and pass the result as `berg_root`.
    `cache_dir` defaults to `default_cache_dir()`.
    """
    files = list(dict.fromkeys(files))
    if not is_remote(remote_root):
        absent = [rel for rel in files if not os.path.isfile(os.path.join(remote_root, rel))]
        if absent:
            raise BergScaleError(
                f"{len(absent)} BERG file(s) missing under {remote_root}, e.g. {absent[0]}; "
                "run `berg-scale fetch-weights` for this run's readouts"
            )
        return remote_root
    local_root = cache_root_for(remote_root, cache_dir or default_cache_dir())
    if _already_complete(local_root, files):
        return local_root
    with directory_lock(local_root, timeout_s=lock_timeout_s):
        # Whoever held the lock before us may have fetched everything meanwhile.
        if _already_complete(local_root, files):
            return local_root
        fs, root = filesystem_for(remote_root, storage)
        started = time.time()
        report = fetch_files(fs, root, files, local_root, progress=progress, lock=False)
        _write_stamp(local_root, remote_root, {f.path: f.size for f in report.files})
        if report.downloaded:
            _append_log(local_root, {
                "time": started,
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "remote_root": remote_root,
                "files": report.downloaded,
                "bytes": report.bytes_transferred,
                "seconds": round(time.time() - started, 3),
            })
    return local_root


def _append_log(local_root: str, entry: dict) -> None:
    with open(os.path.join(local_root, LOG_NAME), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
