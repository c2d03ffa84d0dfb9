"""readouts.json column descriptions: fwRF volume coordinates and EEG timing come from BERG's metadata.

The descriptions are built exactly as the engine writes readouts.json
(`iter_descriptions(model.columns, with_coords=True)`), from models loaded on a synthetic
BERG root, and compared with the metadata files themselves.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from berg_scale.io.response_writer import iter_descriptions
from berg_scale.models import ModelSet, ReadoutSpec, families
from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root

FWRF = "fmri-nsd-fwrf"
EEG = "eeg-things_eeg_2-vit_b_32"


def load_npy_dict(path: str) -> dict:
    """A metadata file this test wrote itself (trusted), read the way BERG reads it."""
    return np.load(path, allow_pickle=True).item()


@pytest.fixture(scope="module")
def fwrf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwrf_root")
    make_synthetic_root(root, models=(FWRF,), rois=("V1", "lateral"), fwrf_voxels={"V1": 6, "lateral": 5},
                        write_backbone=False, seed=11)
    return root


def test_fwrf_volume_indices_and_affine_equal_the_metadata(fwrf_root):
    specs = [ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("responses", "mean")), ReadoutSpec(FWRF, 1, {"roi": "lateral"})]
    ms = ModelSet(str(fwrf_root), specs, device="cpu")
    described = json.loads(json.dumps(iter_descriptions(ms.columns, with_coords=True)))  # as stored
    by_name = {entry["name"]: entry for entry in described}
    for roi, n in (("V1", 6), ("lateral", 5)):
        entry = by_name[f"{FWRF}/sub-01/{roi}"]
        meta = load_npy_dict(str(fwrf_root / families.metadata_file(FWRF, 1, roi)))["fmri"]
        expected = np.argwhere(meta["roi_mask_volume"])  # C order: voxel j = j-th True element
        assert entry["shape"] == [n] and expected.shape == (n, 3)
        np.testing.assert_array_equal(np.asarray(entry["coords"]["volume_index"]), expected)
        np.testing.assert_array_equal(entry["coords"]["voxel"], np.arange(n))
        np.testing.assert_allclose(entry["attrs"]["affine"], meta["fmri_affine"])
        assert entry["attrs"]["volume_shape"] == list(meta["roi_mask_volume"].shape)
        mask = np.zeros(meta["roi_mask_volume"].shape, dtype=bool)
        mask[tuple(np.asarray(entry["coords"]["volume_index"]).T)] = True
        np.testing.assert_array_equal(mask, meta["roi_mask_volume"])
    assert "attrs" not in by_name[f"{FWRF}/sub-01/V1:mean"]
    # the Parquet schema keeps its compact descriptions (no coordinates, no attrs)
    assert all("attrs" not in entry and "coords" not in entry for entry in iter_descriptions(ms.columns))


@pytest.mark.slow
def test_eeg_columns_record_sampling_rate_tmin_and_unit(tmp_path):
    root = make_synthetic_root(tmp_path / "root", models=(EEG,), eeg_components_dtype="float16", seed=5)
    timepoints = np.zeros(140, dtype=int)
    timepoints[30:60] = 1
    specs = [ReadoutSpec(EEG, 1), ReadoutSpec(EEG, 1, {"channels": ["Oz", "Cz"], "timepoints": timepoints})]
    ms = ModelSet(str(root), specs, device="cpu", backbone_path=str(backbone_file(root)))
    full, part = iter_descriptions(ms.columns, with_coords=True)
    times = load_npy_dict(str(root / families.metadata_file(EEG, 1)))["eeg"]["times"]
    assert full["attrs"] == {"sfreq": 200.0, "tmin": pytest.approx(float(times[0])), "unit": "V/m^2"}
    assert part["attrs"] == {"sfreq": 200.0, "tmin": pytest.approx(float(times[30])), "unit": "V/m^2"}
    assert part["coords"]["channel"] == ["Oz", "Cz"] and len(part["coords"]["time"]) == 30
