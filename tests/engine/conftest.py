"""Fixtures for engine tests: a small synthetic BERG root and the stand-in model factory.
Helpers shared by the test modules live in `engine_support.py`."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import engine_support  # noqa: E402

# Workers must unpickle the fault-injecting models without this folder on their path.
from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(engine_support)

from engine_support import FSAVERAGE, FWRF  # noqa: E402


@pytest.fixture(scope="session")
def engine_berg_root(tmp_path_factory):
    """fsaverage (k = 3, two ROIs) and fwRF V1 (6 voxels) for subject 1; no EEG (see demo)."""
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = tmp_path_factory.mktemp("engine_berg_root")
    make_synthetic_root(
        root,
        models=[FSAVERAGE, FWRF],
        subjects=(1,),
        rois=("V1",),
        fsaverage_rois=("V1v", "hV4"),
        fwrf_voxels=6,
        seed=3,
    )
    return str(root)


@pytest.fixture(scope="session")
def engine_backbone(engine_berg_root):
    from berg_scale.synthetic.berg_root import backbone_file

    return str(backbone_file(engine_berg_root))


@pytest.fixture
def stand_in_factory():
    from berg_scale.engine.stand_in_model import FixedCostModelFactory

    return FixedCostModelFactory()
