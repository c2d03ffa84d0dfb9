"""sha256 digests of weight files remembered across driver starts.

The driver hashes every file the readouts read before any worker starts, so that a
changed BERG root is refused before GPUs are taken. For eight fsaverage subjects on S3
that is several GB read on every `generate`, resume or rerun. A file whose URL, size and
change stamp (ETag on S3, mtime on disk) are those of a file hashed before has the same
digest, so the driver reuses it; workers still hash the bytes they load, and the run
stops if the two disagree, so a stale entry can never produce responses silently.

The cache is one small JSON file (`~/.cache/berg-scale/digests.json`, or
`$BERG_SCALE_DIGEST_CACHE`; `off` turns it off). Two drivers may write it at once: each
replaces the whole file atomically, so the worst case is a lost entry, hashed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

ENV_NAME = "BERG_SCALE_DIGEST_CACHE"
MAX_ENTRIES = 20_000  # a few MB of JSON; the oldest entries go first
_LOCK = threading.Lock()


def default_cache_path() -> str | None:
    """Where digests are kept, or None when the user turned the cache off."""
    configured = os.environ.get(ENV_NAME, "").strip()
    if configured.lower() in {"off", "0", "false", "no"}:
        return None
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "berg-scale", "digests.json")


def change_stamp(info: Mapping[str, Any]) -> str:
    """What changes when a file's bytes change: the ETag on S3, else the modification time."""
    return str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "")


def stamp_key(url: str, size: int, stamp: str) -> str | None:
    """The entry's name; None when the store gives no change stamp (then never cached)."""
    if not stamp:
        return None
    return f"{url}\t{size}\t{stamp}"


class DigestCache:
    """Digests by (URL, size, stamp), loaded once and written back after new hashes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.entries: dict[str, str] = self._read() if path else {}
        self.added = 0
        self.forgotten: set[str] = set()

    def _read(self) -> dict[str, str]:
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except (OSError, ValueError):
            return {}  # absent or unreadable: start afresh, nothing depends on it
        if not isinstance(loaded, dict):
            return {}
        return {
            key: value for key, value in loaded.items()
            if isinstance(key, str) and isinstance(value, str) and len(value) == 64
        }

    def digest(self, key: str | None, compute: Callable[[], str]) -> str:
        """The remembered digest for `key`, or `compute()`'s, remembered from now on."""
        if key is not None:
            with _LOCK:
                known = self.entries.get(key)
            if known is not None:
                return known
        value = compute()
        if key is not None:
            with _LOCK:
                self.entries.pop(key, None)
                self.entries[key] = value  # newest last: trimming drops the oldest
                self.added += 1
        return value

    def known(self, url: str, size: int, stamp: str) -> str | None:
        """The digest remembered for these bytes, without computing one."""
        key = stamp_key(url, size, stamp)
        if key is None:
            return None
        with _LOCK:
            return self.entries.get(key)

    def forget(self, url: str) -> None:
        """Drop every digest remembered for `url` (a worker found other bytes there)."""
        with _LOCK:
            stale = [key for key in self.entries if key.split("\t", 1)[0] == url]
            for key in stale:
                del self.entries[key]
            self.forgotten.update(stale)

    def save(self) -> None:
        """Write the entries back if anything was added; a failure only costs re-hashing.

        Entries another driver wrote since this one loaded the file are kept.
        """
        if not self.path or not (self.added or self.forgotten):
            return
        with _LOCK:
            merged = {**self._read(), **self.entries}
            for key in self.forgotten:
                merged.pop(key, None)
            entries = dict(list(merged.items())[-MAX_ENTRIES:])
        folder = os.path.dirname(self.path)
        temporary = None
        try:
            os.makedirs(folder, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".digests-", dir=folder)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(entries, stream)
            os.replace(temporary, self.path)
            temporary = None
        except OSError:
            return
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.remove(temporary)
        self.added = 0
        self.forgotten.clear()


def forget_remembered_digest(url: str) -> None:
    """Make the next driver hash `url` afresh."""
    cache = DigestCache(default_cache_path())
    cache.forget(url)
    cache.save()
