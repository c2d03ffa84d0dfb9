"""Synthetic BERG roots: BERG's exact file format, random weights, small where allowed.

Used by tests, the demo and benchmarks so nothing needs the real (multi-GB) weights or
the network. The files carry the same Python/NumPy object types as the published ones
(pickled dicts in `.npy`, NumPy arrays and an `argparse.Namespace` inside `.pt`
checkpoints) so that the safe loaders are exercised on realistic content.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.models import families
from berg_scale.models.registry import get_card

ALL_MODELS = ("fmri-nsd-fwrf", "fmri-nsd_fsaverage-vit_b_32", "eeg-things_eeg_2-vit_b_32")
N_FEATURES = 460_800
EEG_COMPONENTS = 250
CALIBRATION_IMAGES = 8


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def _save_npy(root: Path, relative: str, data: dict) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(data, dtype=object), allow_pickle=True)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype=np.float32) -> np.ndarray:
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= std
    return out.astype(dtype, copy=False)


# --- ViT backbone ---------------------------------------------------------------------


def _write_backbone(root: Path, seed: int, dtype: str):
    import torch
    from torchvision.models import vit_b_32

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = vit_b_32(weights=None).eval()
    state = model.state_dict()
    if dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)
    torch.save(state, root / families.VIT_B_32.file)
    return model


def _feature_statistics(model, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean/std of the backbone on a few random images (realistic scaler)."""
    import torch

    from berg_scale.models.preprocess import vit224
    from berg_scale.models.vit import VitFeatures

    images = torch.from_numpy(_rng(seed, 99).integers(0, 256, (CALIBRATION_IMAGES, 3, 240, 260), dtype=np.uint8))
    with torch.no_grad():
        feats = VitFeatures(model)(vit224(images)).double().numpy()
    mean = feats.mean(0)
    std = feats.std(0)
    std[std < 1e-6] = 1.0
    return mean, std


# --- ViT readouts -------------------------------------------------------------------------


def _scaler_and_pca(rng, k: int, stats, components_dtype: str) -> tuple[dict, dict]:
    if stats is None:
        base_mean = rng.normal(0.0, 0.5, N_FEATURES)
        base_std = rng.uniform(0.5, 2.0, N_FEATURES)
    else:
        base_mean, base_std = stats
    mean = base_mean + 0.05 * base_std * rng.standard_normal(N_FEATURES)
    scale = base_std * rng.uniform(0.9, 1.1, N_FEATURES)
    scaler = {
        "scale_": scale.astype(np.float64),
        "mean_": mean.astype(np.float64),
        "var_": (scale**2).astype(np.float64),
        "n_features_in_": N_FEATURES,
        "n_samples_seen_": np.int64(1000),
    }
    components = _normal(rng, (k, N_FEATURES), 1.0 / math.sqrt(N_FEATURES), np.dtype(components_dtype))
    pca = {
        "components_": components,
        "explained_variance_": np.sort(rng.uniform(0.1, 1.0, k)).astype(np.float32)[::-1].copy(),
        "explained_variance_ratio_": np.full(k, 1.0 / k, dtype=np.float32),
        "singular_values_": rng.uniform(1.0, 10.0, k).astype(np.float32),
        "mean_": _normal(rng, (N_FEATURES,), 0.02),
        "n_components_": k,
        "n_samples_": 1000,
        "noise_variance_": np.float64(0.01),
        "n_features_in_": N_FEATURES,
    }
    return scaler, pca


def _regression(rng, n_out: int, k: int, shared: float = 0.0) -> dict:
    """Random regression; `shared` adds a common direction so outputs correlate like
    neighbouring vertices do (ROI means then do not average out to ~0)."""
    coef = _normal(rng, (n_out, k), 1.0 / math.sqrt(k))
    if shared:
        direction = _normal(rng, (k,), 1.0 / math.sqrt(k))
        coef += shared * rng.uniform(0.5, 1.5, (n_out, 1)).astype(np.float32) * direction
    return {
        "coef_": coef,
        "intercept_": _normal(rng, (n_out,), 0.1),
        "n_features_in_": k,
    }


FSAVERAGE5_VERTICES = 10242


