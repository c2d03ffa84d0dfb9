"""Fetch controlling images back from the input WebDataset shards by key.

Tars are untrusted: members are only read as bytes (never extracted), only regular
files with an image suffix are considered, sizes and pixel counts are capped, and a
member that does not decode is reported as missing rather than raising.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import warnings
from typing import Iterable

from PIL import Image

from berg_scale.io.storage import StorageOptions, filesystem_for

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000


def member_key(name: str) -> tuple[str, str]:
    """(WebDataset key, suffix): the key is the path up to the first dot of the basename."""
    directory, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return (posixpath.join(directory, stem) if directory else stem), suffix.lower()


def shard_url(images_url: str, shard: str) -> str:
    name = shard if shard.endswith(".tar") else f"{shard}.tar"
    return f"{images_url.rstrip('/')}/{name}"


def fetch_images(
    images_url: str,
    wanted: Iterable[tuple[str, str]],
    storage: StorageOptions | None = None,
    size: int = 96,
) -> dict[str, Image.Image | None]:
    """key -> RGB thumbnail (or None when missing or undecodable) for (shard, key) pairs."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        by_shard.setdefault(shard, set()).add(key)
    found: dict[str, Image.Image | None] = {key: None for keys in by_shard.values() for key in keys}
    for shard, keys in by_shard.items():
        fs, path = filesystem_for(shard_url(images_url, shard), storage)
        try:
            handle = fs.open(path, "rb")
        except (FileNotFoundError, OSError):
            continue
        with handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with tarfile.open(fileobj=handle, mode="r|*") as tar:
                    for member in tar:
                        if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                            continue
                        key, suffix = member_key(member.name)
                        if key not in keys or suffix not in IMAGE_SUFFIXES or found.get(key) is not None:
                            continue
                        data = tar.extractfile(member)
                        found[key] = _thumbnail(data.read() if data else b"", size)
            except (tarfile.TarError, OSError, EOFError):
                continue
    return found


def _thumbnail(data: bytes, size: int) -> Image.Image | None:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
