"""Model families: everything the engine's planners need to know about a kind of model.

A family descriptor answers, without torch and without reading a weight file, the
questions that preflight, `fetch-weights`, `plan` and the BERG facade ask about a readout:
which weight and metadata files it reads (BERG's on-disk layout, unchanged), whether the
metadata must exist, which backbone it shares, which preprocessing recipe it needs, how
wide its output is, which coordinates label the output, and how BERG splits that output.
Each model card names its family (`family:` in the card); builtin families are defined
here, a new family registers its descriptor with `register_family` next to its model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.models.registry import ModelCard, get_card

# Reads one BERG-relative metadata file; None when the root lacks it (or no root is at hand).
MetadataReader = Callable[[str], Any]


@dataclass(frozen=True)
class Backbone:
    """Pretrained weights shared by a family's readouts and kept outside BERG's bucket."""

    name: str
    file: str
    url: str

    def default_path(self) -> Path:
        """torch.hub's checkpoint cache ($TORCH_HOME/hub/checkpoints), computed without torch."""
        torch_home = os.environ.get("TORCH_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
        )
        return Path(torch_home).expanduser() / "hub" / "checkpoints" / self.file


VIT_B_32 = Backbone(
    name="ViT-B/32",
    file="vit_b_32-d86f8d99.pth",
    url="https://download.pytorch.org/models/vit_b_32-d86f8d99.pth",
)


class Readout(Protocol):
    """What a family reads of a readout request (a `ReadoutSpec` satisfies it)."""

    model_id: str
    subject: int
    outputs: tuple[str, ...]
    downsample: str | None


@dataclass(frozen=True)
class Width:
    """Values per image of a responses column, and where that number came from."""

    values: int | None
    source: str


class ModelFamily:
    """Defaults shared by every family; subclasses override what differs.

    `files_per_roi` says that a readout's files depend on its ROI (one checkpoint per
    ROI), so the ROI must be named to fetch it; otherwise a subject's files hold every ROI.
    """

    name: str = ""
    recipe: str = ""
    dims: tuple[str, ...] = ()
    coordinates: tuple[str, ...] = ()
    backbone: Backbone | None = None
    # BERG's facade returns a tuple of arrays (split_output) rather than one array.
    returns_tuple: bool = False
    files_per_roi: bool = False

    def weight_files(self, card: ModelCard, subject: int, roi: str | None = None) -> list[str]:
        """Weight files of one readout, relative to the BERG root, in load order."""
        raise NotImplementedError

    def metadata_file(self, card: ModelCard, subject: int, roi: str | None = None) -> str:
        """The metadata file of one readout, relative to the BERG root."""
        raise NotImplementedError

    def metadata_required(self, readout: Readout) -> bool:
        """Whether the readout cannot be built without its metadata file."""
        return True

    def output_width(self, readout: Readout, resolved: Any, read: MetadataReader) -> Width:
        """The responses column's values per image (None when no source knows)."""
        return Width(None, "unknown width")

    def split_output(self, responses: np.ndarray, coords: dict[str, np.ndarray]) -> Any:
        """BERG's return value for a batch of one column's responses (default: as is)."""
        return responses


