"""Single-image decoding: the compressed bytes of one stimulus -> the square RGB uint8 array.

Batches of images go through `batch_decode_cpu` (Pillow, this module, in threads) or
`batch_decode_gpu` (nvJPEG); both apply the rules below image by image.

Images in a screening set come from everywhere (cameras, scrapers, generators), so the
bytes are untrusted: every failure becomes a `DecodeError` with a short reason that the
engine stores as an error row, and nothing a file claims (its size, its mode) is
believed before it has been checked against a limit.

Documented behaviour (the same on every code path):

* **Formats**: JPEG (and MPO, the multi-picture JPEG cameras write), PNG, WebP, BMP,
  TIFF and GIF, identified from the bytes, never from the file name. Multi-frame files
  use their first frame.
* **Orientation**: the EXIF orientation tag is applied, so the array is upright the way
  an image viewer shows it. A damaged EXIF block is ignored rather than failing the image.
* **Colour**: grayscale, bilevel, palette, CMYK and YCbCr images are converted to RGB with
  Pillow's conversions; embedded ICC profiles are ignored. 16-bit grayscale images are
  scaled to 8 bits (value * 255 / 65535, rounded), not clipped. 16-bit colour PNGs
  (RGB, RGBA) arrive from Pillow already reduced to 8 bits per channel by keeping the
  high byte (value >> 8, at most one level below the rounded scale), as in any
  Pillow-based pipeline.
* **Alpha**: composited over white by default (`alpha="white"`), which is what a person
  sees in a viewer and keeps transparent regions from turning into arbitrary colours;
  `alpha="drop"` discards the channel instead, matching `Image.convert("RGB")`.
* **Size limit**: images with more than `max_pixels` pixels (default 64 Mpx) are refused
  from the header alone, before any pixel is decompressed, so a decompression bomb costs
  microseconds instead of gigabytes. Pillow's own ceiling (2 x `Image.MAX_IMAGE_PIXELS`)
  also applies; raise it if you raise `max_pixels` beyond it.
* **Geometry**: `crop="center"` cuts the largest centred square (offset floor((W-S)/2)),
  `crop="none"` keeps the whole image and squashes it to a square. Then the square is
  resized to `size` x `size` with Pillow's **bilinear** filter, which Pillow applies with
  antialiasing when shrinking. Bilinear is chosen because it is what BERG's model
  preprocessing (torchvision bilinear + antialias) and the NSD training images (PIL
  bilinear) use, so a second resize inside a model changes the image as little as
  possible, and the GPU path (torch bilinear + antialias) agrees closely with this one.
  `resample="bicubic"` or `"lanczos"` are available for other models.
* `jpeg_draft=True` lets libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale when the target is
  that much smaller (much faster for photos, slightly different pixels); off by default.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from berg_scale.errors import BergScaleError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
CROPS = ("center", "none")
ALPHA_MODES = ("white", "drop")
RESAMPLE_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_MAX_REASON_CHARS = 160
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")

# `max_pixels` is the guard that counts (checked on the header, before decoding); Pillow's
# own warning for images between its two ceilings would only repeat it on the console.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class DecodeError(BergScaleError):
    """One image could not be turned into pixels; `reason` is short enough for an error row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image says, read without decoding any pixel data."""

    format: str
    mode: str
    width: int
    height: int
    orientation: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodeOptions:
    """How image bytes become uint8 pixels: size, crop, alpha, resampling and limits.

    Decoded once per image and fed to every model of the run. These are decode options,
    not a preprocessing recipe: a model's recipe (`models/preprocess.py`) starts from the
    pixels decoded here.
    """

    size: int
    crop: str = "center"
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: str = "white"
    resample: str = "bilinear"
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(
                f"resample must be one of {tuple(RESAMPLE_FILTERS)}, got {self.resample!r}"
            )
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels!r}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:_MAX_REASON_CHARS]


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """The format the first bytes claim, to tell a damaged image from a non-image."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


