"""A drop-in for BERG's Python API, backed by `ModelSet`.

Existing notebooks switch with one line: `from berg_scale import BERG`. Method names,
argument names, output shapes, `describe()`'s nested dict and exception class names
follow BERG 2.0.0, and so does input handling where BERG computes correct numbers
(NumPy integer subjects, integer/float stimuli for fwRF, floats in [0, 1] for the ViT
models, any torch device string). The deliberate differences (documented in
docs/models.md) are refusals of input BERG would silently mis-scale, stable output
shapes where BERG squeezes axes, and bounded memory for large stimuli.
"""

from __future__ import annotations

import numbers
import sys
import warnings
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


def _plain_subject(subject: Any) -> Any:
    """NumPy integers (`np.int64(1)` from an array or a loop) as Python ints, like BERG.

    BERG tests membership by equality, so any integer type passes; booleans and
    floats are left alone and rejected by the subject check.
    """
    if isinstance(subject, (bool, np.bool_)):
        return subject
    if isinstance(subject, (numbers.Integral, np.integer)):
        return int(subject)
    return subject


def _check_device(device: Any) -> Any:
    """Any device string torch accepts ("cpu", "cuda:1", "mps", ...) or "auto".

    BERG hands the string to torch unchecked; here a string torch does not know is
    refused before any file is read, with the accepted forms named.
    """
    import torch

    if isinstance(device, torch.device) or device == "auto":
        return device
    if not isinstance(device, str):
        raise InvalidParameterError(
            f"device must be a string such as 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
        )
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise InvalidParameterError(
            f"device {device!r} is not a torch device ({detail}); use 'auto', 'cpu', 'cuda', "
            "'cuda:N', 'mps' or another name torch.device accepts"
        ) from None
    return device


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
        """The stimulus as uint8, or as float where BERG computes floats (see docs/models.md).

        fwRF divides any dtype by 255, so integer arrays with values 0..255 give BERG's
        uint8 numbers exactly (they are converted losslessly) and float arrays are taken
        on the 0..255 scale, resized without rounding as BERG does. BERG's ViT models
        divide an integer array by its dtype's maximum (int64 0..255 turns almost black)
        and take floats as already in [0, 1]: those are accepted in [0, 1] only.
        """
        if not isinstance(stimulus, np.ndarray) or stimulus.ndim != 4:
            raise StimulusError("Stimulus must be a 4D numpy array (batch, channels, height, width)")
        if stimulus.shape[1] != 3:
            raise StimulusError(
                f"Stimulus must have 3 RGB channels on axis 1, got shape {stimulus.shape}; "
                "move channels first (np.transpose(x, (0, 3, 1, 2))) and convert to RGB"
            )
        dtype = stimulus.dtype
        if dtype == np.uint8:
            return stimulus
        fwrf = self.recipe == "fwrf227"
        if np.issubdtype(dtype, np.integer):
            if not fwrf:
                raise StimulusError(
                    f"Stimulus must be uint8 for {self.model_id}, got {dtype}: BERG's ViT "
                    f"preprocessing divides {dtype} by {np.iinfo(dtype).max}, which turns 0..255 "
                    "images almost black; convert with np.clip(x, 0, 255).astype(np.uint8)"
                )
            lowest, highest = (int(stimulus.min()), int(stimulus.max())) if stimulus.size else (0, 0)
            if lowest < 0 or highest > 255:
                raise StimulusError(
                    f"Stimulus values must be 0..255, got {lowest}..{highest} ({dtype}); convert with "
                    "np.clip(x, 0, 255).astype(np.uint8)"
                )
            return stimulus.astype(np.uint8)
        if not np.issubdtype(dtype, np.floating) or dtype == np.float16:
            raise StimulusError(
                f"Stimulus must be uint8 (or an integer or float32/float64 array), got {dtype}; "
                "convert with np.clip(x, 0, 255).astype(np.uint8)"
            )
        if stimulus.size and not np.isfinite(stimulus).all():
            raise StimulusError("Stimulus contains NaN or infinite values")
        low, high = (float(stimulus.min()), float(stimulus.max())) if stimulus.size else (0.0, 0.0)
        top = 255.0 if fwrf else 1.0
        if low < 0 or high > top:
            scale = "0..255 (fwRF divides by 255)" if fwrf else "0..1 (BERG's ViT models take floats as scaled)"
            raise StimulusError(
                f"float stimulus values must lie in {scale}, got {low:g}..{high:g}; "
                "or pass uint8: np.clip(x, 0, 255).astype(np.uint8)"
            )
        if fwrf and 0 < high <= 1.0:
            warnings.warn(
                f"{self.model_id} takes float stimuli on the 0..255 scale (as BERG does) but these "
                "lie in 0..1 and will look almost black; multiply by 255", UserWarning, stacklevel=4,
            )
        return stimulus

    @property
    def recipe(self) -> str:
        return self.modelset.groups[0].recipe

    def _forward_chunk(self, chunk: np.ndarray) -> Any:
        """One batch of at most 100 images -> the column's responses (a torch tensor)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(chunk))
        if chunk.dtype == np.uint8:
            return self.modelset.forward_tensors(tensor)[self.column.name]
        pixels = _float_pixels(tensor, self.recipe).to(self.modelset.device)
        with torch.no_grad():
            results: dict[str, Any] = {}
            for group in self.modelset.groups:
                results.update(group.forward(pixels))
        return results[self.column.name].to(torch.float32)

    def generate_response(self, stimulus: np.ndarray, show_progress: bool = True) -> Any:
        """Responses in BERG's shapes, computed 100 images at a time."""
        from tqdm.auto import tqdm

        stimulus = self._check_stimulus(stimulus)
        n = stimulus.shape[0]
        column = self.column
        out = np.empty((n, *column.shape), dtype=np.float32)
        starts = range(0, n, BATCH)
        if show_progress:
            starts = tqdm(starts, desc=f"Encoding {self.model_id}", unit="batch", file=sys.stderr)
        for start in starts:
            chunk = stimulus[start : start + BATCH]
            out[start : start + chunk.shape[0]] = self._forward_chunk(chunk).cpu().numpy()
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


