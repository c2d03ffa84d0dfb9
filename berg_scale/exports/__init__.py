"""Hand-overs to the field's tools: MNE epochs, nilearn surface data, labelled xarray arrays.

Each target lives in its own module and imports its library only when called, so the
engine runs without them; `pip install 'berg-scale[neuro]'` installs mne, nilearn and xarray.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "to_mne": "berg_scale.exports.mne_export",
    "hemisphere_arrays": "berg_scale.exports.surface_export",
    "surface_arrays": "berg_scale.exports.surface_export",
    "to_surface_image": "berg_scale.exports.surface_export",
    "to_xarray": "berg_scale.exports.xarray_export",
}

__all__ = ["hemisphere_arrays", "surface_arrays", "to_mne", "to_surface_image", "to_xarray"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'berg_scale.exports' has no attribute {name!r}")
