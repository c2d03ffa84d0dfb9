"""bf16/fp16: the stacked PCA projection runs as one reduced-precision product.

The fp32 path is held to the float64 reference elsewhere (test_model_equivalence.py);
here the reduced path is checked against an independent float64 product of the very
operands it rounds (the folded weights and the centred features in bf16), so what is
left is the rounding of the product's output, bounded by the format's unit roundoff.
"""

from __future__ import annotations

import shutil

import berg_reference as ref
import numpy as np
import pytest
import torch

from berg_scale.errors import BergScaleError
from berg_scale.models import ModelSet, ReadoutSpec, families
from berg_scale.models.vit import N_FEATURES

FSAV = "fmri-nsd_fsaverage-vit_b_32"
EEG = "eeg-things_eeg_2-vit_b_32"
BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significand bits), round to nearest


def _specs():
    return [ReadoutSpec(FSAV, s, {"roi": "hV4"}, outputs=("responses", "mean")) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def fp32_and_bf16(berg_root, backbone):
    fp32 = ModelSet(str(berg_root), _specs(), device="cpu", backbone_path=backbone)
    bf16 = ModelSet(str(berg_root), _specs(), device="cpu", precision="bf16", backbone_path=backbone)
    return fp32, bf16


def test_bf16_stores_the_fp32_fold_rounded_once(fp32_and_bf16):
    fp32, bf16 = fp32_and_bf16
    exact, reduced = fp32.groups[0], bf16.groups[0]
    assert exact.projection.dtype == torch.float32
    assert reduced.projection.dtype == torch.bfloat16
    assert reduced.projection.shape == exact.projection.shape == (9, N_FEATURES)  # 3 subjects x k=3, stacked
    assert torch.equal(reduced.projection, exact.projection.to(torch.bfloat16))
    assert torch.equal(reduced.offset, exact.offset) and reduced.offset.dtype == torch.float32
    assert reduced.projection.element_size() * 2 == exact.projection.element_size()


def test_bf16_projection_matches_float64_product_of_its_operands(fp32_and_bf16):
    exact_group, group = (model_set.groups[0] for model_set in fp32_and_bf16)
    generator = torch.Generator().manual_seed(0)
    features = group.centre + 3.0 * torch.randn(5, N_FEATURES, generator=generator)
    got = group.project(features).double()

    centred = (features.double() - group.centre.double()).to(torch.bfloat16).double()
    product = centred @ group.projection.double().T
    expected = product + group.offset.double()
    # One rounding of each product to bf16 on the CPU, then a float32 add of the offset.
    bound = BF16_UNIT * product.abs() + 2.0**-23 * expected.abs() + 1e-6
    assert torch.all((got - expected).abs() <= bound)
    # And the rounding is visible: this is not the float32 path.
    assert not torch.equal(got.float(), exact_group.project(features))


def test_bf16_outputs_stay_within_bf16_distance_of_fp32(fp32_and_bf16, images_square):
    fp32, bf16 = fp32_and_bf16
    exact = fp32.forward(images_square)
    approx = bf16.forward(images_square)
    for name, values in exact.items():
        error = ref.rel_error(approx[name], values.astype(np.float64))
        assert 0 < error < 0.05, name


def test_fp16_refuses_a_fold_beyond_its_range(berg_root, backbone, tmp_path):
    root = tmp_path / "root"
    rel = families.weight_files(FSAV, 1)[0]
    meta = families.metadata_file(FSAV, 1)
    (root / meta).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(berg_root / meta, root / meta)
    weights = ref.load_npy_dict(berg_root / rel)
    weights["scaler_param"]["scale_"] = np.full(N_FEATURES, 1e-7, dtype=np.float32)  # C / s beyond 65504
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    np.save(root / rel, np.array(weights, dtype=object), allow_pickle=True)
    spec = ReadoutSpec(FSAV, 1, {"roi": "hV4"})
    with pytest.raises(BergScaleError, match="float16's range.*use precision bf16 or fp32"):
        ModelSet(str(root), [spec], device="cpu", precision="fp16", backbone_path=backbone)
    bf16 = ModelSet(str(root), [spec], device="cpu", precision="bf16", backbone_path=backbone)
    assert torch.isfinite(bf16.groups[0].projection).all()
