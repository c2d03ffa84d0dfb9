"""The output folder's bookkeeping: commit markers, the run manifest, readout coordinates.

Layout of an output root (local folder or s3:// prefix):

    responses/<shard>.parquet   one file per input shard (written by `response_writer`)
    _done/<shard>.json          commit marker, written last; readers trust only these
    _failed/<shard>.json        a shard quarantined after its last attempt, with the error
    _tmp/<run id>/              one run's staging area for atomic writes (removed by that run)
    _lease.json                 the lease of the run writing the output (`output_lease`)
    run.json                    manifest: redacted config, fingerprints, versions, totals
    readouts.json               every output column's coordinates (voxels, channels, times)

Every file is written to its run's staging folder first and then moved into place, so a
reader never sees a half-written file, and a duplicate (speculative) execution of a
shard overwrites the same keys with the same content instead of adding rows. Each run
stages under its own folder and removes only that folder: a run never deletes what
another run (or an earlier, killed one) is in the middle of writing.

This module is the one home of the format: the engine commits through `commit_shard`,
and `status`, RNC and the result helpers read committed shards through `done_shards`
and `read_done_markers`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Iterable, TypeVar

from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.storage import StorageOptions, filesystem_for, to_url

RESPONSES_DIR = "responses"
DONE_DIR = "_done"
FAILED_DIR = "_failed"
TMP_DIR = "_tmp"
RUN_FILE = "run.json"
READOUTS_FILE = "readouts.json"
MANIFEST_FORMAT = 1

T = TypeVar("T")


class OutputStore:
    """Paths and atomic writes inside one output root."""

    def __init__(self, output: str, storage: StorageOptions | None = None, run_id: str | None = None) -> None:
        self.url = output
        self.storage = storage
        self.run_id = run_id
        self.fs, self.root = filesystem_for(output, storage)

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts)])

    def response_path(self, shard: str) -> str:
        return self.path(RESPONSES_DIR, f"{shard}.parquet")

    def done_path(self, shard: str) -> str:
        return self.path(DONE_DIR, f"{shard}.json")

    def failed_path(self, shard: str) -> str:
        return self.path(FAILED_DIR, f"{shard}.json")

    def staging_folder(self) -> str:
        """This run's staging folder, relative to the root (`_tmp/<run id>`)."""
        return f"{TMP_DIR}/{self.run_id}" if self.run_id else TMP_DIR

    def temp_path(self, final_path: str) -> str:
        name = final_path.rsplit("/", 1)[-1]
        return self.path(self.staging_folder(), f"{uuid.uuid4().hex}-{name}")

    def url_of(self, path: str) -> str:
        return to_url(self.fs, path)

    # ------------------------------------------------------------------ writes
    def ensure_parent(self, path: str) -> None:
        """Object stores have no folders; local filesystems need them before a write."""
        if not self.url.startswith(("s3://", "s3a://")):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)

    def publish(self, temp_path: str, final_path: str) -> None:
        """Move a fully written temporary file to its final key (replacing any old one)."""
        self.ensure_parent(final_path)
        self.fs.mv(temp_path, final_path)
        self.fs.invalidate_cache(final_path.rsplit("/", 1)[0])

    def write_bytes(self, final_path: str, data: bytes) -> None:
        temp = self.temp_path(final_path)
        self.ensure_parent(temp)
        self.fs.pipe_file(temp, data)
        self.publish(temp, final_path)

    def write_json(self, final_path: str, payload: Any) -> None:
        self.write_bytes(final_path, json.dumps(payload, indent=1, sort_keys=True, default=_jsonable).encode())

    def read_json(self, path: str) -> Any | None:
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def remove_tree(self, relative: str) -> None:
        path = self.path(relative)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def remove_folder_if_empty(self, relative: str) -> None:
        """Drop an empty local folder (object stores have none), e.g. `_tmp/` after a run."""
        if self.url.startswith(("s3://", "s3a://")):
            return
        try:
            self.fs.rmdir(self.path(relative))
        except OSError:
            pass  # not empty (another run is staging there) or already gone

    # ------------------------------------------------------------------ listings
    def list_names(self, folder: str, suffix: str) -> set[str]:
        """Stems of the files in one bookkeeping folder (fresh listing, no stale cache)."""
        path = self.path(folder)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return set()
        names = set()
        for entry in entries:
            base = entry.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(suffix):
                names.add(base[: -len(suffix)])
        return names


