"""Fixtures for the cluster area: a BERG root in the loopback S3 server, byte counters."""

from __future__ import annotations

import collections
import os

import pytest

from berg_scale.models import layout

# Readouts the tests fetch, and files in the bucket that no test asks for.
NEEDED = [
    ("fmri-nsd-fwrf", 1, "V1"),
    ("fmri-nsd-fwrf", 1, "lateral"),
    ("fmri-nsd_fsaverage-vit_b_32", 1, None),
    ("eeg-things_eeg_2-vit_b_32", 1, None),
]
UNNEEDED = [
    ("fmri-nsd-fwrf", 2, "V1"),
    ("fmri-nsd-fwrf", 1, "V2"),
    ("fmri-nsd_fsaverage-vit_b_32", 2, None),
]


def _paths(requests) -> list[str]:
    out: list[str] = []
    for model_id, subject, roi in requests:
        out.extend(layout.weight_files(model_id, subject, roi))
        out.append(layout.metadata_file(model_id, subject, roi))
    return list(dict.fromkeys(out))


def placeholder_bytes(rel: str, size: int) -> bytes:
    """Deterministic, path-dependent content, so a mixed-up file is detected."""
    import hashlib

    import numpy as np

    seed = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")

    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


class RemoteRoot:
    """A BERG-layout root uploaded to the test bucket, with the bytes of every file."""

    def __init__(self, url: str, storage, contents: dict[str, bytes], needed: list[str]):
        self.url = url
        self.storage = storage
        self.contents = contents
        self.needed = needed


@pytest.fixture
def remote_root(s3_server, s3_bucket) -> RemoteRoot:
    client = s3_server.client()
    bucket = s3_bucket.split("://", 1)[1]
    contents: dict[str, bytes] = {}
    for index, rel in enumerate(_paths(NEEDED + UNNEEDED)):
        # Sizes differ per file and are not multiples of the test chunk size.
        data = placeholder_bytes(rel, 150_000 + 7_919 * index)
        client.put_object(Bucket=bucket, Key=rel, Body=data)
        contents[rel] = data
    return RemoteRoot(s3_bucket, s3_server.storage_options(), contents, _paths(NEEDED))


@pytest.fixture
def byte_counter(monkeypatch):
    """Counts the bytes s3fs really returns for object reads, per key."""
    import s3fs

    counts: collections.Counter[str] = collections.Counter()
    original = s3fs.S3FileSystem._cat_file

    async def counting(self, path, *args, **kwargs):
        data = await original(self, path, *args, **kwargs)
        counts[path.split("://", 1)[-1].split("/", 1)[1]] += len(data)
        return data

    # fsspec binds sync wrappers per instance and caches instances: start from fresh ones.
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting)
    yield counts
    s3fs.S3FileSystem.clear_instance_cache()


def local_files(root: str) -> set[str]:
    found = set()
    for folder, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if not os.path.basename(rel).startswith("."):
                found.add(rel)
    return found
