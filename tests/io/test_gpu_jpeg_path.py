"""The GPU JPEG path's routing and fallbacks, exercised on CPU with stand-in decoders.

`decode_jpeg_batch_gpu` takes the decoder as a parameter; here torchvision's CPU
decoder (or a deliberately failing one) stands in for nvJPEG, so every branch of the
fallback logic runs without a GPU. The device-side math (orientation, crop, resize)
is the same torch code either way.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from exif_orientations import UPRIGHT

from berg_scale.io.decode import (
    decode_and_prepare,
    decode_jpeg_batch_gpu,
    orient_tensor,
    resize_square_tensor,
)
from berg_scale.synthetic.shards import decompression_bomb_png, encode, synthetic_image

pytestmark = pytest.mark.filterwarnings(
    "ignore::PIL.Image.DecompressionBombWarning", "ignore::UserWarning"
)


def _jpeg(width=48, height=40, seed=0, mode="RGB", exif_orientation=None) -> bytes:
    image = Image.fromarray(synthetic_image(np.random.default_rng(seed), width, height))
    image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs = {"quality": 92}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


class StandInDecoder:
    """torchvision's CPU JPEG decoder posing as the device decoder; records its calls."""

    def __init__(self, poison: set[bytes] = frozenset(), fail_batches: bool = False):
        self.poison = poison
        self.fail_batches = fail_batches
        self.batch_calls = 0
        self.single_calls = 0

    def __call__(self, data, mode, device):
        if isinstance(data, list):
            self.batch_calls += 1
            if self.fail_batches or any(bytes(t.numpy()) in self.poison for t in data):
                raise RuntimeError("nvjpeg: batch failed")
            return [decode_jpeg(t, mode=mode) for t in data]
        self.single_calls += 1
        if bytes(data.numpy()) in self.poison:
            raise RuntimeError("nvjpeg: unsupported image")
        return decode_jpeg(data, mode=mode)


def _as_hwc(result, i):
    return result.images[i].permute(1, 2, 0).cpu().numpy().astype(int)


def test_without_cuda_everything_takes_the_cpu_path():
    items = [_jpeg(seed=1), encode(synthetic_image(np.random.default_rng(2), 30, 20), "png")]
    result = decode_jpeg_batch_gpu(items, "cuda" if not torch.cuda.is_available() else "cpu", 16)
    assert result.decoded_on == ["cpu", "cpu"]
    for i, data in enumerate(items):
        np.testing.assert_array_equal(_as_hwc(result, i), decode_and_prepare(data, 16))


def test_routing_jpegs_to_the_device_and_the_rest_to_cpu():
    rgb, gray, rotated = _jpeg(seed=1), _jpeg(seed=2, mode="L"), _jpeg(64, 32, 3, exif_orientation=6)
    cmyk = _jpeg(seed=4, mode="CMYK")
    png = encode(synthetic_image(np.random.default_rng(5), 30, 20), "png")
    truncated = _jpeg(200, 150, seed=6)[:900]
    items = [rgb, gray, png, cmyk, truncated, b"junk" * 30, None, rotated, decompression_bomb_png()]
    decoder = StandInDecoder()
    result = decode_jpeg_batch_gpu(items, "cpu", 24, jpeg_decoder=decoder)

    assert result.decoded_on == ["gpu", "gpu", "cpu", "cpu", None, None, None, "gpu", None]
    assert "truncated" in result.errors[4]
    assert "not a recognised image" in result.errors[5]
    assert result.errors[6] == "no image data"
    assert "too large" in result.errors[8]
    assert result.ok_indices == [0, 1, 2, 3, 7]
    # the truncated JPEG broke the batch call, so the device decoder retried one by one
    assert decoder.batch_calls == 1 and decoder.single_calls == 4
    for i in result.ok_indices:
        diff = np.abs(_as_hwc(result, i) - decode_and_prepare(items[i], 24))
        assert diff.max() <= 2, (i, diff.max())
    for i in (4, 5, 6, 8):
        assert int(result.images[i].sum()) == 0