# --------------------------------------------------------------------------- markers


def done_shards(store: OutputStore) -> set[str]:
    return store.list_names(DONE_DIR, ".json")


def response_shards(store: OutputStore) -> set[str]:
    """Shards that have a response file, committed or not (one listing of responses/)."""
    return store.list_names(RESPONSES_DIR, ".parquet")


def failed_shards(store: OutputStore) -> set[str]:
    return store.list_names(FAILED_DIR, ".json")


def read_done_markers(store: OutputStore, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Commit markers of many shards in batched, concurrent reads (one listing, no probes)."""
    names = sorted(set(names))
    if not names:
        return {}
    paths = {store.done_path(name): name for name in names}
    markers: dict[str, dict[str, Any]] = {}
    batch = 1000
    keys = list(paths)
    for start in range(0, len(keys), batch):
        found = store.fs.cat(keys[start:start + batch], on_error="omit")
        for path, raw in found.items():
            name = paths.get(path) or paths.get(store.fs._strip_protocol(path))
            if name is None:
                continue
            try:
                markers[name] = json.loads(raw)
            except ValueError:
                markers[name] = {"shard": name, "unreadable": True}
    return markers


def commit_shard(store: OutputStore, shard: str, staged: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish a shard: its Parquet file first, then its marker (the commit point).

    `staged` is the shard's open ResponseShardWriter. Readers trust only shards with a
    marker, so a crash between the two leaves an uncommitted file that the next execution
    overwrites.
    """
    output_path = staged.commit()
    marker = {**payload, "output": store.url_of(output_path)}
    write_done_marker(store, shard, marker)
    return marker


def write_done_marker(store: OutputStore, shard: str, payload: dict[str, Any]) -> None:
    store.write_json(store.done_path(shard), {"shard": shard, "committed_at": time.time(), **payload})
    store.remove(store.failed_path(shard))


def read_done_marker(store: OutputStore, shard: str) -> dict[str, Any] | None:
    return store.read_json(store.done_path(shard))


def write_failed_marker(store: OutputStore, shard: str, payload: dict[str, Any]) -> None:
    store.write_json(store.failed_path(shard), {"shard": shard, "failed_at": time.time(), **payload})


def read_failed_marker(store: OutputStore, shard: str) -> dict[str, Any] | None:
    return store.read_json(store.failed_path(shard))


def read_manifest(store: OutputStore) -> dict[str, Any] | None:
    return store.read_json(store.path(RUN_FILE))


def write_manifest(store: OutputStore, manifest: dict[str, Any]) -> None:
    store.write_json(store.path(RUN_FILE), {"format": MANIFEST_FORMAT, **manifest})


def read_readouts(store: OutputStore) -> dict[str, Any] | None:
    return store.read_json(store.path(READOUTS_FILE))


def write_readouts(store: OutputStore, columns: list[dict[str, Any]]) -> None:
    store.write_json(store.path(READOUTS_FILE), {"columns": columns})


def clear_output(store: OutputStore) -> None:
    """Remove what a previous run wrote (only berg-scale's own entries, nothing else).

    Markers go first: a clear that stops midway (a killed driver, a storage error) then
    leaves response files that no marker vouches for, which the next run simply writes
    again, never a marker whose response file is already gone.
    """
    for folder in (DONE_DIR, FAILED_DIR):
        store.remove_tree(folder)
    store.remove(store.path(RUN_FILE))
    store.remove(store.path(READOUTS_FILE))
    for folder in (RESPONSES_DIR, TMP_DIR):
        store.remove_tree(folder)


def with_storage_retries(action: Callable[[], T], what: str, attempts: int = 5, delay_s: float = 1.0) -> T:
    """Retry a driver-side storage call through short outages (e.g. an S3 server restart)."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except BergScaleError as exc:
            if not isinstance(exc, StorageError) or attempt == attempts:
                raise  # a refusal (a busy output, a mismatch) is an answer, not an outage
            time.sleep(delay_s * attempt)
        except Exception as exc:  # noqa: BLE001 - botocore errors are not OSErrors; re-raised below
            if isinstance(exc, (FileNotFoundError, PermissionError)) or attempt == attempts:
                raise StorageError(f"{what} failed: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
            time.sleep(delay_s * attempt)
    raise AssertionError("unreachable")


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
