"""A JPEG header read in a few microseconds, for the GPU decode path's header checks.

Before nvJPEG sees a chunk, every image's size, colour mode and EXIF orientation are read
on the CPU, in the worker's own process. Pillow's lazy open costs 35-50 us per 500 x 375
image (on a 2-core machine), half a CPU core at 10,000 images/s; this read costs 7-11 us
(`benchmarks/bench_decode.py`). `scan_jpeg_header` walks the marker segments
up to the start of scan itself and returns exactly what `image_decode.probe` would, or
None whenever the file holds anything whose effect on that answer it does not model
(XMP, MPO, several EXIF or frame segments, odd tag types, damage of any kind, images
beyond the pixel limit): the caller then asks Pillow, which also words the errors.
"""

from __future__ import annotations

import struct

from PIL import Image

from berg_scale.io.image_decode import ImageHeader

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (Pillow's SOF handler)
_SKIPPED = frozenset({0xC4, 0xCC, 0xDD, 0xFE})  # DHT, DAC, DRI, COM
_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_ORIENTATION = 0x0112


def scan_jpeg_header(data: bytes | bytearray | memoryview, max_pixels: int) -> ImageHeader | None:
    """`probe(data)` for plain JPEGs, without Pillow; None: ask Pillow."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    view = memoryview(data)  # no copy: only the few small segments read become bytes
    size = len(view)
    if view[:3] != b"\xff\xd8\xff":
        return None
    position = 2
    frame: bytes | None = None
    exif: bytes | None = None
    while True:
        if position + 4 > size or view[position] != 0xFF:
            return None
        while view[position + 1] == 0xFF:  # fill bytes before a marker
            position += 1
            if position + 4 > size:
                return None
        marker = view[position + 1]
        length = (view[position + 2] << 8) | view[position + 3]
        end = position + 2 + length
        if length < 2 or end > size:
            return None  # Pillow reads every segment up to and including the scan header's
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker in _SOF:
            if frame is not None:
                return None
            frame = bytes(view[position + 4 : end])
        elif marker == 0xDB:
            if not _valid_quantisation(view[position + 4 : end]):
                return None
        elif 0xE0 <= marker <= 0xEF:
            if marker == 0xE1:
                if view[position + 4 : position + 10] != b"Exif\0\0" or exif is not None:
                    return None  # XMP can carry an orientation; two EXIF blocks are joined
                exif = bytes(view[position + 4 : end])
            elif marker == 0xE2 and view[position + 4 : position + 8] == b"MPF\0":
                return None  # possibly a multi-picture file
        elif marker not in _SKIPPED:
            return None
        position = end
    if frame is None or len(frame) < 6 or frame[0] != 8 or frame[5] not in _MODES:
        return None
    height, width = struct.unpack_from(">HH", frame, 1)
    if width < 1 or height < 1 or width * height > min(max_pixels, _pillow_ceiling()):
        return None
    orientation = _exif_orientation(exif[6:]) if exif is not None else 1
    if orientation is None:
        return None
    return ImageHeader(format="JPEG", mode=_MODES[frame[5]], width=width, height=height, orientation=orientation)


def _pillow_ceiling() -> float:
    """Pillow refuses to open images above twice its MAX_IMAGE_PIXELS (its bomb guard),
    read at each call: a user may change it at run time."""
    limit = Image.MAX_IMAGE_PIXELS
    return float("inf") if limit is None else 2 * limit


def _valid_quantisation(payload: memoryview) -> bool:
    """The tables fill the segment exactly as Pillow reads them (it rejects short ones)."""
    offset = 0
    while offset < len(payload):
        size = 1 + (64 if payload[offset] >> 4 == 0 else 128)
        if len(payload) - offset < size:
            return False
        offset += size
    return True


def _exif_orientation(tiff: bytes) -> int | None:
    """IFD0's orientation as `image_decode._orientation` reads it; None: unsure."""
    if len(tiff) < 8:
        return None
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(tiff[:4])
    if order is None:
        return None
    (first,) = struct.unpack_from(order + "L", tiff, 4)
    if first + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, first)
    if first + 2 + 12 * count + 4 > len(tiff):
        return None
    value: int | None = 1
    for entry in range(count):
        tag, kind, items, inline = struct.unpack_from(order + "HHL4s", tiff, first + 2 + 12 * entry)
        size = _TIFF_TYPE_SIZES.get(kind)
        if size is None:
            continue  # Pillow skips unknown types
        if size * items > 4:
            (offset,) = struct.unpack_from(order + "L", inline)
            if offset + size * items > len(tiff):
                return None  # Pillow's read of it would fail, and with it the whole block
        if tag == _ORIENTATION:
            if items != 1 or kind not in (3, 4):
                return None
            (value,) = struct.unpack_from(order + ("H" if kind == 3 else "L"), inline)
    if value is None or not 1 <= value <= 8:
        return 1
    return value
