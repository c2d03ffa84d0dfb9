"""Batch decoding on the GPU: baseline JPEGs through nvJPEG, everything else on the CPU.

One call decodes a whole chunk: headers are checked on the CPU first (pixel limit,
format, colour mode: nothing is decompressed before the limit is checked; plain JPEGs'
headers are read by `jpeg_header`, which answers as Pillow would at a fifth of the
cost, and anything else by Pillow), the eligible
JPEGs go to `torchvision.io.decode_jpeg` as one list (nvJPEG's batched decoder), and the
crops that share a shape are resized together in one `interpolate` call. torchvision
applies EXIF orientation only in its CPU decoder, so the orientation read from the
header is applied here on the device, exactly as `ImageOps.exif_transpose` does.
An image the device decoder rejects costs only itself: it takes the CPU path
(`batch_decode_cpu`), which also words the reason for truly broken images.

Pixels differ from Pillow's (nvJPEG has its own IDCT and chroma upsampling), so this path
is an option (`resources.decode: gpu`), never the exact default; the response drift it
causes is measured by `benchmarks/gpu_feed.py`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

from berg_scale.io.batch_decode_cpu import (
    NO_DATA,
    BatchDecodeResult,
    as_options,
    decode_batch_cpu,
    decode_many_cpu,
)
from berg_scale.io.image_decode import (
    DecodeError,
    DecodeOptions,
    ImageHeader,
    probe,
    square_box,
)
from berg_scale.io.jpeg_header import scan_jpeg_header

if TYPE_CHECKING:
    import torch


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


def crop_square_tensor(image: "torch.Tensor", crop: str) -> "torch.Tensor":
    """The same source box as the CPU path's `prepare` (centred square, or everything)."""
    _, height, width = image.shape
    left, top, right, bottom = square_box(width, height, crop)
    return image[:, top:bottom, left:right]


def resize_batch_tensor(regions: "torch.Tensor", size: int) -> "torch.Tensor":
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8: bilinear with antialias, rounded."""
    import torch
    import torch.nn.functional as F

    if regions.shape[-2] == size and regions.shape[-1] == size:
        return regions.contiguous()
    resized = F.interpolate(
        regions.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def resize_square_tensor(image: "torch.Tensor", size: int, crop: str) -> "torch.Tensor":
    """Crop/resize one (3, H, W) uint8 tensor on its own device (mirrors `prepare`, so GPU-
    and CPU-decoded images agree to about one grey level)."""
    return resize_batch_tensor(crop_square_tensor(image, crop).unsqueeze(0), size)[0]


def _gpu_eligible(header: ImageHeader) -> bool:
    return header.format in ("JPEG", "MPO") and header.mode in ("RGB", "L")


def _as_byte_tensor(data: bytes | memoryview) -> "torch.Tensor":
    """A 1-D uint8 CPU tensor of an image's bytes: a view of a shared blob, else a copy."""
    import torch

    if isinstance(data, memoryview):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only: the decoder only reads it
            return torch.frombuffer(data, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def check_header(data: bytes | memoryview, max_pixels: int) -> ImageHeader | str:
    """What this path checks before nvJPEG sees an image: its header, or why it fails.

    Also run where a shard is read (a decode process), so that the worker only decodes."""
    data = bytes(data) if isinstance(data, memoryview) else data
    try:
        return scan_jpeg_header(data, max_pixels) or probe(data, max_pixels)
    except DecodeError as exc:
        return exc.reason


def _decode_on_device(
    candidates: list[tuple[int, bytes | memoryview, ImageHeader]],
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


def _torchvision_decode_jpeg(inputs: Any, mode: Any, device: Any) -> Any:
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs as deprecated
        warnings.simplefilter("ignore")
        return decode_jpeg(inputs, mode=mode, device=device)


def _resize_into(
    images: "torch.Tensor", decoded: dict[int, "torch.Tensor"], headers: dict[int, ImageHeader],
    options: DecodeOptions,
) -> None:
    """Orient, crop and resize every device-decoded image; crops of one shape share a call."""
    import torch

    groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    for index, tensor in decoded.items():
        region = crop_square_tensor(orient_tensor(tensor, headers[index].orientation), options.crop)
        groups.setdefault((region.shape[1], region.shape[2]), []).append((index, region))
    for members in groups.values():
        indices = torch.tensor([index for index, _ in members], device=images.device)
        stacked = torch.stack([region.to(images.device) for _, region in members])
        images.index_copy_(0, indices, resize_batch_tensor(stacked, options.size))


def decode_jpeg_batch_gpu(
    items: Sequence[bytes | memoryview | None],
    device: "torch.device | str",
    options: DecodeOptions | int,
    crop: str | None = None,
    *,
    executor: Any | None = None,
    jpeg_decoder: Callable[..., Any] | None = None,
    headers: Sequence[ImageHeader | str | None] | None = None,
) -> BatchDecodeResult:
    """Decode baseline RGB/grayscale JPEGs with nvJPEG on `device`, everything else on CPU.

    Without CUDA the whole batch takes the CPU path and, if a CUDA device was asked for,
    stays on the CPU. `jpeg_decoder` replaces `torchvision.io.decode_jpeg` (tests use it
    to exercise the routing and fallbacks without a GPU). `options.jpeg_draft` only
    concerns the CPU path. `headers`, when given, are `check_header`'s answers for the
    items at `options.max_pixels`, checked where they were read.
    """
    import torch

    options = as_options(options, crop)
    if headers is not None and len(headers) != len(items):
        raise ValueError(f"{len(headers)} headers for {len(items)} images")
    device = torch.device(device)
    if jpeg_decoder is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            result = decode_batch_cpu(items, options, executor=executor)
            if device.type != "cuda":
                result.images = result.images.to(device)
            return result
        jpeg_decoder = _torchvision_decode_jpeg

    size = options.size
    images = torch.zeros((len(items), 3, size, size), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(items)
    decoded_on: list[str | None] = [None] * len(items)
    candidates: list[tuple[int, bytes | memoryview, ImageHeader]] = []
    for i, data in enumerate(items):
        if data is None:
            errors[i] = NO_DATA
            continue
        header = check_header(data, options.max_pixels) if headers is None else headers[i]
        if header is None:  # checked elsewhere, so an image it did not see has no data
            errors[i] = NO_DATA
            continue
        if isinstance(header, str):
            errors[i] = header
            continue
        if _gpu_eligible(header):
            candidates.append((i, data, header))

    on_device = _decode_on_device(candidates, device, jpeg_decoder)
    _resize_into(images, on_device, {i: header for i, _, header in candidates}, options)
    for i in on_device:
        decoded_on[i] = "gpu"

    cpu_items = [
        (i, data) for i, data in enumerate(items) if data is not None and errors[i] is None and i not in on_device
    ]
    for i, array, error in decode_many_cpu(cpu_items, options, executor):
        if array is None:
            errors[i] = error
        else:
            images[i] = torch.from_numpy(array).permute(2, 0, 1).to(device)
            decoded_on[i] = "cpu"
    return BatchDecodeResult(images, errors, decoded_on)
