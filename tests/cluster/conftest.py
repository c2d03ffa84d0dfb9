"""Fixtures for the cluster area: a BERG root in the loopback S3 server, byte counters."""

from __future__ import annotations

import collections
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cluster_support import NEEDED, UNNEEDED, RemoteRoot, layout_paths, placeholder_bytes  # noqa: E402

@pytest.fixture
def remote_root(s3_server, s3_bucket) -> RemoteRoot:
    client = s3_server.client()
    bucket = s3_bucket.split("://", 1)[1]
    contents: dict[str, bytes] = {}
    for index, rel in enumerate(layout_paths(NEEDED + UNNEEDED)):
        # Sizes differ per file and are not multiples of the test chunk size.
        data = placeholder_bytes(rel, 150_000 + 7_919 * index)
        client.put_object(Bucket=bucket, Key=rel, Body=data)
        contents[rel] = data
    return RemoteRoot(s3_bucket, s3_server.storage_options(), contents, layout_paths(NEEDED))


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
