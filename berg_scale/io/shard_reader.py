"""Stream the samples of one WebDataset tar shard from local disk or s3://.

The shard is read front to back once, with a background thread fetching the next
chunks while the caller decodes, so network latency hides behind CPU work. Members
are grouped into samples by WebDataset's rule: the key is the member path up to the
first dot of its basename, the rest is the field extension, and consecutive members
with the same key form one sample.

Two kinds of trouble are kept apart:

* **Sample problems** (no image member, an oversized member, an unreadable json) are
  reported on the sample itself (`ShardSample.error` / `notes`), so they become error
  rows and the rest of the shard still counts.
* **Archive problems** (cut short, a garbage header, not a tar at all) raise
  `ShardReadError`. Python's tarfile quietly stops at a damaged header after the first
  one; here the end of the archive is verified, so a truncated shard can never pass
  for a shorter complete one.

Storage errors (network, permissions) propagate unchanged, so a scheduler can retry
them; `ShardReadError` is permanent for the bytes as stored.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import queue
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
JSON_EXTENSION = "json"
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_READ_AHEAD_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_JSON_BYTES = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


class ShardReadError(BergScaleError):
    """The tar itself is damaged or missing; retrying the same bytes will not help."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot read shard {url}: {reason} (re-create or re-upload the shard)"
        )
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard.

    Unpacks as `(key, index, image, image_ext, json)`. `error` is set exactly when
    `image` is None and says why; `notes` records non-fatal oddities (an unreadable
    json member, extra image members).
    """

    key: str
    index: int
    image: bytes | None
    image_ext: str | None
    json: dict[str, Any] | None
    error: str | None = None
    notes: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[Any]:
        return iter((self.key, self.index, self.image, self.image_ext, self.json))


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset's key/extension split (extension lower-cased, as WebDataset does by
    default), or None for names that belong to no sample."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    if not stem or not ext:
        return None
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def image_field(extensions: list[str]) -> str | None:
    """The field that holds the image: an exact image extension first, then `x.jpg`-style."""
    for ext in extensions:
        if ext.lower() in IMAGE_EXTENSIONS:
            return ext
    for ext in extensions:
        if ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            return ext
    return None


class ReadAheadFile(io.RawIOBase):
    """A forward-reading file that a thread keeps `depth` chunks ahead of the reader.

    Seeks forward are free (skipped data is simply dropped); seeks backward work within
    the current and previous chunk, which is all tar parsing needs.
    """

    def __init__(self, raw: BinaryIO, chunk_bytes: int, depth: int) -> None:
        super().__init__()
        self._raw = raw
        self._chunk_bytes = max(int(chunk_bytes), 2 * _BLOCK)
        self._pos = 0
        self._chunk = b""
        self._chunk_start = 0
        self._previous = b""
        self._eof = False
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(
                target=self._fetch, name="shard-read-ahead", daemon=True
            )
            self._thread.start()

    def _fetch(self) -> None:
        assert self._queue is not None
        try:
            while not self._stop.is_set():
                data = self._raw.read(self._chunk_bytes)
                item: Any = data if data else None
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item is None:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            while not self._stop.is_set():
                try:
                    self._queue.put(exc, timeout=0.1)
                    return
                except queue.Full:
                    continue

    def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        if self._queue is None:
            data = self._raw.read(self._chunk_bytes)
            item: Any = data if data else None
        else:
            item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if item is None:
            self._eof = True
            return None
        return item

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("read-ahead files cannot seek from the end")
        retained_start = self._chunk_start - len(self._previous)
        if offset < retained_start:
            raise io.UnsupportedOperation(
                f"cannot seek back to {offset}; data before {retained_start} is gone"
            )
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        parts = []
        remaining = size if size is not None and size >= 0 else None
        while remaining is None or remaining > 0:
            chunk_end = self._chunk_start + len(self._chunk)
            if self._pos < self._chunk_start:
                source, start = self._previous, self._chunk_start - len(self._previous)
            elif self._pos < chunk_end:
                source, start = self._chunk, self._chunk_start
            else:
                data = self._next_chunk()
                if data is None:
                    break
                self._previous = self._chunk
                self._chunk_start = chunk_end
                self._chunk = data
                continue
            begin = self._pos - start
            end = len(source) if remaining is None else min(len(source), begin + remaining)
            piece = source[begin:end]  # bounded slice: never copies the rest of a chunk
            if remaining is not None:
                remaining -= len(piece)
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self._raw.close()
        finally:
            super().close()


def _open_shard(
    url: str, storage: StorageOptions | None, chunk_bytes: int, read_ahead_bytes: int
) -> ReadAheadFile:
    fs, path = filesystem_for(url, storage)
    if not is_remote(url) and os.path.isdir(path):
        raise ShardReadError(url, "it is a folder, not a tar file")
    try:
        try:
            raw = fs.open(path, "rb", block_size=chunk_bytes, cache_type="none")
        except TypeError:  # filesystems without cache options
            raw = fs.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise ShardReadError(url, "no such shard") from None
    depth = max(0, read_ahead_bytes // max(chunk_bytes, 1))
    return ReadAheadFile(raw, chunk_bytes, depth)


class _SampleBuilder:
    """Collects the fields of the sample being read and turns them into a ShardSample."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.extensions: list[str] = []
        self.data: dict[str, bytes] = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}

    def build(self, index: int) -> ShardSample:
        notes = list(self.notes)
        image_ext = image_field(self.extensions)
        image = self.data.get(image_ext) if image_ext else None
        error = None
        if image_ext is None:
            found = ", ".join(self.extensions) or "nothing"
            error = f"no image member (found: {found})"
        elif image is None:
            error = self.skipped.get(image_ext, f"image member {image_ext!r} was not read")
        extra = [e for e in self.extensions if e != image_ext and image_field([e])]
        if extra:
            notes.append(f"extra image members ignored: {', '.join(extra)}")
        parsed = None
        raw_json = self.data.get(JSON_EXTENSION)
        if raw_json is not None:
            try:
                value = json.loads(raw_json)
            except (ValueError, UnicodeDecodeError):
                notes.append("json member is not valid JSON")
            else:
                if isinstance(value, dict):
                    parsed = value
                else:
                    notes.append("json member is not an object")
        elif JSON_EXTENSION in self.skipped:
            notes.append(self.skipped[JSON_EXTENSION])
        return ShardSample(
            key=self.key,
            index=index,
            image=image,
            image_ext=image_ext if image is not None else None,
            json=parsed,
            error=error,
            notes=tuple(notes),
        )


