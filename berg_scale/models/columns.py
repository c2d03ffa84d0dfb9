"""The description of one output column, free of torch.

Workers, writers and planners pass columns around; only building a model needs torch,
so the type that says what a column holds lives apart from the models that fill it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_scale.models.spec import ReadoutSpec


@dataclass
class OutputColumn:
    """One output column: per-image shape, dtype, axis names and axis coordinates."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    readout: ReadoutSpec
    kind: str  # "responses" | "mean"

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (no coordinate arrays) for schema metadata."""
        return {
            "name": self.name,
            "kind": self.kind,
            "model_id": self.readout.model_id,
            "subject": self.readout.subject,
            "selection": self.readout.to_dict()["selection"],
            "shape": list(self.shape),
            "dims": list(self.dims),
            "dtype": self.dtype,
        }


def mean_column(spec: ReadoutSpec, base_name: str) -> OutputColumn:
    return OutputColumn(
        name=f"{base_name}:mean",
        shape=(),
        dtype=spec.dtype,
        dims=(),
        coords={},
        readout=spec,
        kind="mean",
    )
