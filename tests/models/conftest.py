"""Fixtures for model tests: one synthetic BERG root per session and test images.

The root holds fwRF (V1 and the split ROI lateral, subject 1), fsaverage subjects 1..8
(k = 3 components) and EEG subjects 1..2. EEG weight files keep the real (250, 460800)
PCA shape but store the components as float16 (230 MB each instead of 460 MB); the
float64 reference reads the very same stored values, so equivalence is unaffected.
"""

from __future__ import annotations

import pytest
import torch

from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root
from model_images import smooth_images

EEG_SUBJECTS = (1, 2)
FSAVERAGE_SUBJECTS = tuple(range(1, 9))


@pytest.fixture(scope="session")
def berg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("berg_root")
    make_synthetic_root(
        root,
        subjects=(1,),
        rois=("V1", "lateral"),
        fwrf_voxels={"V1": 9, "lateral": 7},
        fsaverage_subjects=FSAVERAGE_SUBJECTS,
        eeg_subjects=EEG_SUBJECTS,
        eeg_components_dtype="float16",
        seed=7,
    )
    return root


@pytest.fixture(scope="session")
def backbone(berg_root):
    return str(backbone_file(berg_root))


@pytest.fixture(scope="session")
def backbone_state(backbone):
    return torch.load(backbone, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def images_square():
    """256 x 256: the ViT resize step is skipped (exact pixels)."""
    return smooth_images(3, 256, 256, seed=1)


@pytest.fixture(scope="session")
def images_odd():
    """Non-square, needs resizing for both recipes."""
    return smooth_images(3, 241, 300, seed=2)
