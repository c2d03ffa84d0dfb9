"""Univariate selection over shards in Ray tasks, merged exactly.

Eligibility and ranking are per image once the baselines are known, so each shard
can filter and keep its own top-k for every (fold, pair, condition); the global top-k
is the top-k of the union of these lists. Image numbers are global (shard offset +
row among the shard's ok rows) and ties break by image number on both paths, so the
merged result equals the in-memory selection exactly. The driver decides which images
are left out for non-finite responses and sends each shard its own, so both paths rank
the same images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from berg_scale.io.storage import StorageOptions
from berg_scale.rnc.responses import ImageIndex, ResponseStore, combine_univariate
from berg_scale.rnc.univariate import SelectionRequest, Selector, merge_top_k, select_condition, train_average


def select_in_shard(
    url: str,
    storage: StorageOptions | None,
    shard: str,
    offset: int,
    columns: Sequence[str],
    plan: dict,
    subjects: Sequence[int],
    rois: Sequence[str],
    requests: Sequence[SelectionRequest],
    n_images: int,
    margin: float,
    excluded: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-shard top-k for every request; image numbers offset to global numbering.

    `excluded` holds the shard's own images to leave out, as rows of the shard.
    """
    store = ResponseStore(url, storage)
    _, table = next(store.iter_shards(columns, [shard]))
    values = combine_univariate(table, subjects, rois, plan)
    slot = {s: i for i, s in enumerate(subjects)}
    roi_slot = {r: i for i, r in enumerate(rois)}
    out = []
    averages: dict[tuple, np.ndarray] = {}  # one per (fold, ROI): the shard's rows are few
    for req in requests:
        train = [slot[s] for s in req.fold.train]
        for roi in req.pair:
            if (req.fold, roi) not in averages:
                averages[(req.fold, roi)] = train_average(values, train, roi_slot[roi])
        u1, u2 = averages[(req.fold, req.pair[0])], averages[(req.fold, req.pair[1])]
        out.append(select_condition(u1, u2, req.beta1, req.beta2, req.condition, margin, n_images, offset,
                                    excluded=excluded))
    return out


def ray_selector(
    store: ResponseStore,
    storage: StorageOptions | None,
    images: ImageIndex,
    columns: Sequence[str],
    plan: dict,
    subjects: Sequence[int],
    rois: Sequence[str],
    n_images: int,
    margin: float,
    num_cpus: float = 1,
) -> Selector:
    """A selector that runs one Ray task per committed shard (Ray must be initialised)."""
    import ray

    remote = ray.remote(num_cpus=num_cpus)(select_in_shard)

    def select(requests: Sequence[SelectionRequest], excluded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        excluded = np.asarray(excluded, dtype=np.int64)
        futures = []
        for j, shard in enumerate(images.shards):
            lo, hi = int(images.offsets[j]), int(images.offsets[j + 1])
            own = excluded[(excluded >= lo) & (excluded < hi)] - lo
            futures.append(remote.remote(store.url, storage, shard, lo, list(columns), plan, list(subjects),
                                         list(rois), list(requests), n_images, margin, own))
        per_shard = ray.get(futures)
        return [merge_top_k([parts[i] for parts in per_shard], n_images) for i in range(len(requests))]

    return select