@functools.lru_cache(maxsize=1)
def _open_formats() -> list[str]:
    """The allowed formats whose Pillow plugins are present (all plugins load once)."""
    Image.init()
    return [name for name in ALLOWED_FORMATS if name in Image.OPEN]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and enforce the pixel limit before any decompression."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty image member (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_reason(exc, max_pixels)) from None
    except Image.UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed:
            raise DecodeError(f"corrupt {claimed} header") from None
        raise DecodeError(
            "not a recognised image (expected JPEG, PNG, WebP, BMP, TIFF or GIF bytes)"
        ) from None
    except Exception as exc:  # Pillow plugins raise many types on hostile headers
        if isinstance(exc, (OSError, EOFError)) and "truncat" in str(exc).lower():
            raise DecodeError("truncated image data (incomplete header)") from None
        raise DecodeError(f"corrupt image header ({_short(exc)})") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise DecodeError(  # stable text before "(", so error reasons group well
            f"image too large ({width} x {height} = {width * height} pixels > "
            f"max_pixels={max_pixels}; decompression bomb guard)"
        )
    return img


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block must not cost the image
        return 1
    return value if 1 <= value <= 8 else 1


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    """Pillow's refusal in the words of `max_pixels`, which is what a user can change."""
    found = _PILLOW_PIXELS.search(str(exc))
    if found is None:
        return f"image too large (decompression bomb guard: {_short(exc)})"
    pixels, pillow_limit = int(found.group(1)), int(found.group(2))
    if pixels > max_pixels:
        return f"image too large ({pixels} pixels > max_pixels={max_pixels}; decompression bomb guard)"
    return (
        f"image too large ({pixels} pixels > Pillow's limit of {pillow_limit}; raise "
        "PIL.Image.MAX_IMAGE_PIXELS to allow images this large)"
    )


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read format, mode, size and EXIF orientation from the header; raises DecodeError."""
    img = _open(data, max_pixels)
    return ImageHeader(
        format=str(img.format),
        mode=img.mode,
        width=img.size[0],
        height=img.size[1],
        orientation=_orientation(img),
    )


def _scale16_to_8(values: np.ndarray) -> np.ndarray:
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def _composite(img: Image.Image, alpha: str) -> Image.Image:
    rgba = img.convert("RGBA")
    if alpha == "drop":
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image, alpha: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        return _gray_array_to_rgb(_scale16_to_8(np.asarray(img)))
    if mode == "I":
        values = np.asarray(img)
        # 16-bit PNG/TIFF grayscale may surface as 32-bit "I"; anything above 8 bits is 16-bit.
        if values.size and int(values.max()) > 255:
            return _gray_array_to_rgb(_scale16_to_8(values))
        return _gray_array_to_rgb(np.clip(values, 0, 255).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(img), nan=0.0, posinf=255.0, neginf=0.0)
        return _gray_array_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite(img, alpha)
    if mode == "P" and "transparency" in img.info:
        return _composite(img, alpha)
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def decode_to_rgb(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = "white",
    draft_size: int | None = None,
) -> Image.Image:
    """Decode to an upright RGB Pillow image at full resolution (or a JPEG draft scale)."""
    img = _open(data, max_pixels)
    try:
        if draft_size and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except DecodeError:
        raise
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise DecodeError("truncated image data") from None
        raise DecodeError(f"corrupt image data ({_short(exc)})") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_reason(exc, max_pixels)) from None
    except MemoryError:
        raise DecodeError(
            "out of memory while decoding (lower max_pixels or give workers more memory)"
        ) from None
    except Exception as exc:  # hostile data reaches many code paths inside Pillow
        raise DecodeError(f"corrupt image data ({_short(exc)})") from None
    try:
        orientation = _orientation(img)
        if orientation != 1:
            img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img, alpha)
    except Exception as exc:
        raise DecodeError(f"unsupported image mode {img.mode!r} ({_short(exc)})") from None


def square_box(width: int, height: int, crop: str) -> tuple[int, int, int, int]:
    """The source box that becomes the square output: the centred square, or everything."""
    if crop == "none":
        return (0, 0, width, height)
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def prepare(img: Image.Image, size: int, crop: str, resample: str = "bilinear") -> np.ndarray:
    """Crop to a square, then resize it; returns (size, size, 3) uint8.

    The crop is cut out first (rather than passed as a resize box) so that pixels
    outside the square never bleed into its edges; the GPU path does the same.
    """
    box = square_box(img.size[0], img.size[1], crop)
    square = img if box == (0, 0, img.size[0], img.size[1]) else img.crop(box)
    if square.size == (size, size):
        out = square
    else:
        out = square.resize((size, size), RESAMPLE_FILTERS[resample])
    array = np.array(out, dtype=np.uint8)  # writable, so torch.from_numpy may share it
    if array.shape != (size, size, 3):  # defensive: every path above yields RGB
        raise DecodeError(f"internal: prepared image has shape {array.shape}")
    return array


def decode_and_prepare(
    data: bytes,
    size: int,
    crop: str = "center",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = "white",
    resample: str = "bilinear",
    jpeg_draft: bool = False,
) -> np.ndarray:
    """Compressed bytes -> (size, size, 3) uint8 RGB; raises DecodeError with a short reason."""
    options = DecodeOptions(
        size=size,
        crop=crop,
        max_pixels=max_pixels,
        alpha=alpha,
        resample=resample,
        jpeg_draft=jpeg_draft,
    )
    return decode_with(data, options)


def decode_with(data: bytes, options: DecodeOptions) -> np.ndarray:
    """`decode_and_prepare` for a ready `DecodeOptions` (no re-validation per image)."""
    img = decode_to_rgb(
        data,
        max_pixels=options.max_pixels,
        alpha=options.alpha,
        draft_size=options.size if options.jpeg_draft else None,
    )
    try:
        return prepare(img, options.size, options.crop, options.resample)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"resize failed ({_short(exc)})") from None
