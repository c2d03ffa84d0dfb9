"""Image preprocessing recipes, run once per batch and shared by every readout using them.

A recipe (named, e.g. `vit224`) turns the decoded uint8 pixels into a model's input; how
bytes become those pixels is the decode options' business (`io/image_decode.py`).

Each recipe reproduces BERG's inference-time pipeline for uint8 RGB input: resizing
goes through torchvision's tensor resize (float32 interpolation, antialias, rounding
half-to-even back to uint8), which is what BERG calls, so pixels match exactly on CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from berg_scale.errors import BergScaleError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_RESIZE = 256
VIT_CROP = 224
FWRF_SIZE = 227


class ImageInputError(BergScaleError, ValueError):
    """Images in a form the encoding models cannot take."""


def check_images(images: torch.Tensor) -> None:
    """Refuse input BERG would silently mis-scale (e.g. int64 arrays turn almost black)."""
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(
            f"images must be a torch.Tensor (or NumPy array) of dtype uint8, got {type(images).__name__}"
        )
    if images.ndim != 4:
        raise ImageInputError(
            f"images must be 4-D (batch, 3, height, width), got shape {tuple(images.shape)}; "
            "add a batch axis with images[None] for a single image"
        )
    if images.shape[1] != 3:
        raise ImageInputError(
            f"images must have 3 RGB channels on axis 1 (batch, 3, height, width), got shape "
            f"{tuple(images.shape)}; convert grayscale/RGBA to RGB and move channels first"
        )
    if images.dtype != torch.uint8:
        raise ImageInputError(
            f"images must be uint8 with values 0..255, got {images.dtype}; convert with "
            "np.clip(x, 0, 255).astype(np.uint8) (floats in 0..1: multiply by 255 first)"
        )
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ImageInputError(f"images have an empty spatial size {tuple(images.shape[2:])}")


_RESIZE_ON_CPU = contextvars.ContextVar("berg_scale_resize_on_cpu", default=False)


@contextlib.contextmanager
def resize_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Resample CUDA images on the CPU inside this block, as BERG does.

    CUDA's antialiased bilinear kernel sums in another order than the CPU's, and after
    rounding back to uint8 about 2 in 100,000 pixel values land one grey level away;
    through the fwRF model that moved responses by ~1e-4 of their range (measured on an
    H100). The exact (fp32) path therefore pays a round trip to the CPU for the resize.
    """
    token = _RESIZE_ON_CPU.set(enabled)
    try:
        yield
    finally:
        _RESIZE_ON_CPU.reset(token)


_PRESIZED: contextvars.ContextVar[dict[tuple[int, int], torch.Tensor] | None] = contextvars.ContextVar(
    "berg_scale_presized", default=None
)


@contextlib.contextmanager
def presized(resized: dict[tuple[int, int], torch.Tensor] | None) -> Iterator[None]:
    """Use these already resized copies of the batch (made by a decode process with
    `resize_uint8_cpu`, so exactly the pixels the CPU resize gives) instead of resizing."""
    token = _PRESIZED.set(resized or None)
    try:
        yield
    finally:
        _PRESIZED.reset(token)


def resize_uint8_cpu(images: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The exact resize, on the CPU: what BERG computes and what `resize_on_cpu` selects."""
    if list(images.shape[-2:]) == list(size):
        return images
    return TF.resize(images.cpu(), size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def resize_uint8(images: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bilinear antialiased resize of uint8 images, skipped when already at `size`."""
    if list(images.shape[-2:]) == list(size):
        return images
    ready = _PRESIZED.get()
    if ready is not None:
        copy = ready.get((int(size[0]), int(size[1])))
        if copy is not None and copy.shape[0] == images.shape[0]:
            return copy.to(images.device, non_blocking=True)
    if images.device.type != "cpu" and _RESIZE_ON_CPU.get():
        return resize_uint8_cpu(images, size).to(images.device, non_blocking=True)
    return TF.resize(images, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def vit_resized_size(height: int, width: int) -> list[int]:
    """Short side to 256, long side floor(256 * long / short), aspect kept."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(VIT_RESIZE * long / short)
    return [VIT_RESIZE, new_long] if height <= width else [new_long, VIT_RESIZE]


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ImageInputError(f"cannot crop {size} px from {height}x{width} images")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def vit224(images: torch.Tensor) -> torch.Tensor:
    """ImageNet ViT preset: resize, centre crop 224, /255, normalise (float32)."""
    resized = resize_uint8(images, vit_resized_size(*images.shape[-2:]))
    cropped = center_crop(resized, VIT_CROP)
    x = cropped.to(torch.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def fwrf227(images: torch.Tensor) -> torch.Tensor:
    """GNet input: resize to 227 x 227 (aspect not kept), /255 (float32)."""
    resized = resize_uint8(images, [FWRF_SIZE, FWRF_SIZE])
    return resized.to(torch.float32) / 255.0


RECIPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"vit224": vit224, "fwrf227": fwrf227}
# The size each recipe resamples (height, width) images to, so that a decode process can
# make that copy ahead of time; recipes missing here simply resize in the model.
RECIPE_RESIZE: dict[str, Callable[[int, int], list[int]]] = {
    "vit224": vit_resized_size,
    "fwrf227": lambda height, width: [FWRF_SIZE, FWRF_SIZE],
}


def recipe_resize_size(name: str, height: int, width: int) -> tuple[int, int] | None:
    """(height, width) recipe `name` resizes to from (height, width) input; None: no resize."""
    sizer = RECIPE_RESIZE.get(name)
    if sizer is None:
        return None
    size = tuple(int(v) for v in sizer(height, width))
    return None if size == (height, width) else (size[0], size[1])


def register_recipe(name: str, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Add a preprocessing recipe (uint8 (B,3,H,W) on the device -> model input)."""
    RECIPES[name] = function


def get_recipe(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return RECIPES[name]
    except KeyError:
        raise BergScaleError(f"unknown preprocessing recipe {name!r}; known: {sorted(RECIPES)}") from None
