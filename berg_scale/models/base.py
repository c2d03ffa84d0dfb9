"""The plug-in interface every encoding model implements, and the column description.

A model family turns a list of `ReadoutSpec`s into one `ReadoutGroup`: readouts whose
implementations report the same `group_key` are built together, which is how all
ViT-B/32 readouts (fsaverage and EEG, every subject) end up sharing one backbone pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from berg_scale.models.columns import OutputColumn, mean_column
from berg_scale.models.registry import ModelCard, get_card
from berg_scale.models.spec import ReadoutSpec
from berg_scale.models.store import WeightStore

__all__ = ["BuildContext", "EncodingModel", "OutputColumn", "ReadoutGroup", "mean_column"]


@dataclass
class BuildContext:
    """What model builders share: the weight store, the device, and a cache of loaded parts."""

    store: WeightStore
    device: torch.device
    precision: str
    backbone_path: str | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    compile: bool = False  # torch.compile the shared backbones

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


class ReadoutGroup(ABC):
    """Readouts computed together from one preprocessed batch."""

    recipe: str
    columns: list[OutputColumn[ReadoutSpec]]
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
