"""Checked access to values inside loaded weight/metadata dicts.

Weight files are untrusted: a missing key or a wrong shape must name the file, the key
and what was expected, instead of failing later inside a matrix product.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from berg_scale.errors import BergScaleError


class WeightFormatError(BergScaleError, ValueError):
    """A weight or metadata file does not have BERG's layout."""


def get_key(data: Any, keys: tuple[Any, ...], source: str) -> Any:
    value = data
    walked: list[str] = []
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            where = "/".join(walked) or "top level"
            have = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise WeightFormatError(
                f"{source}: missing key {key!r} under {where} (found: {have}); the file is not a "
                "BERG file of this model or is damaged"
            )
        value = value[key]
        walked.append(str(key))
    return value


def get_array(
    data: Any,
    keys: tuple[Any, ...],
    source: str,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    kind: str = "f",
    finite: bool = True,
) -> np.ndarray:
    """A numeric array at `keys`, checked for dimensionality, shape and dtype kind."""
    value = get_key(data, keys, source)
    name = "/".join(map(str, keys))
    if not isinstance(value, np.ndarray):
        raise WeightFormatError(f"{source}: {name} must be a NumPy array, found {type(value).__name__}")
    if value.dtype.kind not in kind:
        raise WeightFormatError(f"{source}: {name} has dtype {value.dtype}, expected kind {kind!r}")
    if ndim is not None and value.ndim != ndim:
        raise WeightFormatError(f"{source}: {name} must be {ndim}-D, found shape {value.shape}")
    if shape is not None:
        if len(shape) != value.ndim or any(e is not None and e != a for e, a in zip(shape, value.shape)):
            want = tuple("*" if e is None else e for e in shape)
            raise WeightFormatError(f"{source}: {name} has shape {value.shape}, expected {want}")
    if finite and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise WeightFormatError(f"{source}: {name} contains NaN or infinite values")
    return value


def require_finite_state(module: torch.nn.Module, source: str, what: str) -> None:
    """Refuse NaN or infinite values anywhere in a module's state: parameters and buffers.

    Buffers count too: a NaN BatchNorm running mean gives all-NaN responses that would
    otherwise be written as ordinary rows.
    """
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightFormatError(f"{source}: {what} {name} contains NaN or infinite values")
