"""BERG-compatible encoding models.

`ReadoutSpec`, `OutputColumn`, the registry and the model families import without torch;
`ModelSet` loads lazily (it needs torch).
"""

from __future__ import annotations

from berg_scale.models.columns import OutputColumn
from berg_scale.models.registry import ModelCard, get_card, known_model_ids, register_model
from berg_scale.models.spec import ReadoutError, ReadoutSpec

__all__ = [
    "ModelCard",
    "ModelSet",
    "OutputColumn",
    "ReadoutError",
    "ReadoutSpec",
    "get_card",
    "known_model_ids",
    "register_model",
]


def __getattr__(name: str):
    if name == "ModelSet":
        from berg_scale.models import modelset

        return getattr(modelset, name)
    raise AttributeError(f"module 'berg_scale.models' has no attribute {name!r}")
