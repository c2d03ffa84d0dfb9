"""What a user asks for (`ReadoutSpec`) and its validation against the model card.

Validation happens here, before any file is read, so that a config with a typo fails in
milliseconds instead of after minutes of weight loading. No torch import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_scale.config import ReadoutConfig, default_of
from berg_scale.errors import BergScaleError
from berg_scale.models.registry import ModelCard, get_card

OUTPUT_KINDS = ("responses", "mean")
DTYPES = ("float32", "float16")
DOWNSAMPLES = (None, "fsaverage5")


class ReadoutError(BergScaleError, ValueError):
    """A readout request the model card rejects.

    `category` mirrors BERG's split between parameter errors ("parameter": subject,
    unknown selection keys, missing selection) and value errors ("validation": ROI,
    channels, binary vectors), so the compatibility facade can raise the same classes.
    """

    def __init__(self, message: str, category: str = "validation") -> None:
        super().__init__(message)
        self.category = category


@dataclass(frozen=True, eq=False)
class ReadoutSpec:
    """One encoding model read-out: a model id, a subject and an optional selection."""

    model_id: str
    subject: int
    selection: dict[str, Any] | None = None
    outputs: tuple[str, ...] = tuple(default_of(ReadoutConfig, "outputs"))
    dtype: str = default_of(ReadoutConfig, "dtype")
    ncsnr_threshold: float = default_of(ReadoutConfig, "ncsnr_threshold")
    downsample: str | None = default_of(ReadoutConfig, "downsample")

    def __post_init__(self) -> None:
        # Copy the selection so later changes to the caller's arrays/lists cannot
        # silently change a readout (and its column name) after it was created.
        if isinstance(self.selection, dict):
            frozen: dict[str, Any] = {}
            for key, value in self.selection.items():
                if isinstance(value, np.ndarray):
                    value = value.copy()
                    value.flags.writeable = False
                elif isinstance(value, list):
                    value = list(value)
                frozen[key] = value
            object.__setattr__(self, "selection", frozen)
        if isinstance(self.outputs, str):
            object.__setattr__(self, "outputs", (self.outputs,))
        else:
            object.__setattr__(self, "outputs", tuple(self.outputs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReadoutSpec) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        """Canonical JSON of every field (selections with arrays reduced to index lists)."""
        return json.dumps(
            {
                "model_id": self.model_id,
                "subject": self.subject,
                "selection": _jsonable_selection(self.selection),
                "outputs": list(self.outputs),
                "dtype": self.dtype,
                "ncsnr_threshold": float(self.ncsnr_threshold),
                "downsample": self.downsample,
            },
            sort_keys=True,
        )

    def resolve(self) -> "ResolvedSelection":
        """Validate against the model card; see `resolve_selection`."""
        return resolve_selection(self)

    @property
    def label(self) -> str:
        return self.resolve().label

    @property
    def column_base(self) -> str:
        """`<model_id>/sub-<SS>/<label>`, the name of the responses column."""
        return f"{self.model_id}/sub-{self.subject:02d}/{self.label}"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.key)


@dataclass(frozen=True)
class ResolvedSelection:
    """A validated selection in index form; arrays are None where everything is kept."""

    card: ModelCard
    label: str
    roi: str | None = None
    lh_vertices: np.ndarray | None = None
    rh_vertices: np.ndarray | None = None
    channels: tuple[str, ...] | None = None
    timepoints: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _jsonable_selection(selection: dict[str, Any] | None) -> Any:
    if not selection:
        return None
    out: dict[str, Any] = {}
    for key, value in selection.items():
        if key in ("lh_vertices", "rh_vertices", "timepoints"):
            try:
                arr = np.asarray(value)
                out[key] = {"ones": np.flatnonzero(arr == 1).tolist(), "n": int(arr.size)}
                continue
            except (TypeError, ValueError):
                pass
        out[key] = _jsonable(value)
    return out


def _short_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def binary_indices(value: Any, name: str, length: int) -> np.ndarray:
    """Indices of the ones in a 0/1 vector of exactly `length` elements (BERG's rule)."""
    if not isinstance(value, (list, np.ndarray)):
        raise ReadoutError(f"{name} must be a list or numpy array, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.size != length:
        raise ReadoutError(f"{name} must have exactly {length} elements, got {arr.size}")
    if arr.dtype == object or not np.all((arr == 0) | (arr == 1)):
        raise ReadoutError(f"{name} must be binary (contain only 0s and 1s)")
    idx = np.flatnonzero(arr == 1)
    if idx.size == 0:
        raise ReadoutError(f"At least one element in {name} must be selected (contain at least one 1)")
    return idx.astype(np.int64)


def _check_roi(card: ModelCard, roi: Any) -> str:
    if not isinstance(roi, str):
        raise ReadoutError(f"ROI parameter must be a string, got {type(roi).__name__}")
    canonical = card.canonical_roi(roi)
    if canonical is None:
        raise ReadoutError(
            f"Invalid ROI: {roi!r}. Valid ROIs are: {card.accepted_rois()}"
        )
    return canonical


def resolve_selection(spec: ReadoutSpec) -> ResolvedSelection:
    """Check subject, selection, outputs and options; return the selection as indices."""
    card = get_card(spec.model_id)
    if isinstance(spec.subject, bool) or not isinstance(spec.subject, (int, np.integer)) or int(
        spec.subject
    ) not in card.subjects:
        raise ReadoutError(
            f"Subject must be one of {list(card.subjects)}, got {spec.subject!r}", "parameter"
        )
    bad_outputs = [o for o in spec.outputs if o not in OUTPUT_KINDS]
    if bad_outputs or not spec.outputs:
        raise ReadoutError(f"outputs must be a non-empty subset of {OUTPUT_KINDS}, got {spec.outputs!r}")
    if "mean" in spec.outputs and card.modality.upper() == "EEG":
        raise ReadoutError(
            f"outputs 'mean' is the ROI mean over voxels/vertices with ncsnr and exists for fMRI "
            f"readouts only; use outputs=('responses',) for {card.model_id}"
        )
    if spec.dtype not in DTYPES:
        raise ReadoutError(f"dtype must be one of {DTYPES}, got {spec.dtype!r}")
    if spec.downsample not in DOWNSAMPLES:
        raise ReadoutError(f"downsample must be one of {DOWNSAMPLES}, got {spec.downsample!r}")
    if spec.downsample and card.fsaverage5_vertices is None:
        raise ReadoutError(f"downsample={spec.downsample!r} applies to fsaverage models only, not {card.model_id}")
    selection = spec.selection
    if selection is None:
        if card.selection_required:
            raise ReadoutError("Parameter 'selection' is required but was not provided", "parameter")
        selection = {}
    if not isinstance(selection, dict):
        raise ReadoutError(f"selection must be a dict, got {type(selection).__name__}", "parameter")
    for key in selection:
        if key not in card.selection_keys:
            raise ReadoutError(
                f"Invalid selection key: {key!r}. Valid keys are: {sorted(card.selection_keys)}",
                "parameter",
            )
    suffix = f"@{spec.downsample}" if spec.downsample else ""
    if "roi" in card.selection_keys and "lh_vertices" not in card.selection_keys:
        # Volume models: one ROI per readout, required.
        if "roi" not in selection:
            raise ReadoutError(f"{card.model_id} needs selection={{'roi': ...}}", "parameter")
        roi = _check_roi(card, selection["roi"])
        return ResolvedSelection(card, roi + suffix, roi=roi)
    if card.vertices_per_hemisphere:
        n = card.vertices_per_hemisphere
        lh = binary_indices(selection["lh_vertices"], "lh_vertices", n) if "lh_vertices" in selection else None
        rh = binary_indices(selection["rh_vertices"], "rh_vertices", n) if "rh_vertices" in selection else None
        if "roi" in selection:
            roi = _check_roi(card, selection["roi"])
            return ResolvedSelection(card, roi + suffix, roi=roi)
        if lh is None and rh is None:
            return ResolvedSelection(card, "all" + suffix)
        label = "sel-" + _short_hash(_jsonable_selection(selection))
        return ResolvedSelection(card, label + suffix, lh_vertices=lh, rh_vertices=rh)
    if card.channels:
        channels = None
        timepoints = None
        if "channels" in selection:
            value = selection["channels"]
            if not isinstance(value, list):
                raise ReadoutError(f"channels parameter must be a list, got {type(value).__name__}")
            unknown = [c for c in value if c not in card.channels]
            if unknown:
                raise ReadoutError(
                    f"Invalid channel(s): {unknown}. Valid channels are: {list(card.channels)}"
                )
            if not value:
                raise ReadoutError("channels must name at least one channel")
            channels = tuple(value)
        if "timepoints" in selection:
            timepoints = binary_indices(selection["timepoints"], "timepoints", int(card.n_timepoints or 0))
        if channels is None and timepoints is None:
            return ResolvedSelection(card, "all")
        label = "sel-" + _short_hash(_jsonable_selection(selection))
        return ResolvedSelection(card, label, channels=channels, timepoints=timepoints)
    if selection:
        label = "sel-" + _short_hash(_jsonable_selection(selection))
        return ResolvedSelection(card, label, extra=dict(selection))
    return ResolvedSelection(card, "all")
