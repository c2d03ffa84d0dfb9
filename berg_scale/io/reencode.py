"""Optional downscaling and JPEG re-encoding of stimulus files before they are packed.

Large photos cost shard bytes and decode time on every run although the models look at
224-256 px. Re-encoding decodes exactly as the engine does (EXIF orientation applied
first, alpha composited on white, 16-bit scaled to 8), so the stored image is the
upright picture the engine would have seen, only smaller; it is written without EXIF,
so no reader can rotate it a second time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from berg_scale.io.decode import DEFAULT_MAX_PIXELS, decode_to_rgb

DEFAULT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Reencoded:
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    resized: bool


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most `max_side` (aspect kept)."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def reencode_jpeg(
    data: bytes,
    *,
    max_side: int | None = None,
    quality: int = DEFAULT_JPEG_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Reencoded:
    """Decode (upright RGB), shrink to `max_side` if larger, encode as baseline JPEG.

    Raises `DecodeError` for files the engine could not decode either.
    """
    image = decode_to_rgb(data, max_pixels=max_pixels)
    original = image.size
    target = fitted_size(*original, max_side)
    if target != original:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return Reencoded(out.getvalue(), target[0], target[1], original[0], original[1], target != original)
