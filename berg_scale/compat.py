"""A drop-in for BERG's Python API, backed by `ModelSet`.

Existing notebooks switch with one line: `from berg_scale import BERG`. Method names,
argument names, output shapes and exception class names follow BERG 2.0.0; the
deliberate differences (documented in docs/models.md) are stricter input checks,
stable output shapes where BERG squeezes axes, and bounded memory for large stimuli.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.models import families
from berg_scale.models.registry import ModelCard, UnknownModelError, get_card, known_model_ids
from berg_scale.models.spec import ReadoutError, ReadoutSpec

BATCH = 100  # BERG's batch size; also bounds the memory of preprocessing


class BERGError(BergScaleError):
    """Base of the facade's errors (BERG's class of the same name)."""


class ModelNotFoundError(BERGError):
    pass


class ModelLoadError(BERGError):
    pass


class InvalidParameterError(BERGError):
    pass


class StimulusError(BERGError):
    pass


class ResourceError(BERGError):
    pass


class ValidationError(BergScaleError, ValueError):
    """Invalid selection values (like BERG, not a subclass of BERGError)."""


_CONSTRUCTOR_KWARGS = {"subject"}


def _card(model_id: str) -> ModelCard:
    try:
        return get_card(model_id)
    except UnknownModelError:
        raise ModelNotFoundError(f"Model '{model_id}' not found in registry") from None


def _raise_readout_error(exc: ReadoutError) -> None:
    if exc.category == "parameter":
        raise InvalidParameterError(str(exc)) from None
    raise ValidationError(str(exc)) from None


class EncodingModel:
    """A loaded model as `BERG.get_encoding_model` returns it."""

    def __init__(self, berg: "BERG", spec: ReadoutSpec, device: str) -> None:
        from berg_scale.models.modelset import ModelSet

        self.berg = berg
        self.spec = spec
        self.model_id = spec.model_id
        self.subject = spec.subject
        self.selection = spec.selection
        try:
            self.modelset = ModelSet(
                berg.berg_dir, [spec], device=device, batch_size=BATCH,
                backbone_path=berg.backbone_path, storage=berg.storage,
            )
        except ReadoutError as exc:
            _raise_readout_error(exc)
        except BergScaleError as exc:
            raise ModelLoadError(f"Failed to load model: {exc}") from None
        self.device = str(self.modelset.device)
        self.column = self.modelset.columns[0]

    def get_model_id(self) -> str:
        return self.model_id

    def __repr__(self) -> str:
        return f"<EncodingModel {self.column.name} on {self.device}>"

    def __enter__(self) -> "EncodingModel":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Release device memory held by the model."""
        self.modelset.groups.clear()
        self.modelset.context.shared.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - cleanup must never fail
            pass

    def _check_stimulus(self, stimulus: Any) -> np.ndarray:
        if not isinstance(stimulus, np.ndarray) or stimulus.ndim != 4:
            raise StimulusError("Stimulus must be a 4D numpy array (batch, channels, height, width)")
        if stimulus.shape[1] != 3:
            raise StimulusError(
                f"Stimulus must have 3 RGB channels on axis 1, got shape {stimulus.shape}; "
                "move channels first (np.transpose(x, (0, 3, 1, 2))) and convert to RGB"
            )
        if stimulus.dtype != np.uint8:
            raise StimulusError(
                f"Stimulus must be uint8 with values 0..255, got {stimulus.dtype}; convert with "
                "np.clip(x, 0, 255).astype(np.uint8) (BERG would silently mis-scale it)"
            )
        return stimulus

    def generate_response(self, stimulus: np.ndarray, show_progress: bool = True) -> Any:
        """Responses in BERG's shapes, computed 100 images at a time."""
        import torch
        from tqdm.auto import tqdm

        stimulus = self._check_stimulus(stimulus)
        n = stimulus.shape[0]
        column = self.column
        out = np.empty((n, *column.shape), dtype=np.float32)
        starts = range(0, n, BATCH)
        if show_progress:
            starts = tqdm(starts, desc=f"Encoding {self.model_id}", unit="batch", file=sys.stderr)
        for start in starts:
            chunk = torch.from_numpy(np.ascontiguousarray(stimulus[start : start + BATCH]))
            result = self.modelset.forward_tensors(chunk)[column.name]
            out[start : start + chunk.shape[0]] = result.cpu().numpy()
        return families.family_for(self.model_id).split_output(out, column.coords)

    @classmethod
    def get_metadata(cls, berg_dir: str | None = None, subject: int | None = None,
                     model_instance: "EncodingModel | None" = None, **kwargs: Any) -> dict:
        if model_instance is not None:
            roi = (model_instance.selection or {}).get("roi")
            kw = {"roi": roi} if roi is not None else {}
            return model_instance.berg.get_model_metadata(model_instance.model_id, subject=model_instance.subject, **kw)
        raise InvalidParameterError("Required parameters missing: use get_metadata(model_instance=model)")

    def describe(self) -> dict:
        return self.berg.describe(self.model_id)


