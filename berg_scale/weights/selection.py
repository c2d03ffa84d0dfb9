"""Which BERG files a set of readouts needs.

Only families that keep one checkpoint per ROI (fwRF) need the ROI to name their files;
the ViT models keep every ROI of a subject in one weight file, so a selection there never
changes what has to be fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from berg_scale.errors import BergScaleError
from berg_scale.models import families
from berg_scale.models.families import family_for
from berg_scale.models.registry import get_card

DEFAULT_BUCKET = "s3://brain-encoding-response-generator"
DEFAULT_REGION = "us-west-2"


@dataclass(frozen=True)
class WeightRequest:
    """The part of a readout that decides its files: model, subject and (fwRF) ROI."""

    model_id: str
    subject: int
    roi: str | None = None


def _as_request(item: Any) -> WeightRequest:
    if isinstance(item, WeightRequest):
        return item
    if isinstance(item, tuple):
        return WeightRequest(*item)
    if isinstance(item, dict):
        selection = item.get("selection") or {}
        roi = item.get("roi", selection.get("roi") if isinstance(selection, dict) else None)
        return WeightRequest(str(item["model_id"]), int(item["subject"]), roi)
    # A ReadoutSpec (duck-typed, so this module never needs the models package's extras).
    selection = getattr(item, "selection", None) or {}
    roi = selection.get("roi") if isinstance(selection, dict) else None
    return WeightRequest(item.model_id, int(item.subject), roi)


def _validated(request: WeightRequest) -> WeightRequest:
    card = get_card(request.model_id)
    if request.subject not in card.subjects:
        raise BergScaleError(
            f"{request.model_id} has no subject {request.subject}; "
            f"choose from {', '.join(str(s) for s in card.subjects)}"
        )
    if not family_for(request.model_id).files_per_roi:
        return WeightRequest(request.model_id, request.subject, None)
    if not request.roi:
        raise BergScaleError(
            f"{request.model_id} keeps one checkpoint per ROI: name the ROIs "
            f"(e.g. --rois V1 hV4); known: {', '.join(card.rois)}"
        )
    canonical = card.canonical_roi(request.roi)
    if canonical is None:
        raise BergScaleError(
            f"{request.model_id} has no ROI {request.roi!r}; known: {', '.join(card.rois)}"
        )
    return WeightRequest(request.model_id, request.subject, canonical)


def files_for_readouts(
    readouts: Iterable[Any], include_metadata: bool = True, include_weights: bool = True
) -> list[str]:
    """Relative paths (BERG layout) of every weight and metadata file, each listed once.

    `readouts` may hold `ReadoutSpec`s, `(model_id, subject, roi)` tuples or dicts with
    `model_id`, `subject` and `roi`/`selection`. Metadata is included by default because
    ROI selections, ncsnr thresholds and coordinates are read from it; metadata alone
    (`include_weights=False`) is enough for `berg-scale plan` to know exact widths.
    """
    files: dict[str, None] = {}
    for item in readouts:
        request = _validated(_as_request(item))
        if include_weights:
            for path in families.weight_files(request.model_id, request.subject, request.roi):
                files[path] = None
        if include_metadata:
            files[families.metadata_file(request.model_id, request.subject, request.roi)] = None
    if not files:
        raise BergScaleError("no readouts given: name at least one model and subject")
    return list(files)


def expand_requests(
    models: Iterable[str], subjects: Iterable[int] | None, rois: Iterable[str] | None
) -> list[WeightRequest]:
    """The cross product a command line asks for; `subjects=None` means all of a model's."""
    wanted_rois: list[str | None] = [*(rois or [])] or [None]
    requests: list[WeightRequest] = []
    for model_id in models:
        card = get_card(model_id)
        chosen = list(subjects) if subjects else list(card.subjects)
        for subject in chosen:
            if family_for(model_id).files_per_roi:
                requests.extend(WeightRequest(model_id, subject, roi) for roi in wanted_rois)
            else:
                requests.append(WeightRequest(model_id, subject, None))
    return requests