def _patch_rois(rng: np.random.Generator, hemi: str, names: list[str]) -> dict[str, np.ndarray]:
    """ROIs as compact patches of fsaverage5 vertices (the first 10,242 of fsaverage), so a
    surface figure shows them as areas; random scattered vertices would mostly fall outside
    fsaverage5 and vanish from the map. Needs nilearn's bundled fsaverage5 sphere."""
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise BergScaleError("ROI patches need nilearn for the fsaverage5 sphere: "
                             "pip install 'berg-scale[neuro]'") from exc
    sphere = datasets.load_fsaverage("fsaverage5")["sphere"].parts["left" if hemi == "lh" else "right"]
    points = np.asarray(sphere.coordinates, dtype=np.float64)[:FSAVERAGE5_VERTICES]
    patches = {}
    for name in names:
        centre = points[int(rng.integers(0, len(points)))]
        size = int(rng.integers(60, 240))
        nearest = np.argsort(np.linalg.norm(points - centre, axis=1), kind="stable")[:size]
        patches[name] = np.sort(nearest).astype(np.int64)
    return patches


def _write_fsaverage(root: Path, subject: int, seed: int, k: int, rois: Iterable[str], stats,
                     roi_patches: bool = False) -> None:
    model_id = "fmri-nsd_fsaverage-vit_b_32"
    card = get_card(model_id)
    n = int(card.vertices_per_hemisphere or 163842)
    rng = _rng(seed, 2, subject)
    scaler, pca = _scaler_and_pca(rng, k, stats, "float32")
    weights = {
        "scaler_param": scaler,
        "pca_param": pca,
        "lh_reg_param": _regression(rng, n, k, shared=1.5),
        "rh_reg_param": _regression(rng, n, k, shared=1.5),
    }
    _save_npy(root, families.weight_files(model_id, subject)[0], weights)
    roi_names = [card.canonical_roi(r) or r for r in rois]
    fmri: dict = {}
    for hemi in ("lh", "rh"):
        fmri[f"{hemi}_ncsnr"] = rng.uniform(0.0, 1.0, n).astype(np.float32)
        fmri[f"{hemi}_fsaverage_rois"] = _patch_rois(rng, hemi, roi_names) if roi_patches else {
            name: np.sort(rng.choice(n, size=int(rng.integers(20, 200)), replace=False)).astype(np.int64)
            for name in roi_names
        }
    meta = {
        "fmri": fmri,
        "encoding_models": {
            "train_img_num": np.arange(0, 90, dtype=np.int64),
            "val_img_num": np.arange(90, 95, dtype=np.int64),
            "test_img_num": np.arange(95, 100, dtype=np.int64),
        },
    }
    _save_npy(root, families.metadata_file(model_id, subject), meta)


def _write_eeg(
    root: Path,
    subject: int,
    seed: int,
    channels: list[str],
    n_times: int,
    repetitions: int,
    stats,
    components_dtype: str,
    link_to: Path | None,
) -> Path:
    model_id = "eeg-things_eeg_2-vit_b_32"
    weights_path = root / families.weight_files(model_id, subject)[0]
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, 3, subject)
    if link_to is not None:
        if weights_path.exists():
            weights_path.unlink()
        os.link(link_to, weights_path)
    else:
        scaler, pca = _scaler_and_pca(rng, EEG_COMPONENTS, stats, components_dtype)
        reg = {
            f"rep-{r}": _regression(rng, len(channels) * n_times, EEG_COMPONENTS)
            for r in range(1, repetitions + 1)
        }
        _save_npy(root, families.weight_files(model_id, subject)[0],
                  {"scaler_param": scaler, "pca_param": pca, "reg_param": reg})
    times = np.round(-0.1 + 0.005 * np.arange(n_times), 6)
    meta = {
        "eeg": {"ch_names": list(channels), "times": times},
        "encoding_models": {
            "correlation_averaged_repetitions": rng.uniform(0, 0.5, (len(channels), n_times)),
            "correlation_single_repetitions": rng.uniform(0, 0.5, (repetitions, len(channels), n_times)),
        },
    }
    _save_npy(root, families.metadata_file(model_id, subject), meta)
    return weights_path


# --- fwRF ---------------------------------------------------------------------------------


