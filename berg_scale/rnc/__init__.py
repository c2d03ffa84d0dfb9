"""Relational Neural Control over generated responses (univariate and multivariate).

Public entry points: `run_study(config)` runs a study described by a `StudyConfig`
(see `berg_scale.rnc.config`), `run_demo_rnc(...)` a quick one on a demo output.
Heavy modules (torch, matplotlib) load only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_study", "run_demo_rnc", "load_config", "StudyConfig"]


def __getattr__(name: str) -> Any:
    if name in ("run_study", "run_demo_rnc"):
        from berg_scale.rnc import study

        return getattr(study, name)
    if name in ("load_config", "StudyConfig"):
        from berg_scale.rnc import config

        return getattr(config, name)
    raise AttributeError(name)
