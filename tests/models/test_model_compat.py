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
    # BERG's nesting: parameters are dicts, selection keys sit under "properties".
    assert info["parameters"]["subject"]["valid_values"] == list(range(1, 11))
    assert info["parameters"]["subject"]["required"] is True
    channels = info["parameters"]["selection"]["properties"]["channels"]
    assert channels["type"] == "list" and len(channels["valid_values"]) == 63 and channels["valid_values"][0] == "Fp1"
    assert set(info["parameters_by_function"]) == {"get_encoding_model", "encode"}
    assert set(info["parameters_by_function"]["get_encoding_model"]) == {"subject", "selection", "device"}
    assert info["parameters_by_function"]["encode"]["stimulus"]["type"] == "numpy.ndarray"
    assert info["input"]["shape"] == ["batch_size", 3, "height", "width"]
    assert [d["name"] for d in info["output"]["dimensions"]] == ["batch_size", "n_repetitions", "n_channels", "n_times"]
    fwrf = berg.describe(FWRF)
    assert fwrf["parameters"]["subject"]["valid_values"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert fwrf["parameters"]["selection"]["required"] is True
    rois = fwrf["parameters"]["selection"]["properties"]["roi"]["valid_values"]
    assert rois[0] == "V1" and rois[-1] == "ventral" and len(rois) == 23
    assert "subject=1, selection={'roi': 'V1'}" in fwrf["example_usage"]
    assert "OVWFA" in berg.describe(FSAV)["parameters"]["selection"]["properties"]["roi"]["valid_values"]
    assert berg.describe(FSAV)["output"]["type"].startswith("tuple of two")  # (lh, rh), as encode returns
    assert fwrf["output"]["type"] == "numpy.ndarray"
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
    for bad in (np.zeros((3, 64, 64), np.uint8), [[1]], np.full((1, 3, 64, 64), 256, np.int64),
                np.full((1, 3, 64, 64), -1.0), np.zeros((1, 3, 64, 64), bool),
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
    from berg_scale.synthetic.berg_root import make_synthetic_root

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


# --- parity with BERG's documented input handling ------------------------------------


def test_numpy_integer_subjects_are_accepted(berg):
    """BERG tests `subject in [1, ..., 8]`, which NumPy integers pass."""
    model = berg.get_encoding_model(FWRF, subject=np.int64(1), selection={"roi": "V1"}, device="cpu")
    assert model.subject == 1 and type(model.subject) is int
    assert model.column.name == "fmri-nsd-fwrf/sub-01/V1"
    assert berg.get_model_metadata(FWRF, subject=np.int32(1), roi="V1")["fmri"]["ncsnr"].shape == (9,)
    for bad in (np.bool_(True), True, 1.5, "1"):
        with pytest.raises(compat.InvalidParameterError, match="Subject must be one of"):
            berg.get_encoding_model(FWRF, subject=bad, selection={"roi": "V1"})


def test_fwrf_takes_integer_and_float_stimuli_as_berg_does(berg, berg_root):
    """fwRF divides any dtype by 255: int arrays give uint8's numbers exactly, floats are
    resized without rounding (BERG's float path)."""
    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="cpu")
    rng = np.random.default_rng(11)
    odd = rng.integers(0, 256, (3, 3, 40, 50), dtype=np.uint8)
    expected = berg.encode(model, odd, show_progress=False)
    for dtype in (np.int64, np.int32, np.int16, np.uint16):
        np.testing.assert_array_equal(berg.encode(model, odd.astype(dtype), show_progress=False), expected)
    # At 227 x 227 nothing is resized, so float input equals uint8 input bit for bit.
    exact = rng.integers(0, 256, (2, 3, 227, 227), dtype=np.uint8)
    for dtype in (np.float64, np.float32):
        np.testing.assert_array_equal(berg.encode(model, exact.astype(dtype), show_progress=False),
                                      berg.encode(model, exact, show_progress=False))
    # Resized floats follow BERG's float path (no rounding back to integers).
    floats = odd.astype(np.float64) + rng.uniform(-0.4, 0.4, odd.shape).clip(-odd, 255 - odd)
    out = berg.encode(model, floats, show_progress=False)
    x = ref._resize(floats, [227, 227]).astype(np.float32).astype(np.float64) / 255.0
    reference = ref.fwrf_responses(ref.load_pt(berg_root / families.weight_files(FWRF, 1, "V1")[0]), 1, x)
    assert ref.rel_error(out, reference) < 1e-5
    with pytest.warns(UserWarning, match="0..255 scale"):
        berg.encode(model, odd / 255.0, show_progress=False)
    with pytest.raises(compat.StimulusError, match=r"0\.\.255, got 45\.\.300"):
        berg.encode(model, np.array(odd, np.int64) + np.int64(45), show_progress=False)
    with pytest.raises(compat.StimulusError, match="NaN"):
        berg.encode(model, np.full((1, 3, 8, 8), np.nan), show_progress=False)


def test_vit_refuses_integers_berg_would_darken_and_takes_floats_in_0_1(berg):
    model = berg.get_encoding_model(FSAV, subject=1, selection={"roi": "hV4"}, device="cpu")
    images = np.random.default_rng(12).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    with pytest.raises(compat.StimulusError, match="divides int64 by 9223372036854775807.*almost black"):
        berg.encode(model, images.astype(np.int64), show_progress=False)
    lh, rh = berg.encode(model, images, show_progress=False)
    # BERG takes floats as already scaled to [0, 1]; at 256 x 256 nothing is resized.
    lh_f, rh_f = berg.encode(model, images.astype(np.float32) / np.float32(255), show_progress=False)
    np.testing.assert_array_equal(lh_f, lh)
    np.testing.assert_array_equal(rh_f, rh)
    with pytest.raises(compat.StimulusError, match="0..1"):
        berg.encode(model, images.astype(np.float32), show_progress=False)


def test_fsaverage_hemispheres_are_separate_contiguous_arrays(berg):
    model = berg.get_encoding_model(FSAV, subject=1, device="cpu")
    lh, rh = berg.encode(model, np.zeros((2, 3, 64, 64), np.uint8), show_progress=False)
    assert lh.flags.c_contiguous and rh.flags.c_contiguous and lh.flags.writeable
    assert not np.shares_memory(lh, rh)
    assert lh.shape == rh.shape == (2, 163842)


def test_device_strings_torch_accepts(berg, monkeypatch):
    import torch

    model = berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="cpu:0")
    assert model.modelset.device == torch.device("cpu:0")
    assert berg.encode(model, np.zeros((1, 3, 32, 32), np.uint8), show_progress=False).shape == (1, 9)
    # "mps" is a device torch knows: accepted, and refused only because it is absent here.
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(compat.ModelLoadError, match="'mps' requested but torch has no usable mps backend"):
        berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device="mps")
    for bad in ("gpu", "cuda:x", 3):
        with pytest.raises(compat.InvalidParameterError, match="device"):
            berg.get_encoding_model(FWRF, subject=1, selection={"roi": "V1"}, device=bad)


