"""Model ids, their cards, and where each model's implementation lives.

Kept free of torch so that configs, the CLI and planners can validate model requests
without paying for a torch import. Implementations are named by "module:attribute"
strings and imported only when a model is actually built.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, TypeVar

from berg_scale.errors import BergScaleError
from berg_scale.yaml_load import load_yaml


class UnknownModelError(BergScaleError, KeyError):
    """A model id that no card describes."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelCard:
    """What a model accepts and produces; drives validation before any file is read."""

    model_id: str
    modality: str
    dataset: str
    architecture: str
    implementation: str
    subjects: tuple[int, ...]
    selection_keys: tuple[str, ...]
    selection_required: bool = False
    description: str = ""
    rois: tuple[str, ...] = ()
    roi_aliases: dict[str, str] = field(default_factory=dict)
    split_rois: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    n_timepoints: int | None = None
    pca_components: int | None = None
    vertices_per_hemisphere: int | None = None
    fsaverage5_vertices: int | None = None
    preprocessing: str = ""
    input: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def canonical_roi(self, roi: str) -> str | None:
        """The ROI's name in the metadata files, or None if the card does not know it."""
        if roi in self.rois:
            return roi
        return self.roi_aliases.get(roi)

    def accepted_rois(self) -> list[str]:
        return [*self.rois, *(a for a in self.roi_aliases if a not in self.rois)]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "ModelCard":
        """Build a card from parsed YAML, naming the offending key on error."""
        known = {
            "model_id", "modality", "dataset", "architecture", "implementation", "subjects",
            "selection", "description", "rois", "roi_aliases", "split_rois", "channels",
            "n_timepoints", "pca_components", "vertices_per_hemisphere",
            "fsaverage5_vertices", "preprocessing", "input", "output", "family",
        }
        try:
            selection = data.get("selection") or {}
            return cls(
                model_id=str(data["model_id"]),
                modality=str(data["modality"]),
                dataset=str(data["dataset"]),
                architecture=str(data.get("architecture", "")),
                implementation=str(data["implementation"]),
                subjects=tuple(int(s) for s in data["subjects"]),
                selection_keys=tuple(selection.get("keys", ())),
                selection_required=bool(selection.get("required", False)),
                description=str(data.get("description", "")).strip(),
                rois=tuple(data.get("rois") or ()),
                roi_aliases=dict(data.get("roi_aliases") or {}),
                split_rois=tuple(data.get("split_rois") or ()),
                channels=tuple(data.get("channels") or ()),
                n_timepoints=data.get("n_timepoints"),
                pca_components=data.get("pca_components"),
                vertices_per_hemisphere=data.get("vertices_per_hemisphere"),
                fsaverage5_vertices=data.get("fsaverage5_vertices"),
                preprocessing=str(data.get("preprocessing", "")),
                input=str(data.get("input", "")),
                output=dict(data.get("output") or {}),
                family=str(data.get("family", "")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as exc:
            raise BergScaleError(f"model card is missing the key {exc.args[0]!r}") from None


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """A model card from a YAML file (a new model's card sits next to its module)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise BergScaleError(f"cannot read model card {path}: {exc.strerror or exc}") from None
    data = load_yaml(text, f"model card {path}")
    if not isinstance(data, dict):
        raise BergScaleError(f"model card {path} must be a mapping of keys")
    return ModelCard.from_mapping(data)


_CARDS: dict[str, ModelCard] = {}
_IMPLEMENTATIONS: dict[str, Any] = {}
_PLUGINS: list[Callable[[], None]] = []
_BUILTINS_LOADED = False


def _load_builtin_cards() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    folder = resources.files("berg_scale.models").joinpath("cards")
    # Registration order matches BERG's list_models().
    order = ["fmri-nsd-fwrf", "fmri-nsd_fsaverage-vit_b_32", "eeg-things_eeg_2-vit_b_32"]
    entries = sorted(
        (p for p in folder.iterdir() if p.name.endswith(".yaml")),
        key=lambda p: (order.index(p.name[:-5]) if p.name[:-5] in order else len(order), p.name),
    )
    for entry in entries:
        card = ModelCard.from_mapping(load_yaml(entry.read_text(encoding="utf-8"), entry.name))
        _CARDS.setdefault(card.model_id, card)


T = TypeVar("T")


def register_model(card: ModelCard | dict[str, Any]) -> Callable[[T], T]:
    """Class decorator: make `card.model_id` buildable by the given implementation.

    The implementation is an `EncodingModel` subclass (see `berg_scale.models.base`).
    Registering an id twice replaces the earlier entry, which lets tests override.
    """
    if isinstance(card, dict):
        card = ModelCard.from_mapping({"implementation": "<registered>", **card})

    def decorator(implementation: T) -> T:
        _load_builtin_cards()
        _CARDS[card.model_id] = card
        _IMPLEMENTATIONS[card.model_id] = implementation
        return implementation

    return decorator


def install_plugin(install: Callable[[], None]) -> None:
    """Run `install` (it registers a model, its family and recipes) here and in every worker.

    Registrations live in one process; the engine hands the installers of this process to
    each worker it starts (`installed_plugins`), so a model added at run time is known
    where it is built. The installer is pickled with the worker's factory: by reference for
    an installed package, by value where cloudpickle is told so.
    """
    install()
    if install not in _PLUGINS:
        _PLUGINS.append(install)


def installed_plugins() -> tuple[Callable[[], None], ...]:
    return tuple(_PLUGINS)


def uninstall_plugin(install: Callable[[], None]) -> None:
    if install in _PLUGINS:
        _PLUGINS.remove(install)


def unregister_model(model_id: str) -> None:
    """Remove a model registered at run time (builtin cards come back on next lookup)."""
    _CARDS.pop(model_id, None)
    _IMPLEMENTATIONS.pop(model_id, None)
    global _BUILTINS_LOADED
    _BUILTINS_LOADED = False


def known_model_ids() -> list[str]:
    """All model ids, builtin ones first in BERG's registration order."""
    _load_builtin_cards()
    return list(_CARDS)


def get_card(model_id: str) -> ModelCard:
    _load_builtin_cards()
    try:
        return _CARDS[model_id]
    except KeyError:
        raise UnknownModelError(
            f"unknown model id {model_id!r}; known models: {', '.join(_CARDS)}"
        ) from None


def get_implementation(model_id: str) -> Any:
    """The class that builds `model_id` (imports its module, which may import torch)."""
    card = get_card(model_id)
    if model_id in _IMPLEMENTATIONS:
        return _IMPLEMENTATIONS[model_id]
    module_name, _, attr = card.implementation.partition(":")
    implementation = getattr(importlib.import_module(module_name), attr)
    _IMPLEMENTATIONS[model_id] = implementation
    return implementation