def _float_pixels(images: Any, recipe: str) -> Any:
    """BERG's preprocessing of float stimuli: resize in the input's float dtype, no rounding.

    fwRF: 227 x 227, then float32 / 255. ViT: short side 256, centre crop 224, float32
    (no scaling: floats are taken as in [0, 1]), ImageNet normalisation. Runs on the CPU,
    as BERG's does.
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from berg_scale.models import preprocess as pp

    def resize(x: Any, size: list[int]) -> Any:
        if list(x.shape[-2:]) == list(size):
            return x
        return TF.resize(x, size, interpolation=InterpolationMode.BILINEAR, antialias=True)

    if recipe == "fwrf227":
        return resize(images, [pp.FWRF_SIZE, pp.FWRF_SIZE]).to(torch.float32) / 255.0
    if recipe == "vit224":
        x = pp.center_crop(resize(images, pp.vit_resized_size(*images.shape[-2:])), pp.VIT_CROP)
        x = x.to(torch.float32)
        mean = torch.tensor(pp.IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pp.IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std
    raise StimulusError(f"float stimuli are not supported by preprocessing {recipe!r}; pass uint8 images")


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
        device = _check_device(device)
        spec = ReadoutSpec(model_id, _plain_subject(kwargs["subject"]), selection)
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
            subject = _plain_subject(kwargs.get("subject"))
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
        """Print a summary and return BERG's nested description dict (see compat_describe)."""
        from berg_scale.compat_describe import describe_card, format_description

        info = describe_card(_card(model_id))
        print(format_description(info))
        return info
