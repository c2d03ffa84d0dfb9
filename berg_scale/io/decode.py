"""Turn the compressed bytes of one stimulus into the square RGB uint8 array models see.

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
  Pillow's conversions; embedded ICC profiles are ignored. 16-bit images are scaled to
  8 bits (value * 255 / 65535, rounded), not clipped.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from berg_scale.errors import BergScaleError

if TYPE_CHECKING:
    import torch

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
    """A preprocessing recipe: images decoded once per recipe feed every model that shares it."""

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
        raise DecodeError(f"image too large (decompression bomb: {_short(exc)})") from None
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
        raise DecodeError(f"image too large (decompression bomb: {_short(exc)})") from None
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


def _cpu_decode_many(
    items: Sequence[tuple[int, bytes]],
    options: DecodeOptions,
    executor: Any | None,
) -> list[tuple[int, np.ndarray | None, str | None]]:
    def one(pair: tuple[int, bytes]) -> tuple[int, np.ndarray | None, str | None]:
        index, data = pair
        try:
            return index, decode_with(data, options), None
        except DecodeError as exc:
            return index, None, exc.reason

    if executor is None:
        return [one(pair) for pair in items]
    return list(executor.map(one, items))


def decode_batch_cpu(
    items: Sequence[bytes | None],
    size: int,
    crop: str = "center",
    *,
    executor: Any | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = "white",
    resample: str = "bilinear",
    jpeg_draft: bool = False,
) -> BatchDecodeResult:
    """Decode a batch on the CPU (optionally in a thread pool; Pillow releases the GIL)."""
    import torch

    options = DecodeOptions(size, crop, max_pixels, alpha, resample, jpeg_draft)
    images = torch.zeros((len(items), 3, size, size), dtype=torch.uint8)
    errors: list[str | None] = [None] * len(items)
    decoded_on: list[str | None] = [None] * len(items)
    todo = []
    for i, data in enumerate(items):
        if data is None:
            errors[i] = "no image data"
        else:
            todo.append((i, data))
    for i, array, error in _cpu_decode_many(todo, options, executor):
        if array is None:
            errors[i] = error
        else:
            images[i] = torch.from_numpy(array).permute(2, 0, 1)
            decoded_on[i] = "cpu"
    return BatchDecodeResult(images, errors, decoded_on)


# --- GPU JPEG path -----------------------------------------------------------------


def orient_tensor(image: "torch.Tensor", orientation: int) -> "torch.Tensor":
    """Apply an EXIF orientation to a (C, H, W) tensor, exactly as ImageOps.exif_transpose."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(-2, -1))
    return image


def resize_square_tensor(image: "torch.Tensor", size: int, crop: str) -> "torch.Tensor":
    """Crop/resize a (3, H, W) uint8 tensor on its own device: bilinear with antialias.

    Mirrors `prepare` (same box, same filter family) so GPU- and CPU-decoded images
    agree to about one grey level.
    """
    import torch
    import torch.nn.functional as F

    _, height, width = image.shape
    left, top, right, bottom = square_box(width, height, crop)
    region = image[:, top:bottom, left:right]
    if region.shape[1] == size and region.shape[2] == size:
        return region.contiguous()
    resized = F.interpolate(
        region.unsqueeze(0).to(torch.float32),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    return resized.round().clamp_(0, 255).to(torch.uint8)


def _gpu_eligible(header: ImageHeader) -> bool:
    return header.format in ("JPEG", "MPO") and header.mode in ("RGB", "L")


def _as_byte_tensor(data: bytes) -> "torch.Tensor":
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_on_device(
    candidates: list[tuple[int, bytes, ImageHeader]],
    device: "torch.device",
    jpeg_decoder: Callable[..., Any],
) -> dict[int, "torch.Tensor"]:
    """Batched decode first; if the batch call fails, decode one by one so that a single
    bad image costs only itself. Items that still fail are left for the CPU path."""
    import torch
    from torchvision.io import ImageReadMode

    def valid(tensor: Any, header: ImageHeader) -> bool:
        return (
            isinstance(tensor, torch.Tensor)
            and tuple(tensor.shape) == (3, header.height, header.width)
            and tensor.dtype == torch.uint8
        )

    if not candidates:
        return {}
    inputs = [_as_byte_tensor(data) for _, data, _ in candidates]
    decoded: dict[int, torch.Tensor] = {}
    try:
        outputs = jpeg_decoder(inputs, mode=ImageReadMode.RGB, device=device)
        if len(outputs) != len(candidates):
            raise RuntimeError("decoder returned a different number of images")
        for (index, _, header), tensor in zip(candidates, outputs):
            if valid(tensor, header):
                decoded[index] = tensor
        return decoded
    except Exception:
        decoded.clear()
    for (index, _, header), tensor_in in zip(candidates, inputs):
        try:
            tensor = jpeg_decoder(tensor_in, mode=ImageReadMode.RGB, device=device)
        except Exception:
            continue
        if valid(tensor, header):
            decoded[index] = tensor
    return decoded


def decode_jpeg_batch_gpu(
    items: Sequence[bytes | None],
    device: "torch.device | str",
    size: int,
    crop: str = "center",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = "white",
    resample: str = "bilinear",
    executor: Any | None = None,
    jpeg_decoder: Callable[..., Any] | None = None,
) -> BatchDecodeResult:
    """Decode baseline RGB/grayscale JPEGs with nvJPEG on the GPU, everything else on CPU.

    Each item goes through the header check first (pixel limit, format, mode). JPEGs
    that nvJPEG can handle are decoded on the device, EXIF-oriented and resized there;
    non-JPEG, CMYK, and anything the device decoder rejects take the CPU path, which
    also produces the error message for truly broken images. Without CUDA the whole
    batch takes the CPU path and, if a CUDA device was asked for, stays on the CPU. `jpeg_decoder` replaces `torchvision.io.decode_jpeg`
    (used by tests to exercise the fallback logic without a GPU).
    """
    import torch

    options = DecodeOptions(size, crop, max_pixels, alpha, resample, False)
    device = torch.device(device)
    if jpeg_decoder is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            result = decode_batch_cpu(
                items, size, crop, executor=executor, max_pixels=max_pixels,
                alpha=alpha, resample=resample,
            )
            if device.type != "cuda":
                result.images = result.images.to(device)
            return result
        from torchvision.io import decode_jpeg

        jpeg_decoder = decode_jpeg

    images = torch.zeros((len(items), 3, size, size), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(items)
    decoded_on: list[str | None] = [None] * len(items)
    candidates: list[tuple[int, bytes, ImageHeader]] = []
    for i, data in enumerate(items):
        if data is None:
            errors[i] = "no image data"
            continue
        try:
            header = probe(data, max_pixels)
        except DecodeError as exc:
            errors[i] = exc.reason
            continue
        if _gpu_eligible(header):
            candidates.append((i, data, header))

    on_device = _decode_on_device(candidates, device, jpeg_decoder)
    headers = {i: header for i, _, header in candidates}
    for i, tensor in on_device.items():
        upright = orient_tensor(tensor, headers[i].orientation)
        images[i] = resize_square_tensor(upright.to(device), size, crop)
        decoded_on[i] = "gpu"

    cpu_items = [
        (i, data)
        for i, data in enumerate(items)
        if data is not None and errors[i] is None and i not in on_device
    ]
    for i, array, error in _cpu_decode_many(cpu_items, options, executor):
        if array is None:
            errors[i] = error
        else:
            images[i] = torch.from_numpy(array).permute(2, 0, 1).to(device)
            decoded_on[i] = "cpu"
    return BatchDecodeResult(images, errors, decoded_on)
