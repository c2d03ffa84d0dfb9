"""One place that turns a path or URL into an fsspec filesystem.

Local paths and `s3://` URLs go through the same code so every reader and writer
works unchanged on a laptop and on a cluster. S3-compatible servers (SeaweedFS, MinIO,
GCS interop, AWS) are selected with the standard AWS variables or explicit options.

One run may read from several stores (BERG's public bucket on AWS, shards on a lab's
own endpoint): `StorageOptions.prefixes` gives a URL prefix its own settings, and
`filesystem_for` picks the longest matching prefix for every URL. BERG's public bucket
is read anonymously unless credentials are configured, as BERG itself reads it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec

from berg_scale.errors import StorageError
from berg_scale.io.endpoints import ENDPOINT_VARIABLES

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                  "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
# BERG's public bucket (named in BERG's documentation and docs/models.md): anonymous reads,
# region us-west-2.
BERG_PUBLIC_BUCKET = "s3://brain-encoding-response-generator"
BERG_PUBLIC_REGION = "us-west-2"

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
    # (URL prefix, settings) pairs; a URL under a prefix uses that prefix's settings alone.
    prefixes: tuple[tuple[str, StorageOptions], ...] = ()

    def for_url(self, url: str) -> StorageOptions:
        """The settings that apply to `url`: the longest matching prefix, else these."""
        normalized = _normalized(url)
        matches = [(prefix, options) for prefix, options in self.prefixes if normalized.startswith(_normalized(prefix))]
        if matches:
            return max(matches, key=lambda item: len(item[0]))[1]
        base = StorageOptions(self.endpoint_url, self.region, self.anon, self.key, self.secret, self.extra)
        if is_berg_public(url) and not base.anon and not base.has_credentials():
            return StorageOptions(base.endpoint_url, base.region or BERG_PUBLIC_REGION, True, extra=base.extra)
        return base

    def has_credentials(self) -> bool:
        """Whether credentials are configured here or for botocore (variables, profiles)."""
        if self.key or any(k in self.extra for k in ("key", "profile", "token")):
            return True
        if any(os.environ.get(name) for name in CREDENTIAL_ENV):
            return True
        return _botocore_files_have_credentials()

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


def _normalized(url: str) -> str:
    return url.replace("s3a://", "s3://", 1)


def is_berg_public(url: str) -> bool:
    """Whether `url` is in BERG's public bucket."""
    normalized = _normalized(url).rstrip("/")
    return normalized == BERG_PUBLIC_BUCKET or normalized.startswith(BERG_PUBLIC_BUCKET + "/")


# Lines of ~/.aws/config that make botocore sign requests (a region alone does not).
_CONFIG_CREDENTIAL_KEYS = ("aws_access_key_id", "credential_process", "sso_", "role_arn", "web_identity_token_file")


def _botocore_files_have_credentials() -> bool:
    home = os.path.expanduser("~")
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials")
    config = os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")
    if "aws_access_key_id" in _read_text(credentials):
        return True
    return any(key in _read_text(config) for key in _CONFIG_CREDENTIAL_KEYS)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 20)
    except OSError:
        return ""


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def filesystem_for(
    url: str, options: StorageOptions | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return `(filesystem, path-within-filesystem)` for a local path or URL."""
    options = (options or StorageOptions()).for_url(url)
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


def absence_note(url: str, options: StorageOptions | None = None) -> str:
    """Why nothing was found at `url`, when the reason is a typo one level up.

    "not a berg-scale output" is the right answer for a folder of other files; for a
    bucket or folder that does not exist at all, the user needs to hear that instead.
    Returns "" when the location exists or cannot be checked.
    """
    try:
        fs, path = filesystem_for(url, options)
        if fs.exists(path):
            return ""
        if protocol_of(url) in ("s3", "s3a"):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                return f"; bucket {bucket!r} does not exist: check the bucket name and the endpoint"
        return f"; {url} does not exist: check the path"
    except Exception:  # the note is a courtesy: an error here must not hide the real one
        return ""


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
