"""Fixtures for the stimulus-shard tests: synthetic shards, small image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from berg_scale.synthetic.shards import (
    DEFECT_KINDS,
    encode,
    synthetic_image,
    write_synthetic_shards,
)


@pytest.fixture(scope="module")
def defect_shards(tmp_path_factory):
    """Two local shards of 12 samples carrying one of every defect kind."""
    dest = tmp_path_factory.mktemp("defect-shards")
    return write_synthetic_shards(
        str(dest), 2, 12, defects=list(DEFECT_KINDS), seed=3, keep_bytes=True
    )


def image_bytes(fmt: str, width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    return encode(synthetic_image(np.random.default_rng(seed), width, height), fmt)


def _truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose scan data stops half-way."""
    data = image_bytes("jpg", 200, 150, 11)
    return data[: len(data) * 6 // 10]


@pytest.fixture
def mixed_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A nested folder with every supported format, awkward names and two broken files.

    Returns the folder and the bytes of each readable image by relative path.
    """
    src = tmp_path / "images"
    good = {
        "a.jpg": image_bytes("jpg", 40, 30, 1),
        "b.png": image_bytes("png", 31, 17, 2),
        "c.webp": image_bytes("webp", 64, 64, 3),
        "d.bmp": image_bytes("bmp", 9, 13, 4),
        "e.tif": image_bytes("tif", 20, 20, 5),
        "sub/Photo 1.v2.JPG": image_bytes("jpg", 50, 70, 6),
        "sub/deeper/x.jpeg": image_bytes("jpg", 33, 33, 7),
        "sub/x.png": image_bytes("png", 12, 12, 8),
        "sub/x.jpg": image_bytes("jpg", 12, 12, 9),  # same key stem as sub/x.png
        "wrong-extension.png": image_bytes("jpg", 16, 16, 10),
    }
    broken = {
        "broken.jpg": b"definitely not a JPEG\n" * 4,
        "sub/truncated.jpg": _truncated_jpeg(),
    }
    ignored = {"notes.txt": b"hello", ".DS_Store": b"\0\0"}
    for rel, data in {**good, **broken, **ignored}.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return src, good