def test_headers_checked_where_the_tar_was_read_give_the_same_batch():
    """A decode process hands over views of one blob and the headers it checked: the
    device decoder sees the same bytes, and every row comes out as when checked here."""
    from berg_scale.io.batch_decode_gpu import check_header

    items = [_jpeg(seed=1), encode(synthetic_image(np.random.default_rng(5), 30, 20), "png"),
             _jpeg(200, 150, seed=6)[:900], b"junk" * 30, None, _jpeg(64, 32, 3, exif_orientation=6),
             decompression_bomb_png(), b""]
    blob = np.frombuffer(b"".join(item for item in items if item is not None), dtype=np.uint8)
    views, at = [], 0
    for item in items:
        views.append(None if item is None else memoryview(blob)[at : at + len(item)])
        at += len(item or b"")
    from berg_scale.io.image_decode import DecodeOptions

    limit = DecodeOptions(size=24).max_pixels
    headers = [None if item is None else check_header(item, limit) for item in items]
    here = decode_jpeg_batch_gpu(items, "cpu", 24, jpeg_decoder=StandInDecoder())
    there = decode_jpeg_batch_gpu(views, "cpu", 24, jpeg_decoder=StandInDecoder(), headers=headers)
    assert there.errors == here.errors and there.decoded_on == here.decoded_on
    torch.testing.assert_close(there.images, here.images, rtol=0, atol=0)
    assert here.decoded_on[:2] == ["gpu", "cpu"] and here.errors[3] is not None
    with pytest.raises(ValueError, match="2 headers for 8 images"):
        decode_jpeg_batch_gpu(views, "cpu", 24, jpeg_decoder=StandInDecoder(), headers=headers[:2])


def test_a_decoder_that_always_fails_costs_nothing_but_speed():
    items = [_jpeg(seed=s) for s in range(3)]
    decoder = StandInDecoder(fail_batches=True, poison=set(items))
    result = decode_jpeg_batch_gpu(items, "cpu", 20, jpeg_decoder=decoder)
    assert result.decoded_on == ["cpu"] * 3 and result.errors == [None] * 3
    for i, data in enumerate(items):
        np.testing.assert_array_equal(_as_hwc(result, i), decode_and_prepare(data, 20))


def test_one_poisoned_item_only_moves_itself_to_cpu():
    items = [_jpeg(seed=s) for s in range(4)]
    decoder = StandInDecoder(poison={items[2]})
    result = decode_jpeg_batch_gpu(items, "cpu", 20, jpeg_decoder=decoder)
    assert result.decoded_on == ["gpu", "gpu", "cpu", "gpu"]
    assert result.errors == [None] * 4


def test_wrong_shaped_device_output_is_not_trusted():
    items = [_jpeg(seed=1), _jpeg(seed=2)]

    def shrinking_decoder(data, mode, device):
        if isinstance(data, list):
            return [decode_jpeg(t, mode=mode)[:, :10, :10] for t in data]
        return decode_jpeg(data, mode=mode)[:, :10, :10]

    result = decode_jpeg_batch_gpu(items, "cpu", 16, jpeg_decoder=shrinking_decoder)
    assert result.decoded_on == ["cpu", "cpu"]


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_tensor_orientation_matches_exif_semantics(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = torch.from_numpy(stored).permute(2, 0, 1)
    out = orient_tensor(tensor, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, UPRIGHT[orientation](stored))


@pytest.mark.parametrize(
    "width, height, size", [(64, 48, 32), (100, 300, 227), (37, 53, 224), (640, 480, 224)]
)
@pytest.mark.parametrize("crop", ["center", "none"])
def test_tensor_resize_agrees_with_the_cpu_path(width, height, size, crop):
    pixels = synthetic_image(np.random.default_rng(width), width, height)
    cpu = decode_and_prepare(encode(pixels, "png"), size, crop).astype(int)
    tensor = resize_square_tensor(torch.from_numpy(pixels).permute(2, 0, 1), size, crop)
    assert tuple(tensor.shape) == (3, size, size) and tensor.dtype == torch.uint8
    diff = np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - cpu)
    assert diff.max() <= 1
    assert diff.mean() < 0.3
