"""Where the decoders live, under one import for code that predates the split.

`image_decode` decodes one image (the documented rules: formats, orientation, colour,
alpha, size limit, geometry); `batch_decode_cpu` and `batch_decode_gpu` decode a chunk
of images into one uint8 batch on the CPU (Pillow, threads) or the GPU (nvJPEG).
"""

from berg_scale.io.batch_decode_cpu import (
    BatchDecodeResult,
    as_options,
    decode_batch_cpu,
    decode_many_cpu,
)
from berg_scale.io.batch_decode_gpu import (
    crop_square_tensor,
    decode_jpeg_batch_gpu,
    orient_tensor,
    resize_batch_tensor,
    resize_square_tensor,
)
from berg_scale.io.image_decode import (
    ALLOWED_FORMATS,
    ALPHA_MODES,
    CROPS,
    DEFAULT_MAX_PIXELS,
    RESAMPLE_FILTERS,
    DecodeError,
    DecodeOptions,
    ImageHeader,
    decode_and_prepare,
    decode_to_rgb,
    decode_with,
    prepare,
    probe,
    sniff_format,
    square_box,
)

__all__ = [
    "ALLOWED_FORMATS", "ALPHA_MODES", "CROPS", "DEFAULT_MAX_PIXELS", "RESAMPLE_FILTERS", "BatchDecodeResult",
    "DecodeError", "DecodeOptions", "ImageHeader", "as_options", "crop_square_tensor", "decode_and_prepare",
    "decode_batch_cpu", "decode_jpeg_batch_gpu", "decode_many_cpu", "decode_to_rgb", "decode_with",
    "orient_tensor", "prepare", "probe", "resize_batch_tensor", "resize_square_tensor", "sniff_format",
    "square_box",
]
