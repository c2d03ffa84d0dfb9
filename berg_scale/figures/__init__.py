"""Figures a paper can use: fsaverage surface maps and EEG time courses with a topomap.

Matplotlib-based, written with the Agg backend; nilearn (surfaces) and mne (EEG) are
imported on first use (`pip install 'berg-scale[neuro]'`).
"""

from __future__ import annotations

from typing import Any

_FIGURES = {
    "surface_map": "berg_scale.figures.surface_figures",
    "save_figure": "berg_scale.figures.surface_figures",
    "time_courses": "berg_scale.figures.eeg_figures",
    "topomap": "berg_scale.figures.eeg_figures",
    "eeg_overview": "berg_scale.figures.eeg_figures",
    "channel_groups": "berg_scale.figures.eeg_figures",
}

__all__ = ["channel_groups", "eeg_overview", "save_figure", "surface_map", "time_courses", "topomap"]


def __getattr__(name: str) -> Any:
    if name in _FIGURES:
        import importlib

        return getattr(importlib.import_module(_FIGURES[name]), name)
    raise AttributeError(f"module 'berg_scale.figures' has no attribute {name!r}")
