"""The k smallest distances seen so far, updated one batch of images at a time.

The exact search never holds more than one shard's distances plus k candidates, so its
memory does not grow with the collection. Ties are broken by image order (shard order,
then row), which makes the result identical to a stable sort of all distances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One found image: where it is and how far its vector is from the target."""

    rank: int
    shard: str
    key: str
    index: int  # row position inside its input shard (the output's `index` column)
    distance: float


@dataclass
class RunningTopK:
    """Keeps the k nearest (distance, shard number, row) with their keys and positions."""

    k: int
    _distance: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    _shard: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _row: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _key: list[str] = field(default_factory=list)

    def update(
        self, distances: np.ndarray, shard: int, indices: np.ndarray,
        keys_at: Callable[[np.ndarray], Sequence[str]],
    ) -> None:
        """Offer one shard's images; NaN distances (undefined or skipped) are never kept.

        `keys_at(rows)` gives the keys of the rows kept, so that keys are only looked up
        for candidates, not for every image.
        """
        distances = np.asarray(distances, dtype=np.float64)
        rows = np.flatnonzero(~np.isnan(distances))
        if rows.size > self.k:
            # Everything up to the k-th smallest value, ties at the boundary included.
            kth = np.partition(distances[rows], self.k - 1)[self.k - 1]
            rows = rows[distances[rows] <= kth]
        if rows.size == 0:
            return
        self._distance = np.concatenate([self._distance, distances[rows]])
        self._shard = np.concatenate([self._shard, np.full(rows.size, shard, np.int64)])
        self._row = np.concatenate([self._row, rows.astype(np.int64)])
        self._index = np.concatenate([self._index, np.asarray(indices, np.int64)[rows]])
        self._key = self._key + [str(key) for key in keys_at(rows)]
        order = np.lexsort((self._row, self._shard, self._distance))[: self.k]
        self._distance, self._shard = self._distance[order], self._shard[order]
        self._row, self._index = self._row[order], self._index[order]
        self._key = [self._key[int(i)] for i in order]

    def hits(self, shard_names: Sequence[str]) -> list[Hit]:
        """The kept images, nearest first, ranked from 1."""
        return [
            Hit(rank + 1, shard_names[int(s)], key, int(index), float(d))
            for rank, (d, s, index, key) in enumerate(zip(self._distance, self._shard, self._index, self._key))
        ]