class BERG:
    """BERG-compatible entry point over a BERG root (local folder or s3:// URL)."""

    def __init__(self, berg_dir: str, backbone_path: str | None = None, storage: Any = None) -> None:
        self.berg_dir = str(berg_dir)
        self.backbone_path = backbone_path
        self.storage = storage

    def list_models(self) -> list[str]:
        return known_model_ids()

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]]:
        catalog: dict[str, list[str]] = {}
        for model_id in known_model_ids():
            card = get_card(model_id)
            catalog.setdefault(card.modality, [])
            if card.dataset not in catalog[card.modality]:
                catalog[card.modality].append(card.dataset)
        catalog = {k: sorted(v) for k, v in catalog.items()}
        if print_format:
            for modality in sorted(catalog, key=str.upper):
                print(modality.upper())
                for dataset in catalog[modality]:
                    print(f"  └── {dataset}")
        return catalog

    def get_encoding_model(self, model_id: str, device: str = "auto", selection: dict | None = None,
                           **kwargs: Any) -> EncodingModel:
        card = _card(model_id)
        unexpected = set(kwargs) - _CONSTRUCTOR_KWARGS
        if unexpected:
            raise TypeError(f"get_encoding_model() got unexpected keyword argument(s) {sorted(unexpected)}")
        if "subject" not in kwargs:
            raise TypeError("get_encoding_model() missing required keyword argument: 'subject'")
        spec = ReadoutSpec(model_id, kwargs["subject"], selection)
        try:
            spec.resolve()
        except ReadoutError as exc:
            _raise_readout_error(exc)
        del card
        return EncodingModel(self, spec, device)

    def encode(self, model: EncodingModel, stimulus: np.ndarray, return_metadata: bool = False,
               **kwargs: Any) -> Any:
        unexpected = set(kwargs) - {"show_progress"}
        if unexpected:
            raise TypeError(f"generate_response() got unexpected keyword argument(s) {sorted(unexpected)}")
        responses = model.generate_response(stimulus, **kwargs)
        if not return_metadata:
            return responses
        try:
            metadata = EncodingModel.get_metadata(model_instance=model)
        except BergScaleError as exc:
            print(f"Warning: Could not retrieve metadata ({exc}). Returning responses only.")
            return responses
        return responses, metadata

    def get_model_metadata(self, model_id: str, **kwargs: Any) -> dict:
        card = _card(model_id)
        try:
            subject = kwargs.get("subject")
            if subject is None:
                raise BergScaleError("Required parameters missing: subject")
            if isinstance(subject, bool) or subject not in card.subjects:
                raise BergScaleError(f"Subject must be one of {list(card.subjects)}, got {subject!r}")
            roi = kwargs.get("roi")
            if card.selection_required:
                if roi is None:
                    raise BergScaleError("Required parameters missing: roi")
                canonical = card.canonical_roi(roi) if isinstance(roi, str) else None
                if canonical is None:
                    raise BergScaleError(f"Invalid ROI: {roi!r}. Valid ROIs are: {card.accepted_rois()}")
                roi = canonical
            from berg_scale.models.store import WeightStore

            store = WeightStore(self.berg_dir, self.storage)
            rel = families.metadata_file(model_id, int(subject), roi if card.selection_required else None)
            data = store.load(rel, f"{model_id} subject {subject} metadata")
            if not isinstance(data, dict):
                raise BergScaleError(f"{store.url(rel)}: expected a metadata dict")
            return data
        except BergScaleError as exc:
            raise InvalidParameterError(
                f"Error retrieving metadata: {exc}\nCheck the model card of {model_id} "
                "(berg_scale/models/cards) for correct parameters."
            ) from None

    def describe(self, model_id: str) -> dict:
        card = _card(model_id)
        selection_help = {
            "subject": f"int, one of {list(card.subjects)}",
            "selection": f"dict with keys {list(card.selection_keys)}"
            + (" (required)" if card.selection_required else " (optional)"),
        }
        info = {
            "model_id": card.model_id,
            "model_info": {
                "modality": card.modality,
                "training_dataset": card.dataset,
                "model_architecture": card.architecture,
                "creator": "BERG (Brain Encoding Response Generator)",
            },
            "description": card.description,
            "input": {"description": card.input, "preprocessing": card.preprocessing},
            "output": card.output,
            "parameters": selection_help,
            "parameters_by_function": {
                "get_encoding_model": ["subject", "selection", "device"],
                "encode": ["stimulus", "return_metadata", "show_progress"],
            },
            "performance": {},
            "example_usage": (
                "from berg_scale import BERG\n"
                "berg = BERG('brain-encoding-response-generator')\n"
                f"model = berg.get_encoding_model('{card.model_id}', subject={card.subjects[0]}"
                + (", selection={'roi': 'V1'}" if card.selection_required else "")
                + ")\nresponses = berg.encode(model, images_uint8)"
            ),
        }
        print(f"Model: {card.model_id}\n  {card.modality} | {card.dataset}\n  {card.architecture}\n"
              f"  subjects: {list(card.subjects)}\n  selection keys: {list(card.selection_keys)}\n"
              f"  {card.description}")
        return info
