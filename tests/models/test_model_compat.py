"""The BERG facade: BERG's names, shapes and exceptions; bounded-memory streaming."""

from __future__ import annotations

import numpy as np
import pytest

import berg_reference as ref
from berg_scale import BERG
from berg_scale import compat
from berg_scale.models import families
from berg_scale.models.modelset import ModelSet

FWRF = "fmri-nsd-fwrf"
FSAV = "fmri-nsd_fsaverage-vit_b_32"
EEG = "eeg-things_eeg_2-vit_b_32"


@pytest.fixture(scope="module")
def berg(berg_root, backbone):
    return BERG(str(berg_root), backbone_path=backbone)


def test_listing_catalog_and_describe(berg, capsys):
    assert berg.list_models() == [FWRF, FSAV, EEG]
    catalog = berg.get_model_catalog(print_format=True)
    assert catalog == {
        "fMRI": ["Natural Scenes Dataset (NSD) (fsaverage surface space)",
                 "Natural Scenes Dataset (NSD) (subject-native volume space)"],
        "EEG": ["THINGS EEG2"],
    }
    printed = capsys.readouterr().out
    assert printed.index("EEG") < printed.index("FMRI")
    info = berg.describe(EEG)
    assert set(info) == {"model_id", "model_info", "description", "input", "output", "parameters",
                         "parameters_by_function", "performance", "example_usage"}
    assert info["model_info"]["modality"] == "EEG"
    with pytest.raises(compat.ModelNotFoundError, match="Model 'x' not found in registry"):
        berg.describe("x")


def test_fwrf_shape_and_values(berg, berg_root):
    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "lateral"}, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 227, 227), dtype=np.uint8)
    out = berg.encode(model, images)
    assert out.shape == (3, 7) and out.dtype == np.float32
    x = ref.fwrf_preprocess(images)
    expected = np.concatenate([ref.fwrf_responses(ref.load_pt(berg_root / f), 1, x)
                               for f in families.weight_files(FWRF, 1, "lateral")], axis=1)
    assert ref.rel_error(out, expected) < 1e-5


def test_fsaverage_returns_hemisphere_tuple_and_roi_aliases(berg, berg_root):
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    meta = ref.load_npy_dict(berg_root / families.metadata_file(FSAV, 1))["fmri"]
    for roi in ("OWFA", "OVWFA"):  # BERG 2.0.0 rejects the first and fails to load the second
        model = berg.get_encoding_model(FSAV, subject=1, selection={"roi": roi}, device="cpu")
        (lh, rh), metadata = berg.encode(model, images, return_metadata=True, show_progress=False)
        assert lh.shape == (2, len(meta["lh_fsaverage_rois"]["OWFA"]))
        assert rh.shape == (2, len(meta["rh_fsaverage_rois"]["OWFA"]))
        assert set(metadata) == {"fmri", "encoding_models"}
    full = berg.get_encoding_model(FSAV, subject=1, device="cpu")
    lh, rh = berg.encode(full, images[:1], show_progress=False)
    assert lh.shape == (1, 163842) and rh.shape == (1, 163842)


def test_eeg_keeps_four_axes_for_single_images_and_channels(berg):
    one = np.zeros((1, 3, 224, 224), dtype=np.uint8)
    model = berg.get_encoding_model(EEG, subject=1, device="cpu")
    assert berg.encode(model, one, show_progress=False).shape == (1, 4, 63, 140)  # BERG: (63, 4, 140)
    timepoints = [0] * 140
    timepoints[30] = 1
    narrow = berg.get_encoding_model(EEG, subject=1, selection={"channels": ["Oz"], "timepoints": timepoints})
    assert berg.encode(narrow, one, show_progress=False).shape == (1, 4, 1, 1)  # BERG: axis error


def test_encode_streams_in_batches_of_100(berg, monkeypatch):
    """201 images: model calls of 100, 100 and 1 (BERG crashes on the last), never all at once."""
    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="cpu")
    seen = []
    original = ModelSet.forward_tensors

    def spy(self, images):
        seen.append(images.shape[0])
        return original(self, images)

    images = np.random.default_rng(2).integers(0, 256, (201, 3, 40, 50), dtype=np.uint8)
    monkeypatch.setattr(ModelSet, "forward_tensors", spy)
    streamed = berg.encode(model, images)
    assert seen == [100, 100, 1]
    monkeypatch.setattr(ModelSet, "forward_tensors", original)
    direct = model.modelset.forward(images)[model.column.name]
    np.testing.assert_array_equal(streamed, direct)


