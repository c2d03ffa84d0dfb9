"""berg-scale: BERG encoding models as a large-scale response generator, plus RNC."""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "BERG": ("berg_scale.compat", "BERG"),
    "ModelSet": ("berg_scale.models", "ModelSet"),
    "ReadoutSpec": ("berg_scale.models", "ReadoutSpec"),
    "open_responses": ("berg_scale.io.results", "open_responses"),
    "readout_array": ("berg_scale.io.results", "readout_array"),
    "StorageOptions": ("berg_scale.io.storage", "StorageOptions"),
    "load_config": ("berg_scale.config", "load_config"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # Lazy so that `import berg_scale` (and the CLI's --help) does not import torch or ray.
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'berg_scale' has no attribute {name!r}")
