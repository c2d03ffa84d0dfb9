"""The description of one output column, free of torch.

Workers, writers and planners pass columns around; only building a model needs torch,
so the type that says what a column holds lives apart from the models that fill it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from berg_scale.models.spec import ReadoutSpec

# The readout a column comes from: a `ReadoutSpec` for encoding models; stand-ins that
# have no model card use a record with the same identity fields (model_id, subject, selection).
R = TypeVar("R")


@dataclass
class OutputColumn(Generic[R]):
    """One output column: per-image shape, dtype, axis names and axis coordinates."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    readout: R
    kind: str  # "responses" | "mean"


def mean_column(spec: ReadoutSpec, base_name: str) -> OutputColumn[ReadoutSpec]:
    return OutputColumn(
        name=f"{base_name}:mean",
        shape=(),
        dtype=spec.dtype,
        dims=(),
        coords={},
        readout=spec,
        kind="mean",
    )
