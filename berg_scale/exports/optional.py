"""Optional libraries, imported on first use with a message that says how to install them."""

from __future__ import annotations

import importlib
from typing import Any

from berg_scale.errors import BergScaleError

_EXTRA = {"mne": "neuro", "nilearn": "neuro", "xarray": "neuro", "pandas": "neuro"}


def require(module: str, purpose: str) -> Any:
    """Import `module` or raise a one-line error naming the package and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        extra = _EXTRA.get(package, "neuro")
        raise BergScaleError(
            f"{purpose} needs {package}, which is not installed: pip install 'berg-scale[{extra}]' "
            f"(or pip install {package})"
        ) from None
