"""Write WebDataset tar shards to a local folder or an s3:// prefix.

A shard only appears at its final name once it is complete: locally it is written
to a hidden temporary file next to the target and renamed; on object storage it is
spooled to a local temporary file and uploaded in one `put` (S3 makes an object
visible only after the upload completes). A crash therefore never leaves a
half-written shard that a reader could mistake for a whole one.

Members get fixed metadata (mtime, owner, mode), so the same samples always give the
same bytes: shards are reproducible and can be compared by hash.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Iterable, Mapping

from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote


class TarWriteError(BergScaleError):
    """A member could not be added to a shard (bad name) or the shard could not be stored."""


@dataclass(frozen=True)
class WrittenShard:
    """Where a shard went and what it holds."""

    url: str
    members: int
    bytes: int


def validate_member_name(name: str) -> str:
    """Refuse names that are absolute, climb out of the archive or hide control bytes."""
    if not isinstance(name, str) or not name:
        raise TarWriteError("tar member name must be a non-empty string")
    if any(ord(ch) < 32 for ch in name) or "\\" in name:
        raise TarWriteError(f"tar member name {name!r} contains control characters or '\\'")
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise TarWriteError(
            f"tar member name {name!r} must be a relative path without '.', '..' or '//'"
        )
    return name


def validate_key(key: str) -> str:
    """A WebDataset key: the basename may not contain '.', because the key ends at the first dot."""
    validate_member_name(key)
    if "." in posixpath.basename(key):
        raise TarWriteError(
            f"sample key {key!r} has a '.' in its last path part; WebDataset keys end at the "
            "first dot, so replace it (e.g. with '_')"
        )
    return key


def _member_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def member_bytes(name: str, size: int, mtime: int = 0) -> int:
    """Exact bytes one member adds to a PAX archive: header(s) plus data padded to 512."""
    header = _member_info(name, size, mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    blocks, remainder = divmod(size, tarfile.BLOCKSIZE)
    return len(header) + (blocks + (remainder > 0)) * tarfile.BLOCKSIZE


def archive_bytes(members_end: int) -> int:
    """Final file size of an archive whose members end at `members_end`: two zero blocks,
    then padding to a whole tar record, as `tarfile` writes on close."""
    end = members_end + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class TarShardWriter:
    """Context manager that writes one tar shard and publishes it atomically on success."""

    def __init__(
        self, url: str, storage: StorageOptions | None = None, *, mtime: int = 0
    ) -> None:
        self.url = url
        self._fs, self._path = filesystem_for(url, storage)
        self._remote = is_remote(url)
        self._mtime = mtime
        self._members = 0
        self._closed = False
        if self._remote:
            handle, self._tmp_path = tempfile.mkstemp(prefix="berg-scale-shard-", suffix=".tar")
            os.close(handle)
        else:
            parent = os.path.dirname(self._path)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create folder {parent!r}: {exc}") from exc
            base = os.path.basename(self._path)
            self._tmp_path = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:12]}")
        self._file: IO[bytes] = open(self._tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def add_member(self, name: str, data: bytes) -> None:
        """Append one file; the order of calls is the order in the archive."""
        if self._closed:
            raise TarWriteError(f"shard {self.url} is already closed")
        validate_member_name(name)
        self._tar.addfile(_member_info(name, len(data), self._mtime), io.BytesIO(data))
        self._members += 1

    @property
    def members(self) -> int:
        return self._members

    @property
    def members_end(self) -> int:
        """Bytes written so far (the members; the end-of-archive blocks come on commit)."""
        return self._tar.offset

    def size_with(self, fields: Mapping[str, bytes], key: str) -> int:
        """The final shard size if the sample `key` with `fields` were added now."""
        extra = sum(member_bytes(f"{key}.{ext}", len(data), self._mtime) for ext, data in fields.items())
        return archive_bytes(self.members_end + extra)

    def add_sample(self, key: str, fields: Mapping[str, bytes]) -> None:
        """Append `<key>.<ext>` for every field, in the mapping's order (one sample)."""
        validate_key(key)
        for ext, data in fields.items():
            if not ext or ext.startswith(".") or "/" in ext:
                raise TarWriteError(f"bad extension {ext!r} for sample {key!r}")
            self.add_member(f"{key}.{ext}", data)

    def commit(self) -> WrittenShard:
        """Finish the archive and make it visible under its final name."""
        if self._closed:
            raise TarWriteError(f"shard {self.url} is already closed")
        self._closed = True
        try:
            self._tar.close()
            self._file.close()
            size = os.path.getsize(self._tmp_path)
            if self._remote:
                try:
                    self._fs.put_file(self._tmp_path, self._path)
                except Exception as exc:
                    raise StorageError(f"cannot upload shard to {self.url}: {exc}") from exc
            else:
                os.replace(self._tmp_path, self._path)
        finally:
            self._remove_tmp()
        return WrittenShard(url=self.url, members=self._members, bytes=size)

    def abort(self) -> None:
        """Throw the partial shard away; nothing appears at the target."""
        if self._closed:
            return
        self._closed = True
        try:
            self._tar.close()
        except Exception:
            pass
        self._file.close()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        try:
            os.remove(self._tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if not self._closed:
                self.commit()
        else:
            self.abort()


def write_tar(
    url: str,
    members: Iterable[tuple[str, bytes]],
    storage: StorageOptions | None = None,
) -> WrittenShard:
    """Write `(name, bytes)` pairs as one shard."""
    with TarShardWriter(url, storage) as writer:
        for name, data in members:
            writer.add_member(name, data)
        return writer.commit()


def upload_bytes(url: str, data: bytes, storage: StorageOptions | None = None) -> None:
    """Store raw bytes at `url` as they are (used for deliberately broken test shards)."""
    fs, path = filesystem_for(url, storage)
    if not is_remote(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with fs.open(path, "wb") as handle:
            handle.write(data)
    except Exception as exc:
        raise StorageError(f"cannot write {url}: {exc}") from exc
