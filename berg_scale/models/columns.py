"""The description of one output column, free of torch.

Workers, writers and planners pass columns around; only building a model needs torch,
so the type that says what a column holds lives apart from the models that fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
    # Column-wide facts that are not per-element coordinates (EEG sampling rate, time of the
    # first sample and unit; fwRF volume shape and affine), written to readouts.json.
    attrs: dict[str, Any] = field(default_factory=dict)


def mean_column(spec: ReadoutSpec, base_name: str, ncsnr: np.ndarray | None = None) -> OutputColumn[ReadoutSpec]:
    """The `:mean` summary column; it carries the ROI's ncsnr so that readers can tell
    how many voxels/vertices it averages (ncsnr > the spec's threshold), e.g. to weight
    the parts of an ROI union, without the voxel column."""
    return OutputColumn(
        name=f"{base_name}:mean",
        shape=(),
        dtype=spec.dtype,
        dims=(),
        coords={} if ncsnr is None else {"ncsnr": np.asarray(ncsnr)},
        readout=spec,
        kind="mean",
    )
