"""Access to a BERG root (local folder or s3://) with safe loaders and cached hashes.

Every weight file is hashed once per process (keyed by URL, size and modification
time) so that run manifests can record exactly which weights produced the responses
without re-reading hundreds of megabytes per batch.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions, filesystem_for, join
from berg_scale.models import safe_load
from berg_scale.weights.digest_cache import DigestCache, change_stamp, stamp_key

_HASH_CACHE: dict[tuple[str, int, str], str] = {}
_HASH_LOCK = threading.Lock()
HASH_CHUNK = 8 << 20
hash_computations = 0  # files actually read for hashing (not cache hits)


class MissingWeightFileError(BergScaleError, FileNotFoundError):
    """A file the requested readout needs is not in the BERG root."""


class WeightStore:
    """Read files of one BERG root, relative to it."""

    def __init__(self, root: str, storage: StorageOptions | None = None) -> None:
        self.root = str(root)
        self.storage = storage
        self.fs, self.base = filesystem_for(self.root, storage)
        self.loaded: list[str] = []  # every file load() read, so a model can vouch for each

    def path(self, relative: str) -> str:
        return join(self.base, relative)

    def url(self, relative: str) -> str:
        return join(self.root, relative)

    def require(self, relative: str, what: str) -> dict[str, Any]:
        """Info of an existing file, or an error saying which file to fetch."""
        try:
            return self.fs.info(self.path(relative))
        except FileNotFoundError:
            raise MissingWeightFileError(
                f"{what}: file not found: {self.url(relative)}; copy BERG's "
                f"'{relative}' into the BERG root (berg-scale fetch-weights downloads it) "
                "or fix the root path"
            ) from None

    def load(self, relative: str, what: str) -> Any:
        """Load an `.npy` or `.pt` file with the restricted loaders."""
        self.require(relative, what)
        if relative not in self.loaded:
            self.loaded.append(relative)
        kind = "pt" if relative.endswith(".pt") else "npy"
        return safe_load.read_bytes_loader(
            lambda: self.fs.open(self.path(relative), "rb"), self.url(relative), kind
        )

    def sha256(self, relative: str, digests: DigestCache | None = None) -> str:
        """The file's sha256; `digests` (the driver's) may answer from an earlier process."""
        info = self.require(relative, "hashing")
        stamp = change_stamp(info)
        size = int(info.get("size") or 0)
        key = (self.url(relative), size, stamp)
        with _HASH_LOCK:
            if key in _HASH_CACHE:
                return _HASH_CACHE[key]
        if digests is not None:
            value = digests.digest(stamp_key(*key), lambda: self._hash_bytes(relative))
        else:
            value = self._hash_bytes(relative)
        with _HASH_LOCK:
            _HASH_CACHE[key] = value
        return value

    def _hash_bytes(self, relative: str) -> str:
        value = _file_sha256(self.fs, self.path(relative))
        global hash_computations
        with _HASH_LOCK:
            hash_computations += 1
        return value


def _file_sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_url(url: str, storage: StorageOptions | None = None, digests: DigestCache | None = None) -> str:
    """sha256 of a file named by URL or path (the backbone, which lives outside the root)."""
    fs, path = filesystem_for(url, storage)
    if digests is None:
        return _file_sha256(fs, path)
    info = fs.info(path)
    key = stamp_key(url, int(info.get("size") or 0), change_stamp(info))
    return digests.digest(key, lambda: _file_sha256(fs, path))


def backbone_hash_key(url: str) -> str:
    """How the backbone appears among weight hashes: by file name, wherever it is kept."""
    return f"backbone:{url.rstrip('/').rsplit('/', 1)[-1]}"
