"""Run statistics and the driver's live progress bar.

The bar counts shards (the unit of commit) and shows images/s, error rows, quarantined
shards and an ETA. The same numbers, plus per-stage seconds summed over shards, go into
run.json, so a finished run documents where its time went.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from berg_scale.engine.shard_pipeline import STAGES


@dataclass
class RunStats:
    shards_total: int
    shards_skipped: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    images: int = 0
    images_ok: int = 0
    images_error: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started: float = field(default_factory=time.monotonic)
    startup_seconds: float = 0.0
    finished: float | None = None

    def add_marker(self, marker: dict[str, Any]) -> None:
        self.shards_done += 1
        self.images += int(marker.get("rows", 0))
        self.images_ok += int(marker.get("ok", 0))
        self.images_error += int(marker.get("errors", 0))
        for stage in STAGES:
            self.stage_seconds[stage] += float(marker.get("seconds", {}).get(stage, 0.0))

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def images_per_second(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards_total": self.shards_total,
            "shards_skipped_already_done": self.shards_skipped,
            "shards_done": self.shards_done,
            "shards_failed": self.shards_failed,
            "images": self.images,
            "images_ok": self.images_ok,
            "images_error": self.images_error,
            "startup_seconds": round(self.startup_seconds, 3),
            "wall_seconds": round(self.elapsed, 3),
            "images_per_second": round(self.images_per_second, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


class ProgressBar:
    """A tqdm bar over shards (disabled when not wanted or when stderr is not a terminal)."""

    def __init__(self, stats: RunStats, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.stats = stats
        todo = stats.shards_total - stats.shards_skipped
        self.bar = tqdm(
            total=todo,
            unit="shard",
            desc="generate",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def update(self) -> None:
        self.bar.set_postfix(
            img_s=f"{self.stats.images_per_second:.1f}",
            images=self.stats.images,
            errors=self.stats.images_error,
            failed=self.stats.shards_failed,
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
