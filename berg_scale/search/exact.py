"""Exact k-nearest search: one streaming pass over the committed shards.

Each shard's distances are computed in float64 and merged into a running top-k, so
memory is one shard plus k rows whatever the collection size, and the result equals a
stable sort of all distances (ties go to the earlier shard and row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from berg_scale.rnc.responses import ResponseStore
from berg_scale.search.columns import ColumnSpec, iter_vectors
from berg_scale.search.metrics import distances, prepare_target
from berg_scale.search.scan import ScanCounts, self_mask
from berg_scale.search.topk import Hit, RunningTopK


def exact_search(
    store: ResponseStore,
    columns: Sequence[ColumnSpec],
    target: np.ndarray,
    metric: str,
    k: int,
    exclude: tuple[str, str] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> tuple[list[Hit], ScanCounts]:
    """The k images nearest `target` over `columns`, and what the pass saw."""
    prepared = prepare_target(target, metric)
    shards = store.committed_shards()
    top = RunningTopK(k)
    counts = ScanCounts()
    for number, batch in enumerate(iter_vectors(store, columns)):
        counts.add_batch(batch)
        d = np.full(batch.values.shape[0], np.nan)
        if batch.finite.any():
            d[batch.finite] = distances(batch.values[batch.finite], prepared)
        counts.n_undefined += int((batch.finite & np.isnan(d)).sum())
        own = self_mask(batch, exclude) & ~np.isnan(d)
        counts.n_excluded += int(own.sum())
        d[own] = np.nan
        top.update(d, number, batch.indices, batch.keys_at)
        if on_shard:
            on_shard(number + 1, len(shards))
    return top.hits(shards), counts
