"""Decoding: every planted defect has its documented outcome; geometry is exact."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from exif_orientations import UPRIGHT

from berg_scale.errors import BergScaleError
from berg_scale.io.decode import (
    DecodeError,
    DecodeOptions,
    decode_and_prepare,
    decode_batch_cpu,
    probe,
)
from berg_scale.synthetic.shards import (
    DEFECT_KINDS,
    decompression_bomb_png,
    encode,
    synthetic_image,
)


def image_bytes(fmt: str, width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    return encode(synthetic_image(np.random.default_rng(seed), width, height), fmt)


def png_with_exif(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(pixels), "PNG", exif=exif)


pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("defect", sorted(k for k, v in DEFECT_KINDS.items() if v.has_image))
def test_every_planted_defect_has_its_documented_outcome(defect_shards, defect):
    (sample, info) = next(
        (s, info) for info in defect_shards for s in info.samples if s.defect == defect
    )
    data = info.members[f"{sample.key}.{sample.image_ext}"]
    if sample.decodes:
        out = decode_and_prepare(data, 24, "center")
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    else:
        with pytest.raises(DecodeError) as caught:
            decode_and_prepare(data, 24, "center")
        assert sample.error_contains in caught.value.reason
        assert len(caught.value.reason) < 200


def test_clean_samples_all_decode(defect_shards):
    for info in defect_shards:
        for sample in info.samples:
            if sample.defect is None:
                data = info.members[f"{sample.key}.{sample.image_ext}"]
                assert decode_and_prepare(data, 16).shape == (16, 16, 3)


@pytest.mark.timeout(10)
def test_decompression_bomb_is_refused_from_the_header():
    bomb = decompression_bomb_png()
    assert len(bomb) < 1_000_000  # a real bomb: tiny file, 144 Mpx
    header = probe(bomb, max_pixels=10**10)
    assert (header.width, header.height) == (12000, 12000)
    with pytest.raises(DecodeError, match="too large"):
        decode_and_prepare(bomb, 32)


def test_own_pixel_limit_applies_to_ordinary_images():
    data = image_bytes("png", 300, 200)
    with pytest.raises(DecodeError, match="max_pixels=50000"):
        decode_and_prepare(data, 32, max_pixels=50_000)
    assert decode_and_prepare(data, 32, max_pixels=60_000).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty image member"),
        (b"<html>not an image</html>" * 10, "not a recognised image"),
        (image_bytes("jpg", 200, 150)[:700], "truncated"),
        (image_bytes("png", 200, 150)[:300], "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
    ],
    ids=["zero-bytes", "html", "truncated-jpeg", "truncated-png", "bad-png-chunks"],
)
def test_broken_bytes_give_a_short_reason(data, reason):
    with pytest.raises(DecodeError) as caught:
        decode_and_prepare(data, 8)
    assert reason in caught.value.reason
    assert isinstance(caught.value, BergScaleError)


@pytest.mark.parametrize("width, height", [(1, 1), (3, 7), (37, 53), (1000, 3), (64, 48), (225, 224)])
@pytest.mark.parametrize("size", [1, 31, 224])
@pytest.mark.parametrize("crop", ["center", "none"])
def test_odd_sizes_become_exact_squares(width, height, size, crop):
    data = image_bytes("png", width, height, seed=width * 7 + height)
    out = decode_and_prepare(data, size, crop)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


def _bands() -> bytes:
    """300 x 100: a red, a green and a blue 100 x 100 band, left to right."""
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:200, 1] = 255
    pixels[:, 200:, 2] = 255
    return _save(Image.fromarray(pixels), "PNG")


def test_center_crop_keeps_the_middle_square():
    out = decode_and_prepare(_bands(), 50, "center")
    assert (out == [0, 255, 0]).all()


def test_crop_none_squashes_the_whole_image():
    out = decode_and_prepare(_bands(), 60, "none")
    assert (out[:, :15] == [255, 0, 0]).all()
    assert (out[:, 25:35] == [0, 255, 0]).all()
    assert (out[:, 45:] == [0, 0, 255]).all()


def test_same_size_square_is_passed_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = decode_and_prepare(_save(Image.fromarray(pixels), "PNG"), 16, "center")
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_becomes_equal_channels():
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    out = decode_and_prepare(_save(gray, "PNG"), 16)
    np.testing.assert_array_equal(out[..., 0], np.arange(256).reshape(16, 16))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_bilevel_image_becomes_black_and_white():
    bits = Image.fromarray(np.eye(8, dtype=bool)).convert("1")
    out = decode_and_prepare(_save(bits, "PNG"), 8)
    assert set(np.unique(out).tolist()) == {0, 255}
    assert (out[np.eye(8, dtype=bool)] == 255).all()


def test_sixteen_bit_values_are_scaled_not_clipped():
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    out = decode_and_prepare(_save(Image.fromarray(values), "PNG"), 4, "none")
    # 4 columns resized 4 -> 4 is a pass-through, so values are exact
    np.testing.assert_array_equal(out[0, :, 0], [0, 4, 128, 255])


def test_cmyk_is_converted_to_rgb():
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    out = decode_and_prepare(_save(cyan, "TIFF"), 8)
    assert (out == [0, 255, 255]).all()


def test_alpha_is_composited_on_white_by_default_or_dropped():
    transparent_red = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    half_blue = Image.new("RGBA", (8, 8), (0, 0, 255, 128))
    assert (decode_and_prepare(_save(transparent_red, "PNG"), 8) == 255).all()
    assert (decode_and_prepare(_save(transparent_red, "PNG"), 8, alpha="drop") == [255, 0, 0]).all()
    blended = decode_and_prepare(_save(half_blue, "PNG"), 8)
    assert np.allclose(blended[0, 0], [127, 127, 255], atol=1)


def test_palette_transparency_is_composited():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = _save(palette, "PNG", transparency=1)
    assert (decode_and_prepare(data, 8) == 255).all()
    assert (decode_and_prepare(data, 8, alpha="drop") == [255, 0, 0]).all()


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = decode_and_prepare(png_with_exif(stored, orientation), 8, "none")
    np.testing.assert_array_equal(out, UPRIGHT[orientation](stored))


def test_sideways_photo_is_upright_after_orientation_6():
    pixels = np.zeros((20, 10, 3), np.uint8)  # tall: top half white
    pixels[:10] = 255
    stored = np.ascontiguousarray(np.rot90(pixels, 1))  # wide, as a camera stores it
    out = decode_and_prepare(png_with_exif(stored, 6), 10, "none")
    assert out[:3].mean() > 200 and out[-3:].mean() < 50


def test_damaged_exif_does_not_cost_the_image():
    data = bytearray(image_bytes("jpg", 32, 32))
    # an APP1 "Exif" segment with garbage right after the SOI marker
    garbage = b"Exif\x00\x00" + b"\xff\x13\x00\x37" * 8
    segment = b"\xff\xe1" + (len(garbage) + 2).to_bytes(2, "big") + garbage
    broken = bytes(data[:2]) + segment + bytes(data[2:])
    assert decode_and_prepare(broken, 16).shape == (16, 16, 3)


def test_formats_are_detected_from_bytes_not_names():
    jpeg = image_bytes("jpg", 20, 20)
    assert probe(jpeg).format == "JPEG"
    assert decode_and_prepare(jpeg, 10).shape == (10, 10, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"size": 8, "crop": "left"}, {"size": 8, "alpha": "black"},
     {"size": 8, "resample": "nearest"}, {"size": 8, "max_pixels": 0}],
)
def test_invalid_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        DecodeOptions(**kwargs)


def test_jpeg_draft_mode_is_close_to_full_decode():
    data = image_bytes("jpg", 800, 600, seed=5)
    full = decode_and_prepare(data, 64).astype(int)
    draft = decode_and_prepare(data, 64, jpeg_draft=True).astype(int)
    assert draft.shape == full.shape
    assert np.abs(full - draft).mean() < 3


def test_decode_batch_cpu_reports_errors_per_item():
    items = [image_bytes("png", 30, 20), None, b"junk" * 20, image_bytes("webp", 20, 30)]
    result = decode_batch_cpu(items, 12)
    assert tuple(result.images.shape) == (4, 3, 12, 12)
    assert result.ok_indices == [0, 3]
    assert result.errors[1] == "no image data"
    assert "not a recognised image" in result.errors[2]
    assert result.decoded_on == ["cpu", None, None, "cpu"]
    assert int(result.images[1].sum()) == 0 and int(result.images[2].sum()) == 0
    expected = decode_and_prepare(items[3], 12)
    np.testing.assert_array_equal(result.images[3].permute(1, 2, 0).numpy(), expected)


def test_images_past_pillows_own_ceiling_are_refused_in_terms_of_max_pixels():
    import warnings

    from berg_scale.io.image_decode import DecodeError, probe
    from berg_scale.synthetic.shards import decompression_bomb_png

    huge = decompression_bomb_png(14000)  # 196 Mpx: past Pillow's 2 x MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError) as info:
        probe(huge, 64 * 2**20)
    assert info.value.reason == (
        "image too large (196000000 pixels > max_pixels=67108864; decompression bomb guard)"
    )
    with pytest.raises(DecodeError, match="raise PIL.Image.MAX_IMAGE_PIXELS"):
        probe(huge, 10**9)  # max_pixels allows it, Pillow does not: say which knob
    with warnings.catch_warnings(record=True) as seen:
        with pytest.raises(DecodeError, match="> max_pixels=67108864"):
            probe(decompression_bomb_png(10000), 64 * 2**20)  # between Pillow's two ceilings
    assert not [w for w in seen if "decompression bomb" in str(w.message)]  # not repeated on the console