def nested(data: Any, *keys: str) -> Any:
    """`data[k1][k2]...`, or None where any level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def subject_code(subject: int) -> str:
    if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)) or not 1 <= subject <= 99:
        raise BergScaleError(f"subject must be an integer from 1 to 99, got {subject!r}")
    return f"{int(subject):02d}"


def _plain_roi(model_id: str, roi: str | None) -> str:
    if not roi:
        raise BergScaleError(f"{model_id} needs an ROI (e.g. roi='V1') to name its files")
    if "/" in roi or "\\" in roi or roi.startswith("."):
        raise BergScaleError(f"ROI name {roi!r} is not a plain name")
    return roi


class FwrfFamily(ModelFamily):
    """GNet + fwRF: one checkpoint per subject and ROI, split ROIs stored as two halves."""

    name = "fwrf"
    recipe = "fwrf227"
    dims = ("voxel",)
    coordinates = ("voxel", "ncsnr")
    files_per_roi = True
    folder = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf"
    # Subject-1 voxel counts of the published models (BERG's NSD fwRF weight files for subject 1).
    subject1_voxels: ClassVar[dict[str, int]] = {
        "V1": 1350, "V2": 1433, "V3": 1187, "hV4": 687, "EBA": 2971, "FBA-2": 430, "OFA": 355,
        "FFA-1": 484, "FFA-2": 310, "PPA": 1033, "RSC": 566, "OPA": 1611, "OWFA": 464,
        "VWFA-1": 773, "VWFA-2": 505, "mfs-words": 165, "early": 5917, "midventral": 986,
        "midlateral": 834, "midparietal": 950, "parietal": 3548, "lateral": 7799, "ventral": 7604,
    }

    def weight_files(self, card: ModelCard, subject: int, roi: str | None = None) -> list[str]:
        ss = subject_code(subject)
        roi = _plain_roi(card.model_id, roi)
        folder = f"{self.folder}/encoding_models_weights"
        if roi in card.split_rois:
            return [f"{folder}/weights_sub-{ss}_roi-{roi}_split-{k}.pt" for k in (1, 2)]
        return [f"{folder}/weights_sub-{ss}_roi-{roi}.pt"]

    def metadata_file(self, card: ModelCard, subject: int, roi: str | None = None) -> str:
        # Split ROIs have one unsplit metadata file.
        ss = subject_code(subject)
        return f"{self.folder}/metadata/metadata_sub-{ss}_roi-{_plain_roi(card.model_id, roi)}.npy"

    def metadata_required(self, readout: Readout) -> bool:
        # Only the `:mean` summary needs the metadata (its ncsnr).
        return "mean" in tuple(readout.outputs)

    def output_width(self, readout: Readout, resolved: Any, read: MetadataReader) -> Width:
        data = read(self.metadata_file(resolved.card, readout.subject, resolved.roi))
        ncsnr = nested(data, "fmri", "ncsnr")
        if ncsnr is not None:
            return Width(int(np.asarray(ncsnr).shape[0]), "metadata")
        mask = nested(data, "fmri", "roi_mask_volume")
        if mask is not None:
            return Width(int(np.count_nonzero(mask)), "metadata")
        if resolved.roi in self.subject1_voxels:
            label = "documented count" if readout.subject == 1 else "subject-1 count (approx.)"
            return Width(self.subject1_voxels[resolved.roi], label)
        return Width(None, "needs metadata")


class VitReadoutFamily(ModelFamily):
    """Readouts on ViT-B/32 block outputs: one weight and one metadata file per subject."""

    recipe = "vit224"
    backbone = VIT_B_32
    folder = ""

    def weight_files(self, card: ModelCard, subject: int, roi: str | None = None) -> list[str]:
        return [f"{self.folder}/encoding_models_weights/weights_subject-{subject_code(subject)}.npy"]

    def metadata_file(self, card: ModelCard, subject: int, roi: str | None = None) -> str:
        return f"{self.folder}/metadata/metadata_subject-{subject_code(subject)}.npy"


class FsaverageFamily(VitReadoutFamily):
    """NSD on the fsaverage surface: left hemisphere's vertices, then the right's."""

    name = "vit-fsaverage"
    dims = ("vertex",)
    coordinates = ("hemisphere", "vertex", "ncsnr")
    hemispheres = ("lh", "rh")
    returns_tuple = True
    folder = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32"

    def output_width(self, readout: Readout, resolved: Any, read: MetadataReader) -> Width:
        card = resolved.card
        per_hemi = int(card.vertices_per_hemisphere or 0)
        limit = int(card.fsaverage5_vertices or 0) if readout.downsample == "fsaverage5" else None

        def kept(idx: np.ndarray) -> int:
            return int(np.count_nonzero(idx < limit)) if limit is not None else int(idx.size)

        if resolved.roi is None:
            chosen = (resolved.lh_vertices, resolved.rh_vertices)
            return Width(sum(kept(np.arange(per_hemi) if c is None else np.asarray(c)) for c in chosen),
                         "model card")
        data = read(self.metadata_file(card, readout.subject))
        total = 0
        for hemi in self.hemispheres:
            idx = nested(data, "fmri", f"{hemi}_fsaverage_rois", resolved.roi)
            if idx is None:
                return Width(None, "needs metadata")
            total += kept(np.asarray(idx))
        return Width(total, "metadata")

    def split_output(self, responses: np.ndarray, coords: dict[str, np.ndarray]) -> Any:
        """BERG returns the hemispheres as two arrays of their own (it computes each
        separately): C-contiguous and writable, not two views of one buffer."""
        n_lh = int(np.count_nonzero(coords["hemisphere"] == self.hemispheres[0]))
        return np.ascontiguousarray(responses[:, :n_lh]), np.ascontiguousarray(responses[:, n_lh:])


class EegFamily(VitReadoutFamily):
    """THINGS EEG2: repetitions x channels x time points per image."""

    name = "vit-eeg"
    dims = ("repetition", "channel", "time")
    coordinates = ("repetition", "channel", "time")
    folder = "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
    # The repetition count lives only in the (large) weight file; the published models have 4.
    published_repetitions = 4

    def output_width(self, readout: Readout, resolved: Any, read: MetadataReader) -> Width:
        card = resolved.card
        data = read(self.metadata_file(card, readout.subject))
        names = nested(data, "eeg", "ch_names")
        times = nested(data, "eeg", "times")
        n_ch = len(names) if isinstance(names, list) else len(card.channels)
        n_t = int(np.asarray(times).shape[0]) if times is not None else int(card.n_timepoints or 0)
        if resolved.channels is not None:
            n_ch = len(resolved.channels)
        if resolved.timepoints is not None:
            n_t = int(np.asarray(resolved.timepoints).size)
        reps = self.published_repetitions
        source = f"metadata + {reps} repetitions" if data is not None else f"model card ({reps} repetitions)"
        return Width(reps * n_ch * n_t, source)


FWRF = FwrfFamily()
FSAVERAGE = FsaverageFamily()
EEG = EegFamily()

_FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (FWRF, FSAVERAGE, EEG)}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` answerable for every card that names it; re-registering replaces."""
    if not family.name:
        raise BergScaleError(f"{type(family).__name__} needs a name (the cards' `family:` value)")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise BergScaleError(
            f"no model family named {name!r} is registered (known: {', '.join(_FAMILIES)}); "
            "register its descriptor with berg_scale.models.families.register_family"
        ) from None