def test_split_rois_warn_when_the_checkpoints_mu_differ(tmp_path, berg_root, recwarn):
    """BERG (CPU) subtracts the last split's mu from both splits; berg-scale uses each
    file's own and says so when they differ."""
    import shutil
    import warnings

    import torch

    files = families.weight_files(FWRF, 1, "lateral")
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(berg_root / rel, tmp_path / rel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical mu (as published): no warning
        BERG(str(tmp_path)).get_encoding_model(FWRF, subject=1, selection={"roi": "lateral"}, device="cpu")
    second = torch.load(tmp_path / files[1], map_location="cpu", weights_only=False)
    second["best_params"]["enc"]["mu"] = second["best_params"]["enc"]["mu"] + 0.05
    torch.save(second, tmp_path / files[1])
    with pytest.warns(UserWarning, match="different encoder mu.*each file's own mu"):
        model = BERG(str(tmp_path)).get_encoding_model(FWRF, subject=1, selection={"roi": "lateral"}, device="cpu")
    images = np.random.default_rng(13).integers(0, 256, (2, 3, 227, 227), dtype=np.uint8)
    out = BERG(str(tmp_path)).encode(model, images, show_progress=False)
    x = ref.fwrf_preprocess(images)
    own = np.concatenate([ref.fwrf_responses(ref.load_pt(tmp_path / f), 1, x) for f in files], axis=1)
    assert ref.rel_error(out, own) < 1e-5