def test_berg_exception_classes(berg):
    with pytest.raises(compat.ModelNotFoundError):
        berg.get_encoding_model("nope", subject=1)
    with pytest.raises(compat.InvalidParameterError, match="Subject must be one of"):
        berg.get_encoding_model(FWRF, subject=0, selection={"roi": "V1"})
    with pytest.raises(compat.InvalidParameterError, match="required but was not provided"):
        berg.get_encoding_model(FWRF, subject=1)
    with pytest.raises(compat.InvalidParameterError, match="Invalid selection key"):
        berg.get_encoding_model(EEG, subject=1, selection={"roi": "V1"})
    with pytest.raises(compat.ValidationError, match="Invalid ROI"):
        berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V7"})
    with pytest.raises(compat.ValidationError, match="channels parameter must be a list"):
        berg.get_encoding_model(EEG, subject=1, selection={"channels": ("Oz",)})
    with pytest.raises(TypeError):
        berg.get_encoding_model(FWRF, selection={"roi": "V1"})
    with pytest.raises(TypeError):
        berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, colour="red")
    with pytest.raises(compat.ModelLoadError, match="Failed to load model: .*weights_sub-03_roi-V1.pt"):
        berg.get_encoding_model(FWRF, subject=3, selection={"roi": "V1"})
    assert not issubclass(compat.ValidationError, compat.BERGError)
    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="cpu")
    for bad in (np.zeros((3, 64, 64), np.uint8), [[1]], np.zeros((1, 3, 64, 64), np.int64),
                np.zeros((1, 1, 64, 64), np.uint8)):
        with pytest.raises(compat.StimulusError):
            berg.encode(model, bad)
    with pytest.raises(TypeError):
        berg.encode(model, np.zeros((1, 3, 64, 64), np.uint8), device="cpu")


def test_get_model_metadata(berg, berg_root):
    meta = berg.get_model_metadata(FWRF, subject=1, roi="V1")
    assert meta["fmri"]["ncsnr"].shape == (9,)
    assert berg.get_model_metadata(EEG, subject=2)["eeg"]["ch_names"][0] == "Fp1"
    with pytest.raises(compat.InvalidParameterError, match="Error retrieving metadata"):
        berg.get_model_metadata(FWRF, subject=1)
    with pytest.raises(compat.InvalidParameterError, match="Error retrieving metadata"):
        berg.get_model_metadata(EEG, subject=3)  # no such file in the root


def test_return_metadata_falls_back_like_berg(tmp_path, berg_root, capsys):
    rel = families.weight_files(FWRF, 1, "V1")[0]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes((berg_root / rel).read_bytes())
    berg = BERG(str(tmp_path))
    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="cpu")
    out = berg.encode(model, np.zeros((2, 3, 64, 64), np.uint8), return_metadata=True)
    assert isinstance(out, np.ndarray) and out.shape == (2, 9)
    assert "Warning: Could not retrieve metadata" in capsys.readouterr().out
    with model:
        pass  # the context manager works (BERG's raises on exit)


def test_single_voxel_fwrf_keeps_images_first(tmp_path):
    from berg_scale.testing.berg_root import make_synthetic_root

    root = make_synthetic_root(tmp_path / "r", models=(FWRF,), rois=("hV4",), fwrf_voxels=1, write_backbone=False)
    model = BERG(str(root)).get_encoding_model(FWRF, subject=1, selection={"roi": "hV4"}, device="cpu")
    out = BERG(str(root)).encode(model, np.zeros((3, 3, 50, 50), np.uint8), show_progress=False)
    assert out.shape == (3, 1)  # BERG: (1, 3)


@pytest.mark.slow
def test_eeg_101_images_do_not_crash(berg):
    """BERG fails to concatenate when the last batch holds one image."""
    model = berg.get_encoding_model(EEG, subject=2, selection={"channels": ["Oz", "Pz"]}, device="cpu")
    images = np.random.default_rng(5).integers(0, 256, (101, 3, 224, 224), dtype=np.uint8)
    out = berg.encode(model, images, show_progress=False)
    assert out.shape == (101, 4, 2, 140)
    np.testing.assert_allclose(out[100:], berg.encode(model, images[100:], show_progress=False), rtol=1e-5, atol=1e-6)
