"""One place that turns a path or URL into an fsspec filesystem.

Local paths and `s3://` URLs go through the same code so every reader and writer
works unchanged on a laptop and on a cluster. S3-compatible servers (SeaweedFS, MinIO,
GCS interop, AWS) are selected with the standard AWS variables or explicit options.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec

from berg_scale.errors import StorageError

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")

# botocore's defaults (legacy retries: 5 attempts with exponential back-off, 60 s connect
# timeout) hold a command for 10+ s against an endpoint that refuses connections and for
# minutes against one that drops them. Three attempts in standard mode still ride out a
# throttled or briefly unavailable server, and a down endpoint fails in a few seconds.
BOTOCORE_CONFIG: dict[str, Any] = {"connect_timeout": 5, "retries": {"max_attempts": 3, "mode": "standard"}}


@dataclass(frozen=True)
class StorageOptions:
    """Connection settings for object storage; secrets stay out of reprs and outputs."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        for name in ENDPOINT_VARIABLES:
            if os.environ.get(name):
                return os.environ[name]
        return None

    def s3fs_kwargs(self) -> dict[str, Any]:
        client_kwargs: dict[str, Any] = {}
        endpoint = self.resolved_endpoint()
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if self.region:
            client_kwargs["region_name"] = self.region
        kwargs: dict[str, Any] = {
            "anon": self.anon,
            "client_kwargs": client_kwargs,
            "config_kwargs": copy.deepcopy(BOTOCORE_CONFIG),  # botocore edits the retries dict in place
        }
        if self.key and not self.anon:
            kwargs["key"] = self.key
            kwargs["secret"] = self.secret
        kwargs.update(copy.deepcopy(self.extra))
        return kwargs


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def filesystem_for(
    url: str, options: StorageOptions | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return `(filesystem, path-within-filesystem)` for a local path or URL."""
    options = options or StorageOptions()
    protocol = protocol_of(url)
    if protocol == "file":
        path = url[len("file://") :] if url.startswith("file://") else url
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if protocol in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **options.s3fs_kwargs())
        return fs, url.split("://", 1)[1]
    try:
        fs = fsspec.filesystem(protocol, **options.extra)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"unsupported storage protocol {protocol!r} in {url!r}: use a local path or s3://"
        ) from exc
    return fs, url.split("://", 1)[1]


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for URLs and local paths alike."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of `filesystem_for`: the user-facing URL of a path in `fs`."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"