def gnet_state_dict(rng: np.random.Generator, mu: np.ndarray) -> dict:
    """A random encoder state dict with BERG's 53 keys (He-scaled so activations stay O(1))."""
    import torch

    def conv(prefix: str, c_out: int, c_in: int, size: int, gain: float = 2.0) -> dict:
        fan_in = c_in * size * size
        return {
            f"{prefix}.weight": torch.from_numpy(_normal(rng, (c_out, c_in, size, size), math.sqrt(gain / fan_in))),
            f"{prefix}.bias": torch.from_numpy(_normal(rng, (c_out,), 0.05)),
        }

    def bn(prefix: str, c: int) -> dict:
        return {
            f"{prefix}.weight": torch.from_numpy(rng.uniform(0.7, 1.3, c).astype(np.float32)),
            f"{prefix}.bias": torch.from_numpy(_normal(rng, (c,), 0.05)),
            f"{prefix}.running_mean": torch.from_numpy(_normal(rng, (c,), 0.1)),
            f"{prefix}.running_var": torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)),
            f"{prefix}.num_batches_tracked": torch.tensor(1000, dtype=torch.int64),
        }

    state = {"mu": torch.from_numpy(mu.astype(np.float32).copy())}
    # Input pixels minus mu span about +-0.5 (std ~0.3): a larger gain keeps maps O(1).
    state |= conv("pre.conv1.0", 64, 3, 11, gain=25.0)
    state |= conv("pre.conv2.0", 192, 64, 5)
    state |= conv("enc.conv3", 128, 192, 3)
    state |= bn("enc.bn1", 192)
    for name, c_out in (("conv4a", 128), ("conv5a", 128), ("conv6a", 128), ("conv4b", 128), ("conv5b", 128), ("conv6b", 64)):
        state |= conv(f"enc.{name}.conv1", c_out, 128, 3)
        state |= bn(f"enc.{name}.bn1", 128)
    return state


def fwrf_state_dict(rng: np.random.Generator, n_voxels: int) -> dict:
    import torch

    return {
        # Peaked receptive fields (logit std 2) so responses vary between images.
        "rf0": torch.from_numpy(_normal(rng, (n_voxels, 27, 27), 2.0)),
        "rf1": torch.from_numpy(_normal(rng, (n_voxels, 25, 25), 2.0)),
        "rf2": torch.from_numpy(_normal(rng, (n_voxels, 13, 13), 2.0)),
        # A shared direction in w makes voxels co-vary, as real ROI voxels do.
        "w": torch.from_numpy(
            _normal(rng, (n_voxels, 768), 3.0 / math.sqrt(768))
            + rng.uniform(0.5, 1.5, (n_voxels, 1)).astype(np.float32) * _normal(rng, (1, 768), 3.0 / math.sqrt(768))
        ),
        "b": torch.from_numpy(_normal(rng, (n_voxels,), 0.05)),
    }


def _fwrf_checkpoint(rng, subject: int, n_voxels: int, stim_mean: np.ndarray) -> dict:
    params = {"enc": gnet_state_dict(rng, stim_mean), "fwrfs": {subject: fwrf_state_dict(rng, n_voxels)}}
    return {
        "stim_mean": stim_mean,
        "best_params": params,
        "final_params": params,
        "args.": argparse.Namespace(lr=1e-3, epochs=10, subjects=[subject], trunk_width=64),
        "trn_hist": [np.float64(v) for v in rng.uniform(0, 1, 3)],
        "hold_hist": [np.float64(v) for v in rng.uniform(0, 1, 3)],
        "hold_cc_hist": {subject: [rng.uniform(0, 1, n_voxels).astype(np.float32)]},
        "best_epoch": 2,
        "best_joint_cc_score": np.float32(0.3),
        "subject_val_cc": {subject: rng.uniform(0, 1, n_voxels).astype(np.float32)},
        "betas_info": {subject: {"volume_shape": (81, 104, 83), "ncsnr": rng.uniform(0, 1, n_voxels)}},
    }


def _write_fwrf(root: Path, subject: int, roi: str, roi_index: int, seed: int, n_voxels: int) -> None:
    import torch

    model_id = "fmri-nsd-fwrf"
    rng = _rng(seed, 1, subject, roi_index)
    stim_mean = rng.uniform(0.35, 0.5, (1, 3, 1, 1)).astype(np.float32)
    files = families.weight_files(model_id, subject, roi)
    sizes = [n_voxels] if len(files) == 1 else [math.ceil(n_voxels / 2), n_voxels // 2]
    for relative, size in zip(files, sizes):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_fwrf_checkpoint(rng, subject, size, stim_mean), path)
    volume_shape = (81, 104, 83)  # NSD subject 1, func1pt8mm
    mask = np.zeros(int(np.prod(volume_shape)), dtype=bool)
    mask[np.sort(rng.choice(mask.size, size=n_voxels, replace=False))] = True
    ncsnr = rng.uniform(0.0, 1.0, n_voxels)
    r2 = rng.uniform(0.0, 0.3, n_voxels)
    noise_ceiling = ncsnr**2 / (ncsnr**2 + 1.0 / 3.0)
    meta = {
        "fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask.reshape(volume_shape), "fmri_affine": np.eye(4)},
        "encoding_models": {
            "r2": r2,
            "noise_ceiling": noise_ceiling,
            "explained_variance": np.minimum(100 * r2 / noise_ceiling, 100),
            "train_img_num": np.arange(0, 90, dtype=np.int64),
            "val_img_num": np.arange(90, 95, dtype=np.int64),
            "test_img_num": np.arange(95, 100, dtype=np.int64),
        },
    }
    _save_npy(root, families.metadata_file(model_id, subject, roi), meta)


