"""What a pass over the responses saw: images read, and images left out and why.

Images whose searched vector has a NaN or infinite value (or a null response) cannot be
ranked; they are skipped, counted overall and per column, and reported in the summary,
never silently dropped. Cosine/correlation distances are undefined for all-zero or
constant vectors; those are counted as "undefined".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from berg_scale.search.columns import VectorBatch


@dataclass
class ScanCounts:
    n_shards: int = 0
    n_images: int = 0  # ok rows read
    n_nonfinite: int = 0  # rows skipped for a non-finite value
    nonfinite_by_column: dict[str, int] = field(default_factory=dict)
    n_undefined: int = 0  # finite rows whose cosine/correlation distance is undefined
    n_excluded: int = 0  # the --like image itself

    def add_batch(self, batch: VectorBatch) -> None:
        self.n_shards += 1
        self.n_images += int(batch.values.shape[0])
        self.n_nonfinite += int((~batch.finite).sum())
        for name, count in batch.nonfinite_by_column.items():
            self.nonfinite_by_column[name] = self.nonfinite_by_column.get(name, 0) + count

    def merge(self, other: ScanCounts) -> None:
        self.n_shards += other.n_shards
        self.n_images += other.n_images
        self.n_nonfinite += other.n_nonfinite
        self.n_undefined += other.n_undefined
        self.n_excluded += other.n_excluded
        for name, count in other.nonfinite_by_column.items():
            self.nonfinite_by_column[name] = self.nonfinite_by_column.get(name, 0) + count

    @property
    def n_ranked(self) -> int:
        return self.n_images - self.n_nonfinite - self.n_undefined - self.n_excluded

    def as_dict(self) -> dict[str, Any]:
        return {
            "shards": self.n_shards, "images": self.n_images, "ranked": self.n_ranked,
            "nonfinite_skipped": self.n_nonfinite,
            "nonfinite_by_column": {k: v for k, v in self.nonfinite_by_column.items() if v},
            "undefined_distance": self.n_undefined, "excluded_target_image": self.n_excluded,
        }

    def describe(self) -> str:
        parts = [f"{self.n_images:,} images in {self.n_shards:,} shards", f"{self.n_ranked:,} ranked"]
        if self.n_nonfinite:
            worst = max(self.nonfinite_by_column.items(), key=lambda item: item[1])
            parts.append(f"{self.n_nonfinite:,} skipped for non-finite responses (most in {worst[0]}: {worst[1]:,})")
        if self.n_undefined:
            parts.append(f"{self.n_undefined:,} with an undefined distance (all-zero or constant vector)")
        if self.n_excluded:
            parts.append("the target image itself left out")
        return ", ".join(parts)


def self_mask(batch: VectorBatch, exclude: tuple[str, str] | None) -> np.ndarray:
    """Rows of the batch that are the target image (same shard and key)."""
    if exclude is None or batch.shard != exclude[0]:
        return np.zeros(batch.values.shape[0], dtype=bool)
    return np.asarray(pc.equal(batch.keys, exclude[1]).to_numpy(zero_copy_only=False), dtype=bool)


def shard_numbers(shards: Sequence[str]) -> dict[str, int]:
    return {name: number for number, name in enumerate(shards)}
