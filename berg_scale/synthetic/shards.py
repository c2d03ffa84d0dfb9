"""Procedural stimulus shards for tests, the demo and benchmarks.

Images are drawn from a seeded generator (smooth colour gradients, a few filled shapes,
mild noise), so every run writes identical bytes without shipping or downloading any
data. Defects that real collections contain can be planted at deterministic positions,
and the returned `ShardInfo` says for every key what was planted and what the pipeline
must make of it, so tests can assert on exact error rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from berg_scale.io.storage import StorageOptions, join
from berg_scale.io.tar_writer import TarShardWriter, upload_bytes


@dataclass(frozen=True)
class DefectKind:
    """How a planted defect is made and what decoding it must give."""

    name: str
    description: str
    decodes: bool
    error_contains: str | None = None
    has_image: bool = True


DEFECT_KINDS: dict[str, DefectKind] = {
    kind.name: kind
    for kind in (
        DefectKind("truncated_jpeg", "JPEG cut off in the middle of its scan data", False,
                   "truncated"),
        DefectKind("not_image", "text bytes stored under an image extension", False,
                   "not a recognised image"),
        DefectKind("zero_bytes", "empty image member", False, "empty image member"),
        DefectKind("grayscale", "single-channel JPEG", True),
        DefectKind("cmyk", "CMYK JPEG", True),
        DefectKind("rgba", "PNG with a varying alpha channel", True),
        DefectKind("palette", "palette PNG with a transparent colour", True),
        DefectKind("png16", "16-bit grayscale PNG", True),
        DefectKind("exif_rotated", "JPEG stored sideways with EXIF orientation 6", True),
        DefectKind("bomb", "valid PNG of 12000 x 12000 zero pixels in a few hundred KB",
                   False, "too large"),
        DefectKind("missing_image", "sample with a json member but no image", False,
                   "no image member", has_image=False),
    )
}


@dataclass(frozen=True)
class SampleInfo:
    """One sample as written: where it is, what it is, what decoding must give."""

    key: str
    index: int
    image_ext: str | None
    width: int
    height: int
    defect: str | None
    decodes: bool
    error_contains: str | None


@dataclass
class ShardInfo:
    """A written shard: its URL, samples in order and digests of every member."""

    url: str
    name: str
    samples: list[SampleInfo]
    member_sha256: dict[str, str]
    members: dict[str, bytes] | None = None
    corruption: str | None = None

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    @property
    def defects(self) -> dict[str, str]:
        return {s.key: s.defect for s in self.samples if s.defect}

    @property
    def expected_ok(self) -> list[str]:
        return [s.key for s in self.samples if s.decodes]

    @property
    def expected_errors(self) -> dict[str, str | None]:
        return {s.key: s.error_contains for s in self.samples if not s.decodes}


# --- images ------------------------------------------------------------------------


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A (height, width, 3) uint8 picture: gradient background, shapes, a little noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x / max(width, 1) + np.sin(angle) * y / max(height, 1)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    pixels = start + ramp[..., None] * (end - start)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **save_args: object) -> bytes:
    """Encode an array with Pillow in the format named by a file extension."""
    pil_format = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP",
                  "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}[fmt]
    buffer = io.BytesIO()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    per_format: dict[str, dict[str, object]] = {"JPEG": {"quality": 90}, "WEBP": {"quality": 85}}
    defaults = per_format.get(
        pil_format, {}
    )
    image.save(buffer, pil_format, **{**defaults, **save_args})
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=2)
def decompression_bomb_png(side: int = 12000) -> bytes:
    """A valid 8-bit grayscale PNG of side x side zero pixels that compresses ~1000:1."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 22) // len(row))
    chunk = row * rows_per_chunk
    parts = []
    remaining = side
    while remaining > 0:
        take = min(rows_per_chunk, remaining)
        parts.append(compressor.compress(chunk if take == rows_per_chunk else row * take))
        remaining -= take
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _defect_member(
    defect: str, pixels: np.ndarray, rng: np.random.Generator
) -> tuple[str | None, bytes | None]:
    if defect == "truncated_jpeg":
        data = encode(pixels, "jpg")
        return "jpg", data[: max(len(data) // 2, 700)]
    if defect == "not_image":
        return "jpg", b"this is not an image, just some text\n" * 8
    if defect == "zero_bytes":
        return "jpg", b""
    if defect == "grayscale":
        return "jpg", encode(Image.fromarray(pixels).convert("L"), "jpg")
    if defect == "cmyk":
        return "jpg", encode(Image.fromarray(pixels).convert("CMYK"), "jpg")
    if defect == "rgba":
        height, width = pixels.shape[:2]
        alpha = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
        rgba = np.dstack([pixels, alpha.astype(np.uint8)])
        return "png", encode(Image.fromarray(rgba, "RGBA"), "png")
    if defect == "palette":
        image = Image.fromarray(pixels).quantize(colors=16)
        image.info["transparency"] = 0
        return "png", encode(image, "png", transparency=0)
    if defect == "png16":
        gray = pixels.astype(np.uint16).sum(axis=2) * 85 + rng.integers(0, 255)
        return "png", encode(Image.fromarray(gray.astype(np.uint16)), "png")
    if defect == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        return "jpg", encode(np.ascontiguousarray(np.rot90(pixels, k=1)), "jpg", exif=exif)
    if defect == "bomb":
        return "png", decompression_bomb_png()
    if defect == "missing_image":
        return None, None
    raise ValueError(f"unknown defect {defect!r}; known: {sorted(DEFECT_KINDS)}")


def _defect_slots(
    defects: Mapping[str, int] | Sequence[str], total: int, rng: np.random.Generator
) -> dict[int, str]:
    names: list[str] = []
    if isinstance(defects, Mapping):
        for name, count in defects.items():
            names.extend([name] * int(count))
    else:
        names.extend(defects)
    unknown = sorted(set(names) - set(DEFECT_KINDS))
    if unknown:
        raise ValueError(f"unknown defects {unknown}; known: {sorted(DEFECT_KINDS)}")
    if len(names) > total:
        raise ValueError(f"{len(names)} defects do not fit into {total} samples")
    positions = sorted(rng.choice(total, size=len(names), replace=False).tolist())
    return dict(zip(positions, names))


def write_synthetic_shards(
    dest: str,
    n_shards: int,
    images_per_shard: int,
    sizes: Sequence[tuple[int, int]] = ((64, 48), (48, 64), (37, 53), (80, 80)),
    formats: Sequence[str] = ("jpg", "png", "webp"),
    defects: Mapping[str, int] | Sequence[str] = (),
    seed: int = 0,
    storage: StorageOptions | None = None,
    prefix: str = "shard-",
    keep_bytes: bool = False,
) -> list[ShardInfo]:
    """Write `n_shards` tars `<prefix>{000000..}.tar` under `dest` (folder or s3:// prefix).

    Each sample is `<key>.<ext>` plus `<key>.json` with a small label dict. Sizes and
    formats cycle over the given lists; `sizes` are (width, height). Defects are
    spread over all samples at positions drawn from the seed.
    """
    if n_shards < 0 or images_per_shard < 0:
        raise ValueError("n_shards and images_per_shard must be non-negative")
    rng = np.random.default_rng(seed)
    key_stem = re.sub(r"[^A-Za-z0-9_-]", "_", prefix).rstrip("-_") or "img"
    slots = _defect_slots(defects, n_shards * images_per_shard, rng)
    infos = []
    for shard in range(n_shards):
        name = f"{prefix}{shard:06d}.tar"
        url = join(dest, name)
        samples: list[SampleInfo] = []
        digests: dict[str, str] = {}
        kept: dict[str, bytes] = {}
        with TarShardWriter(url, storage) as writer:
            for index in range(images_per_shard):
                position = shard * images_per_shard + index
                image_rng = np.random.default_rng([seed, shard, index])
                width, height = sizes[position % len(sizes)]
                fmt = formats[position % len(formats)]
                pixels = synthetic_image(image_rng, width, height)
                defect = slots.get(position)
                if defect:
                    ext, data = _defect_member(defect, pixels, image_rng)
                else:
                    ext, data = fmt, encode(pixels, fmt)
                key = f"{key_stem}{shard:06d}-{index:06d}"
                label = {
                    "label": int(image_rng.integers(0, 10)),
                    "key": key,
                    "width": width,
                    "height": height,
                    "defect": defect,
                }
                fields: dict[str, bytes] = {}
                if ext is not None and data is not None:
                    fields[ext] = data
                fields["json"] = json.dumps(label, sort_keys=True).encode()
                writer.add_sample(key, fields)
                for field_ext, field_data in fields.items():
                    member = f"{key}.{field_ext}"
                    digests[member] = hashlib.sha256(field_data).hexdigest()
                    if keep_bytes:
                        kept[member] = field_data
                kind = DEFECT_KINDS.get(defect) if defect else None
                samples.append(
                    SampleInfo(
                        key=key,
                        index=index,
                        image_ext=ext,
                        width=width,
                        height=height,
                        defect=defect,
                        decodes=kind.decodes if kind else True,
                        error_contains=kind.error_contains if kind else None,
                    )
                )
        infos.append(
            ShardInfo(url, name, samples, digests, kept if keep_bytes else None)
        )
    return infos


# --- broken tars -------------------------------------------------------------------

CORRUPTIONS = ("mid_member", "at_boundary", "garbage_header", "not_a_tar")


def write_corrupt_shard(
    url: str,
    corruption: str = "mid_member",
    n_images: int = 6,
    seed: int = 0,
    storage: StorageOptions | None = None,
) -> ShardInfo:
    """Write a tar that a reader must reject: cut inside a member's data, cut exactly
    between members (no end-of-archive blocks), a garbage header after valid members,
    or bytes that are no tar at all. `samples` lists the samples before the damage."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if n_images < 2:
        raise ValueError("a corrupt shard needs n_images >= 2")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (info,) = write_synthetic_shards(
            tmp, 1, n_images, formats=("png",), seed=seed, keep_bytes=True
        )
        with open(join(tmp, info.name), "rb") as handle:
            whole = handle.read()
    spans = _member_spans(whole)
    intact = n_images // 2
    cut_member = 2 * intact  # the image member of the first damaged sample
    boundary = spans[cut_member][0]
    if corruption == "mid_member":
        _, data_offset, size = spans[cut_member]
        data = whole[: data_offset + size // 2]
    elif corruption == "at_boundary":
        data = whole[:boundary]
    elif corruption == "garbage_header":
        data = whole[:boundary] + bytes(range(256)) * 2 + whole[boundary:]
    else:
        data = b"PK\x03\x04 this is a zip header, not a tar" + bytes(2000)
        intact = 0
    upload_bytes(url, data, storage)
    samples = info.samples[:intact]
    names = {f"{s.key}.{ext}" for s in samples for ext in ("png", "json")}
    return ShardInfo(
        url=url,
        name=url.rsplit("/", 1)[-1],
        samples=samples,
        member_sha256={k: v for k, v in info.member_sha256.items() if k in names},
        corruption=corruption,
    )


def _member_spans(tar_bytes: bytes) -> list[tuple[int, int, int]]:
    """(header offset, data offset, data size) of each member, from the archive itself."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as archive:
        return [(m.offset, m.offset_data, m.size) for m in archive]