# --- entry point --------------------------------------------------------------------------


def make_synthetic_root(
    root: str | os.PathLike,
    models: Iterable[str] = ALL_MODELS,
    subjects: Iterable[int] = (1,),
    rois: Iterable[str] = ("V1",),
    seed: int = 0,
    eeg_channels: list[str] | None = None,
    eeg_times: int = 140,
    eeg_repetitions: int = 4,
    eeg_subjects: Iterable[int] | None = None,
    eeg_components_dtype: str = "float32",
    eeg_link_subjects: bool = False,
    fsaverage_components: int = 3,
    fsaverage_subjects: Iterable[int] | None = None,
    fsaverage_rois: Iterable[str] | None = None,
    fsaverage_roi_patches: bool = False,
    fwrf_voxels: int | Mapping[str, int] = 8,
    write_backbone: bool = True,
    backbone_dtype: str = "float32",
    calibrate_scaler: bool = True,
) -> Path:
    """Write a BERG root with random weights; returns its path.

    `subjects` applies to every model unless `eeg_subjects` / `fsaverage_subjects` say
    otherwise. EEG weight files are ~460 MB each (the (250, 460800) PCA cannot shrink);
    `eeg_components_dtype="float16"` halves that, and `eeg_link_subjects` makes every
    EEG subject a hard link to the first subject's weights (metadata stays per subject).
    `calibrate_scaler` sets the scaler statistics from the backbone's features on a few
    random images, so standardised features are O(1) as in the real models.
    `fsaverage_roi_patches` makes each fsaverage ROI a compact patch of fsaverage5 vertices
    (needs nilearn), so surface figures of the synthetic responses show areas.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    models = tuple(models)
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise BergScaleError(f"cannot synthesise {unknown}; choose from {ALL_MODELS}")
    subjects = tuple(subjects)
    vit_models = [m for m in models if families.family_for(m).backbone is not None]
    stats = None
    if write_backbone or vit_models:
        model = None
        if write_backbone:
            model = _write_backbone(root, seed, backbone_dtype)
        elif calibrate_scaler and vit_models and (root / families.VIT_B_32.file).exists():
            import torch

            from berg_scale.models.vit import load_vit_b_32

            model = load_vit_b_32(root / families.VIT_B_32.file, torch.device("cpu")).model
        if model is not None and calibrate_scaler and vit_models:
            stats = _feature_statistics(model, seed)
    if "fmri-nsd_fsaverage-vit_b_32" in models:
        card = get_card("fmri-nsd_fsaverage-vit_b_32")
        names = list(fsaverage_rois) if fsaverage_rois is not None else list(card.rois)
        for subject in fsaverage_subjects if fsaverage_subjects is not None else subjects:
            _write_fsaverage(root, subject, seed, fsaverage_components, names, stats,
                             fsaverage_roi_patches)
    if "eeg-things_eeg_2-vit_b_32" in models:
        channels = list(eeg_channels) if eeg_channels is not None else list(get_card("eeg-things_eeg_2-vit_b_32").channels)
        first: Path | None = None
        for subject in eeg_subjects if eeg_subjects is not None else subjects:
            path = _write_eeg(root, subject, seed, channels, eeg_times, eeg_repetitions, stats,
                              eeg_components_dtype, first if eeg_link_subjects else None)
            first = first or path
    if "fmri-nsd-fwrf" in models:
        card = get_card("fmri-nsd-fwrf")
        for subject in subjects:
            for roi in rois:
                canonical = card.canonical_roi(roi)
                if canonical is None:
                    raise BergScaleError(f"unknown fwRF ROI {roi!r}; choose from {list(card.rois)}")
                n = fwrf_voxels.get(canonical, 8) if isinstance(fwrf_voxels, Mapping) else int(fwrf_voxels)
                _write_fwrf(root, subject, canonical, card.rois.index(canonical), seed, n)
    return root


def backbone_file(root: str | os.PathLike) -> Path:
    """Where `make_synthetic_root` put the random ViT-B/32 weights."""
    return Path(root) / families.VIT_B_32.file