def _wanted(ext: str) -> bool:
    return ext == JSON_EXTENSION or image_field([ext]) is not None


def iter_shard_samples(
    url: str,
    storage: StorageOptions | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
) -> Iterator[ShardSample]:
    """Yield the samples of one shard in order; raises ShardReadError on a damaged tar.

    `read_ahead_bytes=0` reads synchronously. Only image and json members are loaded
    into memory; members above `max_member_bytes` become sample errors instead.
    """
    handle = _open_shard(url, storage, chunk_bytes, read_ahead_bytes)
    try:
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.ReadError as exc:
            raise ShardReadError(url, f"not a readable uncompressed tar ({exc})") from None
        index = 0
        current: _SampleBuilder | None = None
        while True:
            try:
                member = archive.next()
            except tarfile.ReadError as exc:
                raise ShardReadError(url, f"damaged tar ({exc})") from None
            if member is None:
                break
            if not member.isreg():
                continue
            parsed = split_member_name(member.name)
            if parsed is None:
                continue
            key, ext = parsed
            if current is None or key != current.key:
                if current is not None:
                    yield current.build(index)
                    index += 1
                current = _SampleBuilder(key)
            current.extensions.append(ext)
            if not _wanted(ext):
                continue
            limit = max_json_bytes if ext == JSON_EXTENSION else max_member_bytes
            if member.issparse():
                current.skipped[ext] = f"member {member.name!r} is a sparse file (unsupported)"
                continue
            if member.size > limit:
                current.skipped[ext] = (
                    f"member {member.name!r} is {member.size} bytes, above the "
                    f"{limit}-byte limit"
                )
                continue
            handle.seek(member.offset_data)
            data = handle.read(member.size)
            if len(data) != member.size:
                raise ShardReadError(
                    url,
                    f"truncated inside member {member.name!r} "
                    f"({len(data)} of {member.size} bytes present)",
                )
            current.data[ext] = data
        _verify_end_of_archive(url, handle, archive.offset)
        if current is not None:
            yield current.build(index)
    finally:
        handle.close()


def _verify_end_of_archive(url: str, handle: ReadAheadFile, offset: int) -> None:
    """A complete tar ends with zero blocks; anything else means data was lost."""
    handle.seek(offset)
    block = handle.read(_BLOCK)
    if len(block) == 0:
        raise ShardReadError(
            url, f"ends at byte {offset} without an end-of-archive marker (truncated)"
        )
    if len(block) < _BLOCK:
        raise ShardReadError(url, f"truncated inside a member header at byte {offset}")
    if block.count(0) != _BLOCK:
        raise ShardReadError(url, f"invalid member header at byte {offset} (corrupt data)")


def read_shard(url: str, storage: StorageOptions | None = None, **options: Any) -> list[ShardSample]:
    """All samples of a shard as a list (convenience for small shards and tests)."""
    return list(iter_shard_samples(url, storage, **options))


def list_tar_shards(prefix: str, storage: StorageOptions | None = None) -> list[str]:
    """Sorted URLs of the `*.tar` files directly under a folder or s3:// prefix."""
    fs, path = filesystem_for(prefix, storage)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = sorted(
        posixpath.basename(entry.rstrip("/"))
        for entry in entries
        if entry.endswith(".tar") and not posixpath.basename(entry).startswith(".")
    )
    return [join(prefix, name) for name in names]


__all__ = [
    "IMAGE_EXTENSIONS",
    "ReadAheadFile",
    "ShardReadError",
    "ShardSample",
    "image_field",
    "iter_shard_samples",
    "list_tar_shards",
    "read_shard",
    "split_member_name",
]
