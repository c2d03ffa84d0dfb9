"""The plug-in interface every encoding model implements, and the column description.

A model family turns a list of `ReadoutSpec`s into one `ReadoutGroup`: readouts whose
implementations report the same `group_key` are built together, which is how all
ViT-B/32 readouts (fsaverage and EEG, every subject) end up sharing one backbone pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from berg_scale.models.registry import ModelCard, get_card
from berg_scale.models.spec import ReadoutSpec
from berg_scale.models.store import WeightStore


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
    # Column-wide facts that are not per-element coordinates (EEG sampling rate, time of the
    # first sample and unit; fwRF volume shape and affine), written to readouts.json.
    attrs: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class BuildContext:
    """What model builders share: the weight store, the device, and a cache of loaded parts."""

    store: WeightStore
    device: torch.device
    precision: str
    backbone_path: str | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


class ReadoutGroup(ABC):
    """Readouts computed together from one preprocessed batch."""

    recipe: str
    columns: list[OutputColumn]
    weight_files: list[str]

    @abstractmethod
    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed batch on the device -> float32 tensors per column name."""


class EncodingModel(ABC):
    """A model family; subclasses are registered by id with `register_model`."""

    group_key: ClassVar[str]
    model_id: ClassVar[str]

    @classmethod
    def card(cls) -> ModelCard:
        return get_card(cls.model_id)

    @classmethod
    @abstractmethod
    def build_group(cls, specs: list[ReadoutSpec], ctx: BuildContext) -> ReadoutGroup:
        """Load weights for `specs` (all with this family's group key) onto `ctx.device`."""


def mean_column(spec: ReadoutSpec, base_name: str, ncsnr: np.ndarray | None = None) -> OutputColumn:
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
