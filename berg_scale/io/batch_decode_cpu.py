"""Batch decoding on the CPU: a list of compressed images -> one uint8 (B, 3, S, S) batch.

Each image goes through `image_decode.decode_with` (Pillow), optionally fanned out over a
thread pool (Pillow releases the GIL while it decompresses). Failures never raise: they
become zero images with a short reason, so a chunk keeps one entry per tar sample and the
engine can write error rows in place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from berg_scale.io.image_decode import DecodeError, DecodeOptions, decode_with

if TYPE_CHECKING:
    import torch

NO_DATA = "no image data"


def as_options(options: DecodeOptions | int, crop: str | None = None) -> DecodeOptions:
    """A `DecodeOptions` from ready options or a bare output size (defaults otherwise)."""
    if isinstance(options, DecodeOptions):
        return options if crop is None or crop == options.crop else dataclasses.replace(options, crop=crop)
    return DecodeOptions(size=options, crop=crop or "center")


@dataclass
class BatchDecodeResult:
    """A batch of prepared images; failed items are zero images with an error message.

    `images` is (B, 3, size, size) uint8 on the requested device, the layout
    `ModelSet.forward` takes. `decoded_on` says which path produced each item
    ("gpu", "cpu" or None for failures), for throughput statistics.
    """

    images: "torch.Tensor"
    errors: list[str | None]
    decoded_on: list[str | None]

    @property
    def ok_indices(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if error is None]


def decode_many_cpu(
    items: Sequence[tuple[int, bytes | memoryview]],
    options: DecodeOptions,
    executor: Any | None = None,
) -> list[tuple[int, np.ndarray | None, str | None]]:
    """(index, bytes) pairs -> (index, (S, S, 3) array or None, error or None), in order.

    The bytes may be a view of a shared blob (a chunk read by a decode process); each is
    copied out only here, in the thread that decodes it."""

    def one(pair: tuple[int, bytes | memoryview]) -> tuple[int, np.ndarray | None, str | None]:
        index, data = pair
        try:
            return index, decode_with(bytes(data) if isinstance(data, memoryview) else data, options), None
        except DecodeError as exc:
            return index, None, exc.reason

    if executor is None:
        return [one(pair) for pair in items]
    return list(executor.map(one, items))


def decode_batch_cpu(
    items: Sequence[bytes | memoryview | None],
    options: DecodeOptions | int,
    crop: str | None = None,
    *,
    executor: Any | None = None,
) -> BatchDecodeResult:
    """Decode a batch with Pillow (optionally in a thread pool); `None` items are errors.

    `options` are the whole decode options (`DecodeOptions`); a bare size means the defaults.
    """
    import torch

    options = as_options(options, crop)
    size = options.size
    images = torch.zeros((len(items), 3, size, size), dtype=torch.uint8)
    errors: list[str | None] = [None] * len(items)
    decoded_on: list[str | None] = [None] * len(items)
    todo: list[tuple[int, bytes | memoryview]] = []
    for i, data in enumerate(items):
        if data is None:
            errors[i] = NO_DATA
        else:
            todo.append((i, data))
    for i, array, error in decode_many_cpu(todo, options, executor):
        if array is None:
            errors[i] = error
        else:
            images[i] = torch.from_numpy(array).permute(2, 0, 1)
            decoded_on[i] = "cpu"
    return BatchDecodeResult(images, errors, decoded_on)
