"""Saving an ANN index next to the results, and reusing it only while it is still valid.

An index folder (by default `<out>/index/`) holds

    index.faiss    the serialised faiss index
    ids.parquet    vector id -> shard, index, key of its image
    index.json     what it was built from: columns, metric, HNSW settings, library
                   version, and every committed shard with its commit time

`index.json` is written last and removed first, so a folder with a manifest always has
matching files. A later `--index ann` search reuses the index when the manifest still
matches the output and the options (same columns, metric and settings, and the same
shards committed at the same times); otherwise it says why and builds a new one.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from berg_scale.io.output_store import OutputStore, read_done_markers
from berg_scale.io.storage import StorageOptions, filesystem_for
from berg_scale.search.ann import AnnIndex, AnnParams, load_faiss
from berg_scale.search.columns import ColumnSpec
from berg_scale.search.errors import SearchError
from berg_scale.search.scan import ScanCounts

FORMAT = 1
INDEX_FILE, IDS_FILE, MANIFEST_FILE = "index.faiss", "ids.parquet", "index.json"


def shard_stamps(responses: str, shards: Sequence[str], storage: StorageOptions | None = None) -> dict[str, Any]:
    """Shard name -> commit time from its `_done` marker (a recommitted shard changes it)."""
    markers = read_done_markers(OutputStore(responses, storage), shards)
    return {name: (markers.get(name) or {}).get("committed_at") for name in shards}


def expected_manifest(columns: Sequence[ColumnSpec], metric: str, params: AnnParams,
                      stamps: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields an index must match to be reused."""
    faiss = load_faiss()
    return {
        "format": FORMAT, "library": "faiss", "library_version": faiss.__version__, "kind": "IndexHNSWFlat",
        "metric": metric, "columns": [{"name": c.name, "width": c.width} for c in columns],
        "hnsw_m": params.m, "ef_construction": params.ef_construction, "shards": stamps,
    }


def save_index(ann: AnnIndex, directory: str, manifest: dict[str, Any], responses: str,
               storage: StorageOptions | None = None) -> list[str]:
    faiss = load_faiss()
    fs, root = filesystem_for(directory, storage)
    fs.makedirs(root, exist_ok=True)
    paths = {name: posixpath.join(root, name) for name in (INDEX_FILE, IDS_FILE, MANIFEST_FILE)}
    if fs.exists(paths[MANIFEST_FILE]):
        fs.rm(paths[MANIFEST_FILE])
    with fs.open(paths[INDEX_FILE], "wb") as handle:
        handle.write(faiss.serialize_index(ann.index).tobytes())
    ids = pa.table({
        "id": pa.array(np.arange(ann.size, dtype=np.int64)),
        "shard": pa.DictionaryArray.from_arrays(pa.array(ann.shard_of), pa.array(list(ann.shards), pa.string())),
        "index": pa.array(ann.position_of),
        "key": ann.keys,
    })
    with fs.open(paths[IDS_FILE], "wb") as handle:
        pq.write_table(ids, handle)
    full = {**manifest, "responses": responses, "vectors": ann.size, "counts": ann.counts.as_dict(),
            "ef_search_default": ann.params.ef_search, "built_at": time.time(),
            "build_seconds": round(ann.build_seconds, 3)}
    with fs.open(paths[MANIFEST_FILE], "w") as handle:
        json.dump(full, handle, indent=1, sort_keys=True)
    return [paths[INDEX_FILE], paths[IDS_FILE], paths[MANIFEST_FILE]]


def load_index(directory: str, expected: dict[str, Any], params: AnnParams,
               storage: StorageOptions | None = None) -> tuple[AnnIndex | None, str]:
    """(the saved index, "") when it matches `expected`, else (None, why it cannot be reused)."""
    manifest, reason = saved_manifest(directory, expected, storage)
    if manifest is None:
        return None, reason
    fs, root = filesystem_for(directory, storage)
    faiss = load_faiss()
    try:
        raw = fs.cat_file(posixpath.join(root, INDEX_FILE))
        ids = pq.read_table(posixpath.join(root, IDS_FILE), filesystem=fs)
    except FileNotFoundError as exc:
        return None, f"the saved index in {directory} is incomplete ({exc})"
    try:
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
    except RuntimeError as exc:
        raise SearchError(f"{posixpath.join(directory, INDEX_FILE)} is not a readable faiss index "
                          f"({' '.join(str(exc).split())[:120]}): rerun with --rebuild-index") from None
    if index.ntotal != ids.num_rows:
        return None, f"the saved index in {directory} has {index.ntotal} vectors but {ids.num_rows} ids"
    shards = tuple(expected["shards"])
    names = ids.column("shard").combine_chunks()
    number = {name: i for i, name in enumerate(shards)}
    shard_of = np.array([number[s] for s in names.dictionary.to_pylist()], np.int32)[names.indices.to_numpy()]
    counts = ScanCounts()
    saved = manifest.get("counts", {})
    counts.n_shards, counts.n_images = int(saved.get("shards", 0)), int(saved.get("images", 0))
    counts.n_nonfinite, counts.n_undefined = int(saved.get("nonfinite_skipped", 0)), int(saved.get("undefined_distance", 0))
    counts.nonfinite_by_column = dict(saved.get("nonfinite_by_column", {}))
    ann = AnnIndex(index, expected["metric"], shards, shard_of, ids.column("index").to_numpy().astype(np.int64),
                   ids.column("key").combine_chunks(), counts, params, reused=True,
                   build_seconds=float(manifest.get("build_seconds", 0.0)))
    return ann, ""


def saved_manifest(directory: str, expected: dict[str, Any],
                   storage: StorageOptions | None = None) -> tuple[dict[str, Any] | None, str]:
    """(the saved manifest, "") when it matches `expected`, else (None, why not); reads nothing else."""
    fs, root = filesystem_for(directory, storage)
    try:
        manifest = json.loads(fs.cat_file(posixpath.join(root, MANIFEST_FILE)))
    except FileNotFoundError:
        return None, f"no saved index in {directory}"
    except ValueError:
        return None, f"{posixpath.join(directory, MANIFEST_FILE)} is not valid JSON"
    reason = _mismatch(manifest, expected)
    if reason:
        return None, f"the saved index in {directory} {reason}"
    return manifest, ""


def _mismatch(manifest: dict[str, Any], expected: dict[str, Any]) -> str:
    if manifest.get("format") != FORMAT or manifest.get("library") != "faiss":
        return "has another format"
    if manifest.get("library_version") != expected["library_version"]:
        return f"was built with faiss {manifest.get('library_version')}, this is {expected['library_version']}"
    for field, label in (("metric", "metric"), ("columns", "columns"), ("hnsw_m", "--hnsw-m"),
                         ("ef_construction", "--ef-construction")):
        if manifest.get(field) != expected[field]:
            return f"was built with another {label} ({manifest.get(field)!r})"
    saved, now = manifest.get("shards") or {}, expected["shards"]
    if saved != now:
        added = sorted(set(now) - set(saved))
        gone = sorted(set(saved) - set(now))
        changed = sorted(s for s in set(now) & set(saved) if now[s] != saved[s])
        if added:
            return f"lacks {len(added)} shard(s) committed since (e.g. {added[0]})"
        if gone:
            return f"covers {len(gone)} shard(s) no longer committed (e.g. {gone[0]})"
        return f"predates a recommit of {len(changed)} shard(s) (e.g. {changed[0]})"
    return ""
