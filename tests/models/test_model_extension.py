"""A new encoding model is one class plus one card: a toy model registered from the test."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from berg_scale.models import ModelSet, ReadoutSpec, register_model
from berg_scale.models.base import BuildContext, EncodingModel, OutputColumn, ReadoutGroup
from berg_scale.models.preprocess import register_recipe
from berg_scale.models.registry import unregister_model

TOY_CARD = {
    "model_id": "toy-colour-linear",
    "modality": "fMRI",
    "dataset": "Toy colours",
    "architecture": "mean colour, then a linear map",
    "subjects": [1, 2],
    "selection": {"required": False, "keys": []},
    "output": {"dims": ["unit"]},
}


def colour_means(images: torch.Tensor) -> torch.Tensor:
    """Toy preprocessing: mean of each RGB channel in [0, 1]."""
    return images.to(torch.float32).mean(dim=(2, 3)) / 255.0


class ToyGroup(ReadoutGroup):
    recipe = "toy-colour-means"

    def __init__(self, specs: list[ReadoutSpec], ctx: BuildContext) -> None:
        self.columns, self.weight_files, self.maps = [], [], []
        for spec in specs:
            rel = f"toy/weights_subject-{spec.subject:02d}.npy"
            weights = ctx.store.load(rel, "toy weights")  # the same safe loader as BERG files
            self.weight_files.append(rel)
            matrix = torch.from_numpy(weights["w"]).to(ctx.device)
            self.maps.append((spec.column_base, matrix))
            self.columns.append(OutputColumn(spec.column_base, (matrix.shape[0],), "float32", ("unit",),
                                             {"unit": np.arange(matrix.shape[0])}, spec, "responses"))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: pixels @ matrix.T for name, matrix in self.maps}


@pytest.fixture
def toy_model():
    register_recipe("toy-colour-means", colour_means)

    @register_model(TOY_CARD)
    class ToyModel(EncodingModel):
        model_id: ClassVar[str] = "toy-colour-linear"
        group_key: ClassVar[str] = "toy"

        @classmethod
        def build_group(cls, specs, ctx):
            return ToyGroup(specs, ctx)

    yield ToyModel
    unregister_model("toy-colour-linear")


def test_toy_model_runs_next_to_a_berg_model(toy_model, berg_root, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "encoding_models").symlink_to(berg_root / "encoding_models", target_is_directory=True)
    (root / "toy").mkdir()
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(root / "toy" / "weights_subject-02.npy", np.array({"w": w}, dtype=object), allow_pickle=True)

    from berg_scale.models import known_model_ids

    assert "toy-colour-linear" in known_model_ids()
    with pytest.raises(Exception, match="Subject must be one of"):
        ReadoutSpec("toy-colour-linear", 3).resolve()
    specs = [ReadoutSpec("toy-colour-linear", 2), ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})]
    ms = ModelSet(str(root), specs, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 20, 30), dtype=np.uint8)
    out = ms.forward(images)
    expected = (images.astype(np.float64).mean(axis=(2, 3)) / 255.0) @ w.T
    np.testing.assert_allclose(out["toy-colour-linear/sub-02/all"], expected, rtol=1e-5)
    assert out["fmri-nsd-fwrf/sub-01/V1"].shape == (5, 9)
    assert "toy/weights_subject-02.npy" in ms.weight_hashes
