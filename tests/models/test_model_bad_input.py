"""Bad images, bad requests and missing files give errors that name the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from berg_scale.errors import BergScaleError
from berg_scale.models import ModelSet, ReadoutError, ReadoutSpec, families
from berg_scale.models.preprocess import ImageInputError
from berg_scale.models.vit import BackboneMissingError

FWRF = "fmri-nsd-fwrf"


@pytest.fixture(scope="module")
def fwrf_set(berg_root):
    return ModelSet(str(berg_root), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")


@pytest.mark.parametrize(
    "images, fragment",
    [
        (np.zeros((2, 3, 64, 64), dtype=np.int64), "uint8"),
        (np.zeros((2, 3, 64, 64), dtype=np.float32), "multiply by 255"),
        (np.zeros((3, 64, 64), dtype=np.uint8), "images[None]"),
        (np.zeros((2, 64, 64, 3), dtype=np.uint8), "channels first"),
        (np.zeros((2, 4, 64, 64), dtype=np.uint8), "3 RGB channels"),
        ([[0]], "torch.Tensor"),
    ],
)
def test_bad_images_are_refused_with_a_fix(fwrf_set, images, fragment):
    with pytest.raises(ImageInputError) as info:
        fwrf_set.forward(images if isinstance(images, list) else torch.from_numpy(images))
    assert fragment in str(info.value)


def test_good_images_pass(fwrf_set):
    out = fwrf_set.forward(np.zeros((2, 3, 30, 40), dtype=np.uint8))
    assert out[f"{FWRF}/sub-01/V1"].shape == (2, 9)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (ReadoutSpec(FWRF, 9, {"roi": "V1"}), "Subject must be one of"),
        (ReadoutSpec(FWRF, 1, {"roi": "V4"}), "Invalid ROI: 'V4'"),
        (ReadoutSpec(FWRF, 1), "selection' is required"),
        (ReadoutSpec(FWRF, 1, {"roi": "V1", "hemi": "lh"}), "Invalid selection key: 'hemi'"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 11), "Subject must be one of"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"channels": ["Oz", "XX"]}), "Invalid channel(s): ['XX']"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"channels": "Oz"}), "must be a list"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"timepoints": [1] * 139}), "exactly 140 elements"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"timepoints": [0] * 140}), "At least one element"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"timepoints": [2] + [0] * 139}), "binary"),
        (ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, outputs=("mean",)), "fMRI readouts only"),
        (ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": None}), "must be a string"),
        (ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, downsample="fsaverage6"), "downsample"),
        (ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("voxels",)), "outputs"),
        (ReadoutSpec(FWRF, 1, {"roi": "V1"}, dtype="float64"), "dtype"),
    ],
)
def test_bad_requests_fail_before_reading_files(tmp_path, spec, fragment):
    # The root is empty: validation must fail first, with the card's message.
    with pytest.raises(ReadoutError) as info:
        ModelSet(str(tmp_path), [spec], device="cpu")
    assert fragment in str(info.value)


def test_unknown_model_id_lists_known_ones(tmp_path):
    with pytest.raises(BergScaleError, match="known models: fmri-nsd-fwrf"):
        ModelSet(str(tmp_path), [ReadoutSpec("fmri-nsd-fwrf-v2", 1, {"roi": "V1"})], device="cpu")


def test_missing_weight_file_names_file_and_fix(tmp_path):
    with pytest.raises(BergScaleError) as info:
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V2"})], device="cpu")
    message = str(info.value)
    assert families.weight_files(FWRF, 1, "V2")[0] in message
    assert "fetch-weights" in message


def test_missing_backbone_says_where_and_how(berg_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(BackboneMissingError) as info:
        ModelSet(str(berg_root), [ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1)], device="cpu")
    message = str(info.value)
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vit_b_32-d86f8d99.pth") in message
    assert "https://download.pytorch.org/models/vit_b_32-d86f8d99.pth" in message


def test_backbone_found_in_torch_home(berg_root, backbone, tmp_path, monkeypatch):
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vit_b_32-d86f8d99.pth").symlink_to(backbone)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    ms = ModelSet(str(berg_root), [ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "V1d"})], device="cpu")
    assert ms.forward(np.zeros((1, 3, 224, 224), np.uint8))[ms.columns[0].name].shape[0] == 1


def test_damaged_weight_files_give_clear_errors(berg_root, tmp_path):
    rel = families.weight_files(FWRF, 1, "V1")[0]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes((berg_root / rel).read_bytes()[:5000])
    with pytest.raises(BergScaleError, match="damaged|re-download"):
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")
    # A checkpoint without the subject's read-out.
    checkpoint = torch.load(berg_root / rel, weights_only=False)
    checkpoint["best_params"]["fwrfs"] = {2: checkpoint["best_params"]["fwrfs"][1]}
    torch.save(checkpoint, tmp_path / rel)
    with pytest.raises(BergScaleError, match="no entry for subject 1"):
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")
    # A truncated encoder state dict (strict loading).
    checkpoint["best_params"]["fwrfs"] = {1: checkpoint["best_params"]["fwrfs"][2]}
    del checkpoint["best_params"]["enc"]["enc.conv6b.conv1.bias"]
    torch.save(checkpoint, tmp_path / rel)
    with pytest.raises(BergScaleError, match="enc.conv6b.conv1.bias"):
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")


@pytest.mark.parametrize("key, value", [
    ("enc.bn1.running_mean", float("nan")),  # a buffer, not a parameter
    ("enc.bn1.running_var", float("nan")),
    ("enc.bn1.running_var", float("inf")),
    ("enc.bn1.running_var", -1.0),
    ("enc.conv6b.conv1.bias", float("nan")),
])
def test_non_finite_or_negative_encoder_state_is_refused(berg_root, tmp_path, key, value):
    rel = families.weight_files(FWRF, 1, "V1")[0]
    checkpoint = torch.load(berg_root / rel, weights_only=False)
    enc = checkpoint["best_params"]["enc"]
    assert key in enc, sorted(enc)[:8]
    enc[key] = enc[key].clone()
    enc[key].view(-1)[0] = value
    (tmp_path / rel).parent.mkdir(parents=True)
    torch.save(checkpoint, tmp_path / rel)
    with pytest.raises(BergScaleError) as info:
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")
    message = str(info.value)
    assert rel in message
    assert (key.split("enc.", 1)[1] in message and "NaN or infinite" in message) if value != -1.0 \
        else "running_var must be positive" in message


def test_non_finite_backbone_is_refused(backbone, tmp_path):
    from berg_scale.models.vit import load_vit_b_32

    state = torch.load(backbone, weights_only=True)
    name = next(k for k in state if k.endswith("ln.weight"))
    state[name] = state[name].clone()
    state[name][0] = float("nan")
    torch.save(state, tmp_path / "vit.pth")
    with pytest.raises(BergScaleError, match=f"{name} contains NaN or infinite"):
        load_vit_b_32(tmp_path / "vit.pth", torch.device("cpu"))


def test_mean_without_ncsnr_is_a_clear_error(berg_root, tmp_path):
    rel = families.weight_files(FWRF, 1, "V1")[0]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes((berg_root / rel).read_bytes())
    with pytest.raises(BergScaleError, match="ncsnr"):
        ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("mean",))], device="cpu")
    # Responses alone work without metadata.
    ms = ModelSet(str(tmp_path), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cpu")
    assert "ncsnr" not in ms.columns[0].coords


def test_threshold_with_no_voxel_left_is_reported(berg_root):
    spec = ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("mean",), ncsnr_threshold=5.0)
    with pytest.raises(ReadoutError, match="lower ncsnr_threshold"):
        ModelSet(str(berg_root), [spec], device="cpu")


def test_cuda_request_without_cuda_is_clear(berg_root):
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    with pytest.raises(BergScaleError, match="CUDA is not available"):
        ModelSet(str(berg_root), [ReadoutSpec(FWRF, 1, {"roi": "V1"})], device="cuda:0")


def test_exact_resize_switch_keeps_cpu_results_and_restores_itself():
    """The fp32 path's CPU resampling switch is scoped and leaves CPU tensors untouched."""
    import torch

    from berg_scale.models import preprocess

    images = torch.randint(0, 256, (2, 3, 300, 241), dtype=torch.uint8)
    plain = preprocess.resize_uint8(images, [227, 227])
    with preprocess.resize_on_cpu(True):
        assert preprocess._RESIZE_ON_CPU.get() is True
        inside = preprocess.resize_uint8(images, [227, 227])
    assert preprocess._RESIZE_ON_CPU.get() is False
    assert torch.equal(plain, inside)
