"""Relative paths of BERG's weight and metadata files (BERG's on-disk layout, unchanged).

No torch here: the fetcher and the planner use these paths to decide what to copy.
"""

from __future__ import annotations

from berg_scale.errors import BergScaleError

EEG_DIR = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
FSAVERAGE_DIR = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32"
FWRF_DIR = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf"

_VIT_DIRS = {
    "eeg-things_eeg_2-vit_b_32": EEG_DIR,
    "fmri-nsd_fsaverage-vit_b_32": FSAVERAGE_DIR,
}
FWRF_ID = "fmri-nsd-fwrf"
SPLIT_ROIS = ("lateral", "ventral")

BACKBONE_FILE = "vit_b_32-d86f8d99.pth"
BACKBONE_URL = "https://download.pytorch.org/models/vit_b_32-d86f8d99.pth"


def _subject(subject: int) -> str:
    if isinstance(subject, bool) or not isinstance(subject, int) or not 1 <= subject <= 99:
        raise BergScaleError(f"subject must be an integer from 1 to 99, got {subject!r}")
    return f"{subject:02d}"


def _fwrf_roi(model_id: str, roi: str | None) -> str:
    if not roi:
        raise BergScaleError(f"{model_id} needs an ROI (e.g. roi='V1') to name its files")
    if "/" in roi or "\\" in roi or roi.startswith("."):
        raise BergScaleError(f"ROI name {roi!r} is not a plain name")
    return roi


def weight_files(model_id: str, subject: int, roi: str | None = None) -> list[str]:
    """Weight files of one readout, in load order (two for split fwRF ROIs)."""
    ss = _subject(subject)
    if model_id in _VIT_DIRS:
        return [f"{_VIT_DIRS[model_id]}/encoding_models_weights/weights_subject-{ss}.npy"]
    if model_id == FWRF_ID:
        roi = _fwrf_roi(model_id, roi)
        folder = f"{FWRF_DIR}/encoding_models_weights"
        if roi in SPLIT_ROIS:
            return [f"{folder}/weights_sub-{ss}_roi-{roi}_split-{k}.pt" for k in (1, 2)]
        return [f"{folder}/weights_sub-{ss}_roi-{roi}.pt"]
    raise BergScaleError(f"no BERG file layout is known for model id {model_id!r}")


def metadata_file(model_id: str, subject: int, roi: str | None = None) -> str:
    """The metadata file of one readout (fwRF split ROIs have a single unsplit file)."""
    ss = _subject(subject)
    if model_id in _VIT_DIRS:
        return f"{_VIT_DIRS[model_id]}/metadata/metadata_subject-{ss}.npy"
    if model_id == FWRF_ID:
        roi = _fwrf_roi(model_id, roi)
        return f"{FWRF_DIR}/metadata/metadata_sub-{ss}_roi-{roi}.npy"
    raise BergScaleError(f"no BERG file layout is known for model id {model_id!r}")
