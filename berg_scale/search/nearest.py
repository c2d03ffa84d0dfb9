"""One search from start to end: columns, target, exact or ANN, and what was left out.

`find_nearest` is what the CLI calls and what Python users call; writing the tables and
the grid is `berg_scale.search.outputs`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from berg_scale.io.output_store import OutputStore, read_done_markers
from berg_scale.io.storage import StorageOptions
from berg_scale.rnc.responses import ResponseStore
from berg_scale.search.ann import AnnParams, build_index, faiss_available, search_index
from berg_scale.search.columns import ColumnSpec, resolve_columns
from berg_scale.search.errors import SearchError
from berg_scale.search.exact import exact_search
from berg_scale.search.index_store import (
    expected_manifest,
    load_index,
    save_index,
    saved_manifest,
    shard_stamps,
)
from berg_scale.search.metrics import METRICS, check_metric
from berg_scale.search.scan import ScanCounts
from berg_scale.search.target import Target, target_from_file, target_like
from berg_scale.search.topk import Hit

INDEX_CHOICES = ("exact", "ann", "auto")
DEFAULT_ANN_ABOVE = 10_000_000


@dataclass(frozen=True)
class SearchRequest:
    """What to search for, over which columns, how, and where a reusable index lives."""

    responses: str
    columns: Sequence[str]
    target_file: str | None = None
    like: str | None = None
    k: int = 10
    metric: str = "euclidean"
    index: str = "exact"
    ann_above: int = DEFAULT_ANN_ABOVE
    ann: AnnParams = field(default_factory=AnnParams)
    index_dir: str | None = None  # where an ANN index is saved and reused (None: not saved)
    rebuild_index: bool = False
    storage: StorageOptions | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    counts: ScanCounts
    method: str  # "exact" or "ann"
    columns: list[ColumnSpec]
    target: Target
    metric: str
    k: int
    seconds: dict[str, float] = field(default_factory=dict)
    ann: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. the output is still being written

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)


def check_request(request: SearchRequest) -> None:
    if request.k < 1:
        raise SearchError(f"-k must be 1 or more (got {request.k})")
    if request.metric not in METRICS:
        raise SearchError(f"unknown metric {request.metric!r}: use one of {', '.join(METRICS)}")
    if request.index not in INDEX_CHOICES:
        raise SearchError(f"--index {request.index!r}: use one of {', '.join(INDEX_CHOICES)}")
    if (request.target_file is None) == (request.like is None):
        raise SearchError("give exactly one target: --target FILE or --like SHARD/KEY")
    if request.ann_above < 0:
        raise SearchError(f"--ann-above must be 0 or more (got {request.ann_above})")
    request.ann.check()


def find_nearest(
    request: SearchRequest, on_shard: Callable[[str, int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SearchResult:
    """The k committed images whose vectors over `request.columns` are nearest the target.

    A responses output that is still being written or only partly committed is searched
    as it is; `warn` (default: a `warning:` line on stderr) is told so before the search,
    and the result records it.
    """
    check_request(request)
    started = time.monotonic()
    store = ResponseStore(request.responses, request.storage)
    warnings = [w for w in (store.unfinished_warning(),) if w]
    for line in warnings:
        (warn or _warn_stderr)(line)
    columns = resolve_columns(store, request.columns)
    width = sum(c.width for c in columns)
    check_metric(request.metric, width)
    target = (target_like(store, columns, request.like) if request.like
              else target_from_file(str(request.target_file), request.storage))
    if target.vector.size != width:
        parts = ", ".join(f"{c.name}: {c.width}" for c in columns)
        raise SearchError(
            f"the target has {target.vector.size} values but the searched columns give {width} ({parts}): "
            f"give a target with one value per column value, in this order"
        )
    notes: list[str] = []
    method = _method(request, store, columns, notes)
    seconds = {"prepare": time.monotonic() - started}
    if method == "exact":
        scan_started = time.monotonic()
        hits, counts = exact_search(store, columns, target.vector, request.metric, request.k, target.exclude,
                                    (lambda i, n: on_shard("searched", i, n)) if on_shard else None)
        seconds["search"] = time.monotonic() - scan_started
        ann_info = None
    else:
        hits, counts, ann_info = _ann(request, store, columns, target, seconds, notes, on_shard)
    if len(hits) < request.k:
        notes.append(f"only {len(hits)} images could be ranked, fewer than k = {request.k}")
    seconds["total"] = time.monotonic() - started
    return SearchResult(hits, counts, method, columns, target, request.metric, request.k, seconds, ann_info, notes,
                        warnings)


def _warn_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _method(request: SearchRequest, store: ResponseStore, columns: Sequence[ColumnSpec], notes: list[str]) -> str:
    """exact or ann; `auto` takes a still-valid saved index, else ANN only above --ann-above images.

    One exact pass is cheaper than building an index, so an index pays off only when
    it is reused by many queries or the collection is too large to scan per query.
    """
    if request.index != "auto":
        return request.index
    have_faiss = faiss_available()
    if have_faiss and request.index_dir:
        stamps = shard_stamps(request.responses, store.committed_shards(), request.storage)
        manifest, _ = saved_manifest(request.index_dir, expected_manifest(columns, request.metric, request.ann, stamps),
                                     request.storage)
        if manifest is not None:
            return "ann"
    n_images = count_images(request.responses, store.committed_shards(), request.storage)
    if n_images <= request.ann_above:
        return "exact"
    if not have_faiss:
        notes.append(f"{n_images:,} images is above --ann-above {request.ann_above:,}, but faiss is not installed: "
                     f"searched exactly (pip install faiss-cpu for the ANN index)")
        return "exact"
    return "ann"


def count_images(responses: str, shards: Sequence[str], storage: StorageOptions | None = None) -> int:
    """Ok images of the committed shards, from their commit markers (no response file is read)."""
    markers = read_done_markers(OutputStore(responses, storage), shards)
    return sum(int(m.get("ok", m.get("rows", 0)) or 0) for m in markers.values())


def _ann(request, store, columns, target, seconds, notes, on_shard):
    stamps = shard_stamps(request.responses, store.committed_shards(), request.storage)
    expected = expected_manifest(columns, request.metric, request.ann, stamps)
    ann, saved_paths = None, []
    if request.index_dir and not request.rebuild_index:
        load_started = time.monotonic()
        ann, reason = load_index(request.index_dir, expected, request.ann, request.storage)
        if ann is not None:
            seconds["load_index"] = time.monotonic() - load_started
        else:
            notes.append(f"built a new index: {reason}")
    if ann is None:
        ann = build_index(store, columns, request.metric, request.ann,
                          (lambda i, n: on_shard("indexed", i, n)) if on_shard else None)
        seconds["build_index"] = ann.build_seconds
        if request.index_dir:
            saved_paths = save_index(ann, request.index_dir, expected, request.responses, request.storage)
    query_started = time.monotonic()
    hits, excluded = search_index(ann, target.vector, request.k, target.exclude, request.ann.ef_search)
    seconds["search"] = time.monotonic() - query_started
    counts = ScanCounts()
    counts.merge(ann.counts)
    counts.n_excluded = excluded
    info = {"library": "faiss", "kind": "IndexHNSWFlat", "vectors": ann.size, "hnsw_m": ann.params.m,
            "ef_construction": ann.params.ef_construction, "ef_search": request.ann.ef_search,
            "reused": ann.reused, "index_dir": request.index_dir, "files": saved_paths}
    return hits, counts, info
