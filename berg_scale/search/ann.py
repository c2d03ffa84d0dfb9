"""Approximate k-nearest search through a faiss HNSW index (optional dependency).

For collections where one exact pass per query is too slow, the searched vectors of all
ranked images are added, shard by shard, to a faiss `IndexHNSWFlat` (a graph index that
keeps the full float32 vectors): euclidean uses the L2 index; cosine and correlation
store unit-norm (and, for correlation, mean-centred) vectors in an inner-product index,
where 1 - inner product is the distance. A query asks the graph for a few more
candidates than k, re-scores them in float64 from the stored vectors and keeps the k
nearest, so reported distances are exact for the images found; only recall is
approximate (measured against the exact search in the tests, and tunable with
--ef-search). The index holds all N x D float32 vectors plus the graph (about
N x (4 D + 8 M) bytes) in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from berg_scale.rnc.responses import ResponseStore
from berg_scale.search.columns import ColumnSpec, iter_vectors
from berg_scale.search.errors import SearchError
from berg_scale.search.metrics import prepare_target, unit_rows
from berg_scale.search.scan import ScanCounts
from berg_scale.search.topk import Hit

INSTALL_HINT = "pip install faiss-cpu (or pip install 'berg-scale[ann]')"


def load_faiss() -> Any:
    """The faiss module, or a one-line error that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise SearchError(
            f"--index ann needs the faiss library, which is not installed: {INSTALL_HINT}; "
            f"or search exactly with --index exact"
        ) from None
    return faiss


def faiss_available() -> bool:
    try:
        load_faiss()
    except SearchError:
        return False
    return True


@dataclass(frozen=True)
class AnnParams:
    """HNSW settings: graph degree M, build and query beam widths."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def check(self) -> None:
        for name, value, low in (("--hnsw-m", self.m, 4), ("--ef-construction", self.ef_construction, 8),
                                 ("--ef-search", self.ef_search, 1)):
            if value < low:
                raise SearchError(f"{name} must be {low} or more (got {value})")


@dataclass
class AnnIndex:
    """A faiss index and, for every vector id, the image it came from."""

    index: Any
    metric: str
    shards: tuple[str, ...]
    shard_of: np.ndarray  # int32 (n,): number of the image's shard in `shards`
    position_of: np.ndarray  # int64 (n,): the image's `index` (row in its input shard)
    keys: pa.Array  # string (n,)
    counts: ScanCounts
    params: AnnParams
    build_seconds: float = 0.0
    reused: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def id_of(self, shard: str, key: str) -> int | None:
        if shard not in self.shards:
            return None
        ids = np.flatnonzero(self.shard_of == self.shards.index(shard))
        for i in ids:
            if self.keys[int(i)].as_py() == key:
                return int(i)
        return None


def build_index(
    store: ResponseStore,
    columns: Sequence[ColumnSpec],
    metric: str,
    params: AnnParams = AnnParams(),
    on_shard: Callable[[int, int], None] | None = None,
) -> AnnIndex:
    """Stream every committed shard into a new HNSW index (skipping what cannot be ranked)."""
    faiss = load_faiss()
    params.check()
    width = sum(c.width for c in columns)
    kind = faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexHNSWFlat(width, params.m, kind)
    index.hnsw.efConstruction = params.ef_construction
    shards = store.committed_shards()
    counts = ScanCounts()
    shard_of, position_of, keys = [], [], []
    started = time.monotonic()
    for number, batch in enumerate(iter_vectors(store, columns)):
        counts.add_batch(batch)
        rows = np.flatnonzero(batch.finite)
        vectors, defined = unit_rows(batch.values[rows], metric)
        counts.n_undefined += int((~defined).sum())
        rows, vectors = rows[defined], vectors[defined]
        if rows.size:
            index.add(vectors)
            shard_of.append(np.full(rows.size, number, np.int32))
            position_of.append(batch.indices[rows])
            keys.append(batch.keys.take(pa.array(rows)))
        if on_shard:
            on_shard(number + 1, len(shards))
    if index.ntotal == 0:
        raise SearchError(f"no image of {store.url} has a rankable vector in these columns: nothing to index")
    return AnnIndex(
        index, metric, shards, np.concatenate(shard_of), np.concatenate(position_of),
        pa.concat_arrays(keys), counts, params, build_seconds=time.monotonic() - started,
    )


def search_index(
    ann: AnnIndex, target: np.ndarray, k: int, exclude: tuple[str, str] | None = None,
    ef_search: int | None = None, oversample: int = 2,
) -> tuple[list[Hit], int]:
    """(the k nearest images found, 1 if the excluded target image is in the index else 0)."""
    prepared = prepare_target(target, ann.metric)
    skip = ann.id_of(*exclude) if exclude else None
    wanted = min(ann.size, max(oversample * k, k + 10) + (skip is not None))
    ann.index.hnsw.efSearch = max(ef_search or ann.params.ef_search, wanted)
    query = prepared.vector.astype(np.float32)[None, :]
    _, ids = ann.index.search(query, wanted)
    ids = np.array([i for i in ids[0] if i >= 0 and i != skip], dtype=np.int64)
    if ids.size == 0:
        return [], int(skip is not None)
    stored = ann.index.reconstruct_batch(ids).astype(np.float64)
    if ann.metric == "euclidean":
        scores = np.sqrt(((stored - prepared.vector) ** 2).sum(axis=1))
    else:
        scores = 1.0 - np.clip(stored @ prepared.vector, -1.0, 1.0)
    order = np.lexsort((ids, scores))[:k]
    hits = [
        Hit(rank + 1, ann.shards[int(ann.shard_of[ids[j]])], ann.keys[int(ids[j])].as_py(),
            int(ann.position_of[ids[j]]), float(scores[j]))
        for rank, j in enumerate(order)
    ]
    return hits, int(skip is not None)
