"""A fixed-cost model that follows the ModelSet contract, without any weights.

Used where the engine itself is measured or exercised and the encoding models would only
add noise: scheduler-scaling benchmarks (a known, constant cost per image) and engine
tests of retries and faults. Its responses are a deterministic function of the pixels,
so a test can still check that every image reached the model exactly as decoded.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_scale.models.columns import OutputColumn


@dataclass(frozen=True)
class StandInReadout:
    model_id: str = "stand-in"
    subject: int = 1
    selection: dict[str, Any] | None = None
    outputs: tuple[str, ...] = ("responses", "mean")
    dtype: str = "float32"


StandInColumn = OutputColumn[StandInReadout]


@dataclass
class FixedCostModel:
    """`seconds_per_image` of sleep per image, then channel statistics as 'responses'."""

    seconds_per_image: float = 0.0
    seconds_per_batch: float = 0.0
    n_units: int = 6
    device: Any = "cpu"
    calls: int = field(default=0, init=False)

    @property
    def columns(self) -> list[StandInColumn]:
        readout = StandInReadout()
        units = np.arange(self.n_units)
        base = "stand-in/sub-01/all"
        return [
            StandInColumn(base, (self.n_units,), "float32", ("unit",), {"unit": units}, readout, "responses"),
            StandInColumn(f"{base}:mean", (), "float32", (), {}, readout, "mean"),
        ]

    @property
    def weight_hashes(self) -> dict[str, str]:
        return {"stand-in": hashlib.sha256(str(self.n_units).encode()).hexdigest()}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"stand-in:{self.n_units}".encode()).hexdigest()

    def forward(self, images: Any) -> dict[str, np.ndarray]:
        """uint8 (B, 3, H, W) -> per-image features that depend on every pixel."""
        self.calls += 1
        array = np.asarray(images.cpu().numpy() if hasattr(images, "cpu") else images, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {array.shape}")
        delay = self.seconds_per_batch + self.seconds_per_image * array.shape[0]
        if delay:
            time.sleep(delay)
        flat = array.reshape(array.shape[0], 3, -1) / 255.0
        stats = [flat.mean(axis=2), flat.std(axis=2)]
        features = np.concatenate(stats, axis=1)  # (B, 6)
        reps = int(np.ceil(self.n_units / features.shape[1]))
        responses = np.tile(features, (1, reps))[:, : self.n_units].astype(np.float32)
        return {
            "stand-in/sub-01/all": responses,
            "stand-in/sub-01/all:mean": responses.mean(axis=1).astype(np.float32),
        }


@dataclass(frozen=True)
class FixedCostModelFactory:
    """Picklable factory for a `FixedCostModel`, built inside each worker."""

    seconds_per_image: float = 0.0
    seconds_per_batch: float = 0.0
    n_units: int = 6
    needs_weights: bool = field(default=False, init=False)

    def build(self, device: Any) -> FixedCostModel:
        return FixedCostModel(self.seconds_per_image, self.seconds_per_batch, self.n_units, device=device)
