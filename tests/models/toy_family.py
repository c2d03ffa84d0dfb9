"""A toy encoding model added the documented way: this module plus its card.

Nothing outside these two files knows the toy model: the family descriptor answers
preflight, `fetch-weights` and `plan`; the model class builds it; `install` registers all
three (recipe, family, model), and the engine re-runs `install` in every worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from berg_scale.models.base import (
    BuildContext,
    EncodingModel,
    OutputColumn,
    ReadoutGroup,
)
from berg_scale.models.families import ModelFamily, Width, register_family, subject_code
from berg_scale.models.preprocess import register_recipe
from berg_scale.models.registry import ModelCard, load_card, register_model
from berg_scale.models.spec import ReadoutSpec

CARD = load_card(Path(__file__).with_name("toy-colour-linear.yaml"))


class ToyFamily(ModelFamily):
    """One weight file (`w`: units x 3) and one metadata file (`n_units`) per subject."""

    name = "toy-colour"
    recipe = "toy-colour-means"
    dims = ("unit",)
    coordinates = ("unit",)

    def weight_files(self, card: ModelCard, subject: int, roi: str | None = None) -> list[str]:
        return [f"toy/weights_subject-{subject_code(subject)}.npy"]

    def metadata_file(self, card: ModelCard, subject: int, roi: str | None = None) -> str:
        return f"toy/metadata_subject-{subject_code(subject)}.npy"

    def metadata_required(self, readout: Any) -> bool:
        return False

    def output_width(self, readout: Any, resolved: Any, read: Any) -> Width:
        data = read(self.metadata_file(resolved.card, readout.subject))
        if isinstance(data, dict) and "n_units" in data:
            return Width(int(data["n_units"]), "metadata")
        return Width(None, "needs metadata")


FAMILY = ToyFamily()


def colour_means(images: torch.Tensor) -> torch.Tensor:
    """Mean of each RGB channel in [0, 1]."""
    return images.to(torch.float32).mean(dim=(2, 3)) / 255.0


class ToyGroup(ReadoutGroup):
    recipe = FAMILY.recipe

    def __init__(self, specs: list[ReadoutSpec], ctx: BuildContext) -> None:
        self.columns, self.weight_files, self.maps = [], [], []
        for spec in specs:
            rel = FAMILY.weight_files(CARD, spec.subject)[0]
            weights = ctx.store.load(rel, "toy weights")  # the same safe loader as BERG files
            self.weight_files.append(rel)
            matrix = torch.from_numpy(weights["w"]).to(ctx.device)
            self.maps.append((spec.column_base, matrix))
            self.columns.append(OutputColumn(spec.column_base, (matrix.shape[0],), spec.dtype, FAMILY.dims,
                                             {"unit": np.arange(matrix.shape[0])}, spec, "responses"))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: pixels @ matrix.T for name, matrix in self.maps}


class ToyModel(EncodingModel):
    model_id: ClassVar[str] = CARD.model_id
    group_key: ClassVar[str] = "toy"

    @classmethod
    def build_group(cls, specs: list[ReadoutSpec], ctx: BuildContext) -> ReadoutGroup:
        return ToyGroup(specs, ctx)


def install() -> None:
    register_recipe(FAMILY.recipe, colour_means)
    register_family(FAMILY)
    register_model(CARD)(ToyModel)


def write_toy_files(root: Path, subject: int, weights: np.ndarray) -> None:
    """The toy model's weight and metadata files for one subject under a BERG-style root."""
    for rel, data in ((FAMILY.weight_files(CARD, subject)[0], {"w": weights}),
                      (FAMILY.metadata_file(CARD, subject), {"n_units": weights.shape[0]})):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, np.array(data, dtype=object), allow_pickle=True)
