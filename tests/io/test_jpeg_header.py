"""The fast JPEG header read agrees with Pillow's probe, or steps aside."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS, DecodeError, probe
from berg_scale.io.jpeg_header import scan_jpeg_header


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (50, 37), seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, "JPEG", **save)
    return out.getvalue()


def _exif(orientation: object, order: str = "<", kind: int = 3, count: int = 1, extra: bytes = b"") -> bytes:
    """A hand-built EXIF block: IFD0 holding the orientation entry (and `extra` entries)."""
    entries = extra
    if orientation is not None:
        value = struct.pack(order + ("H2x" if kind == 3 else "L"), orientation)
        entries = struct.pack(order + "HHL", 0x0112, kind, count) + value + extra
    n = len(entries) // 12
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "L", 8)
    return b"Exif\0\0" + head + struct.pack(order + "H", n) + entries + struct.pack(order + "L", 0)


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert one marker segment right after SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def _pillow_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "a camera maker whose name is longer than four bytes"
    return exif.tobytes()


PLAIN = {
    "rgb": _jpeg(),
    "gray": _jpeg("L"),
    "cmyk": _jpeg("CMYK"),
    "progressive": _jpeg(progressive=True),
    "optimized": _jpeg(optimize=True, quality=60),
    "subsampling 4:4:4": _jpeg(subsampling=0),
    "one pixel": _jpeg(size=(1, 1)),
    "wide": _jpeg(size=(2000, 3)),
    "comment": _jpeg(comment=b"a comment"),
    "icc": _jpeg(icc_profile=b"\0" * 600),
    "restart markers": _jpeg(restart_marker_blocks=2),
    **{f"pillow exif {o}": _jpeg(exif=_pillow_exif(o)) for o in range(1, 9)},
    **{f"exif {o} {order}": _with_segment(_jpeg(), 0xE1, _exif(o, order)) for o in (3, 6, 8) for order in "<>"},
    "exif long": _with_segment(_jpeg(), 0xE1, _exif(6, kind=4)),
    "exif without orientation": _with_segment(_jpeg(), 0xE1, _exif(None, extra=struct.pack("<HHL4s", 0x010F, 2, 3, b"ab\0\0"))),
    "exif orientation 0": _with_segment(_jpeg(), 0xE1, _exif(0)),
    "exif orientation 9": _with_segment(_jpeg(), 0xE1, _exif(9)),
    "fill bytes": _jpeg()[:2] + b"\xff\xff\xff" + _jpeg()[3:],
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_jpegs_read_fast_and_equal_pillow(name):
    data = PLAIN[name]
    fast = scan_jpeg_header(data, DEFAULT_MAX_PIXELS)
    assert fast is not None, "a plain JPEG should not need Pillow"
    assert fast == probe(data, DEFAULT_MAX_PIXELS)


STEP_ASIDE = {
    "xmp": _with_segment(_jpeg(), 0xE1, b"http://ns.adobe.com/xap/1.0/\0<x tiff:Orientation=\"6\"/>"),
    "two exif blocks": _with_segment(_with_segment(_jpeg(), 0xE1, _exif(6)), 0xE1, _exif(3)),
    "orientation as two shorts": _with_segment(_jpeg(), 0xE1, _exif(6, count=2)),
    "orientation as text": _with_segment(_jpeg(), 0xE1, _exif(None, extra=struct.pack("<HHL4s", 0x0112, 2, 2, b"6\0\0\0"))),
    "entry pointing past the block": _with_segment(
        _jpeg(), 0xE1, _exif(6, extra=struct.pack("<HHLL", 0x010F, 2, 40, 4000))),
    "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
    "truncated": _jpeg()[:120],
    "not bytes": "a string",
    "12-bit sample size": None,  # built below
}
_twelve = bytearray(_jpeg())
_twelve[_twelve.index(b"\xff\xc0") + 4] = 12
STEP_ASIDE["12-bit sample size"] = bytes(_twelve)


@pytest.mark.parametrize("name", sorted(STEP_ASIDE))
def test_anything_unusual_is_left_to_pillow(name):
    assert scan_jpeg_header(STEP_ASIDE[name], DEFAULT_MAX_PIXELS) is None


def test_multi_picture_files_are_left_to_pillow():
    first = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[first.copy()])
    data = out.getvalue()
    assert probe(data, DEFAULT_MAX_PIXELS).format == "MPO"
    assert scan_jpeg_header(data, DEFAULT_MAX_PIXELS) is None


def test_the_pixel_limit_is_left_to_pillow_and_its_message():
    data = _jpeg(size=(40, 30))
    assert scan_jpeg_header(data, 40 * 30) is not None
    assert scan_jpeg_header(data, 40 * 30 - 1) is None
    with pytest.raises(DecodeError, match="image too large"):
        probe(data, 40 * 30 - 1)


def test_damaged_headers_never_disagree_with_pillow():
    """Random damage to the first bytes: whenever the fast read answers, Pillow accepts the
    file and says the same."""
    rng = np.random.default_rng(7)
    bases = [PLAIN["rgb"], PLAIN["pillow exif 6"], PLAIN["progressive"], PLAIN["gray"]]
    answered = 0
    for trial in range(3000):
        data = bytearray(bases[trial % len(bases)])
        span = min(len(data), 400)
        for _ in range(int(rng.integers(1, 4))):
            action = rng.integers(0, 3)
            at = int(rng.integers(2, span))
            if action == 0:
                data[at] = int(rng.integers(0, 256))
            elif action == 1:
                del data[at : at + int(rng.integers(1, 8))]
            else:
                data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
        fast = scan_jpeg_header(bytes(data), DEFAULT_MAX_PIXELS)
        if fast is None:
            continue
        answered += 1
        assert probe(bytes(data), DEFAULT_MAX_PIXELS) == fast, f"trial {trial}"
    assert answered > 300  # most damage lands in pixel data or tables and is still read fast