def family_for(model_id: str) -> ModelFamily:
    """The family of a model id, as its card names it."""
    card = get_card(model_id)
    if not card.family:
        raise BergScaleError(f"model card {model_id} names no family: add `family: NAME` to it")
    return get_family(card.family)


def family_name(model_id: object) -> str | None:
    """The family a model id belongs to, None for an id no card describes (e.g. read from a file)."""
    from berg_scale.models.registry import known_model_ids

    if not isinstance(model_id, str) or model_id not in known_model_ids():
        return None
    return get_card(model_id).family or None


def weight_files(model_id: str, subject: int, roi: str | None = None) -> list[str]:
    """Weight files of one readout, in load order (two for split fwRF ROIs)."""
    return family_for(model_id).weight_files(get_card(model_id), subject, roi)


def metadata_file(model_id: str, subject: int, roi: str | None = None) -> str:
    """The metadata file of one readout."""
    return family_for(model_id).metadata_file(get_card(model_id), subject, roi)


def backbones_of(model_ids: Iterable[str]) -> list[Backbone]:
    """The distinct backbones a set of models shares, in first-use order."""
    found: dict[str, Backbone] = {}
    for model_id in model_ids:
        backbone = family_for(model_id).backbone
        if backbone is not None:
            found.setdefault(backbone.file, backbone)
    return list(found.values())
