"""What the engine needs of an encoder and of the factory that builds one, free of torch.

The engine only ever sees these two seams: a driver holds a picklable factory, each
worker builds its encoder from it once. `ModelSet` and `ModelSetFactory` are the real
pair; the fixed-cost stand-in in `berg_scale.engine.stand_in_model` is another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Column(Protocol):
    """One output column: per-image shape, dtype, axis names and coordinates."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def dims(self) -> tuple[str, ...]: ...
    @property
    def coords(self) -> dict[str, np.ndarray]: ...
    @property
    def kind(self) -> str: ...  # "responses" | "mean"
    @property
    def readout(self) -> Any: ...


class Encoder(Protocol):
    """Images in, one array per column out; identified by its weights."""

    @property
    def columns(self) -> Sequence[Column]: ...
    @property
    def weight_hashes(self) -> Mapping[str, str]: ...
    @property
    def fingerprint(self) -> str: ...

    def forward(self, images: Any) -> Mapping[str, np.ndarray]:
        """uint8 (B, 3, H, W) RGB images -> {column name: array with first axis B}."""
        ...


class EncoderFactory(Protocol):
    """A picklable factory a worker turns into an `Encoder` on its device."""

    @property
    def needs_weights(self) -> bool:
        """False for encoders that read no BERG files (preflight then skips the weights)."""
        ...

    def build(self, device: Any) -> Encoder: ...
