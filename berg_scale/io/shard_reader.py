"""Stream the samples of one WebDataset tar shard from local disk or s3://.

The shard is read front to back once, with a background thread fetching the next
chunks while the caller decodes, so network latency hides behind CPU work. `.tar.gz`
and `.tgz` shards (or any shard whose bytes start like gzip) are decompressed on the
fly by that same thread.

Rows are images: every key of the shard becomes exactly one `TarSample`, whatever
the order of the members. The rules (also in docs/engine.md, "How tars are read"):

* **Keys.** WebDataset's rule: the key is the member path up to the first dot of its
  basename, the rest is the field extension (lower-cased). Empty and `.` path segments
  are dropped first, so `./x.png` (what `tar cf x.tar -C dir .` writes) is key `x`.
  A name byte that is not part of valid UTF-8 is written as `%XX` (uppercase hex), so
  keys, messages and Parquet strings are always valid text.
* **Merging.** Consecutive members of one key form a sample, as in WebDataset. Members
  of one key that are not adjacent are merged too: a key seen without an image is held
  (json only, bounded by `max_pending_bytes`) until its image arrives; a key that never
  gets one becomes a "no image member" error row at the end of the archive. A member of
  a key whose row was already given out (a second image, a late json) is ignored; so is
  a second version of one member name (`tar -r`, `tar -u`), which its note names as such
  since extraction would keep the last version.
* **Which keys are rows.** A key is a row once it has an image member (readable or in a
  format that is not decoded, such as `.heic`) or a json sidecar (`x.json`, or `x.b.json`
  beside `x.b.jpg`). A key with only other members (`README.md`, `labels.csv` in a tar
  of a whole folder) is not an image: one shard note counts such members.
* **Order.** Samples are yielded as soon as their image group is complete; `index` is
  the key's rank by the first appearance of its image or json member (0..n-1, unique),
  so sorting by `index` gives tar order. For WebDataset-ordered shards both orders
  agree except that keys without an image come last.
* **Member types.** Hard links resolve to the bytes of the member they link to.
  Symbolic links, devices and FIFOs are never followed: named like an image (or json)
  they give an error row (or note) naming the member. Folders are skipped.
* **Members of no row.** Hidden members (a basename starting with `.`, such as macOS's
  AppleDouble `._x.jpg`), members without an extension, members of keys that are not
  rows and members of a key whose row was already given out belong to no sample. They
  are skipped, but never silently: each kind becomes one shard note (`shard_notes`)
  with its count and its first member.

Two kinds of trouble are kept apart:

* **Sample problems** (no image member, an oversized member, an unreadable json) are
  reported on the sample itself (`TarSample.error` / `notes`), so they become error
  rows (or notes in the shard's commit marker) and the rest of the shard still counts.
* **Archive problems** (cut short, a garbage header, not a tar at all, a damaged gzip
  stream) raise `ShardReadError`. Python's tarfile quietly stops at a damaged header
  after the first one; here the end of the archive is verified, so a truncated shard
  can never pass for a shorter complete one.

Storage errors (network, permissions) propagate unchanged, so a scheduler can retry
them; `ShardReadError` is permanent for the bytes as stored.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import tarfile
import zlib
from collections import OrderedDict
from typing import Any, BinaryIO, Iterator

from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.read_ahead import ReadAhead
from berg_scale.io.shard_listing import SHARD_SUFFIXES
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join
from berg_scale.io.tar_header import FastTarInfo
from berg_scale.io.tar_sample import TarSample

# One extension (or more) for every format decode.py documents: JPEG, MPO, PNG, WebP,
# BMP, TIFF and GIF. A member with any other extension is not an image member.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "mpo", "png", "webp", "bmp", "tif", "tiff", "gif")
# Image formats decode.py cannot read. A key holding one is an image its user expects a
# row for, so it gets an error row naming what was found rather than a note.
UNREADABLE_IMAGE_EXTENSIONS = (
    "heic", "heif", "avif", "jxl", "jp2", "j2k", "jpx", "ico", "svg", "psd", "tga", "ppm",
    "pgm", "pbm", "pnm", "exr", "hdr", "dng", "cr2", "nef", "arw", "raw",
)
JSON_EXTENSION = "json"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_READ_AHEAD_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_JSON_BYTES = 1024 * 1024
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
DEFAULT_LINK_CACHE_BYTES = 32 * 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_GZIP_MAGIC = b"\x1f\x8b"
_PENDING_OVERHEAD_BYTES = 256  # charged per held key for its bookkeeping objects
_DAMAGED_GZIP = (gzip.BadGzipFile, EOFError, zlib.error)
_REPACK_ADVICE = (
    "re-pack it with `berg-scale make-shards` or `tar --sort=name` so that each "
    "sample's members are adjacent"
)


def escape_name(name: str) -> str:
    """`name` with every byte that was not valid UTF-8 written as `%XX` (uppercase hex).

    tarfile decodes member names with `surrogateescape`, so such bytes arrive as lone
    surrogates, which no encoder (Parquet, JSON, a terminal) accepts. Valid text,
    including a literal `%`, is left as it is, so keys of well-formed names never change.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    parts = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
            parts.append(f"%{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:  # any other lone surrogate: its UTF-8-style bytes
            parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            parts.append(char)
    return "".join(parts)


def normalise_member_name(name: str) -> str:
    """The member path a key is taken from: escaped, without empty or `.` segments.

    `./x.png`, `/x.png` and `a//b.png` name the same file as `x.png` and `a/b.png` for
    every tar extractor, so they must give the same key.
    """
    return "/".join(part for part in escape_name(name).split("/") if part not in ("", "."))


class ShardReadError(BergScaleError):
    """The tar itself is damaged or missing; retrying the same bytes will not help."""

    def __init__(self, url: str, reason: str) -> None:
        url, reason = escape_name(url), escape_name(reason)
        super().__init__(
            f"cannot read shard {url}: {reason} (re-create or re-upload the shard)"
        )
        self.url = url
        self.reason = reason


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset's key/extension split (extension lower-cased, as WebDataset does by
    default) of the normalised name, or None for names that belong to no sample."""
    return _split_normalised(normalise_member_name(name))


def _split_normalised(name: str) -> tuple[str, str] | None:
    """`split_member_name` of a name that is already normalised (normalising is idempotent)."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    if not stem or not ext:
        return None
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def _unkeyed_kind(name: str) -> str:
    """Why a normalised member name gives no key: hidden, or without an extension."""
    return "hidden" if posixpath.basename(name).startswith(".") else "no extension"


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
    """A forward-reading file that a `ReadAhead` thread keeps `depth` chunks ahead of the reader.

    Seeks forward are free (skipped data is simply dropped); seeks backward work within
    the current and previous chunk, which is all tar parsing needs.
    """

    def __init__(self, raw: BinaryIO | io.RawIOBase, chunk_bytes: int, depth: int) -> None:
        super().__init__()
        self._raw = raw
        self._chunk_bytes = max(int(chunk_bytes), 2 * _BLOCK)
        self._pos = 0
        self._chunk = b""
        self._chunk_start = 0
        self._previous = b""
        self._eof = False
        self._ahead: ReadAhead[bytes] | None = None
        self._chunks: Iterator[bytes] = _chunks_of(raw, self._chunk_bytes)
        if depth > 0:
            self._ahead = ReadAhead(self._chunks, depth=depth, name="shard-read-ahead")
            self._chunks = self._ahead

    def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        try:
            return next(self._chunks)
        except StopIteration:
            self._eof = True
            return None
        except BaseException:
            self._eof = True
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def retained_start(self) -> int:
        """The first offset a backward seek can still reach (the previous chunk's start)."""
        return self._chunk_start - len(self._previous)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("read-ahead files cannot seek from the end")
        retained_start = self.retained_start()
        if offset < retained_start:
            raise io.UnsupportedOperation(
                f"cannot seek back to {offset}; data before {retained_start} is gone"
            )
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        begin = self._pos - self._chunk_start
        if size is not None and size >= 0 and begin >= 0 and begin + size <= len(self._chunk):
            self._pos += size  # the usual case: a header or member inside the current chunk
            return self._chunk[begin : begin + size]
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
        if self._ahead is not None:
            self._ahead.close(timeout=30)  # the thread may be inside a network read
        try:
            self._raw.close()
        finally:
            super().close()


def _chunks_of(raw: BinaryIO | io.RawIOBase, chunk_bytes: int) -> Iterator[bytes]:
    """The bytes of `raw` in pieces of at most `chunk_bytes`, until it is exhausted."""
    while True:
        data = raw.read(chunk_bytes)
        if not data:
            return
        yield data


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
    return ReadAheadFile(raw, chunk_bytes, _read_ahead_depth(chunk_bytes, read_ahead_bytes))


def _read_ahead_depth(chunk_bytes: int, read_ahead_bytes: int) -> int:
    return max(0, read_ahead_bytes // max(chunk_bytes, 1))


class _GunzipStream(io.RawIOBase):
    """The decompressed bytes of the gzip stream in `compressed`, which it owns.

    It sits under a ReadAheadFile, so decompression runs in the read-ahead thread and
    tarfile's small backward seeks are served from decompressed chunks already held (a
    GzipFile seeking backwards would decompress again from the start).
    """

    def __init__(self, compressed: ReadAheadFile) -> None:
        super().__init__()
        self._compressed = compressed
        self._gzip = gzip.GzipFile(fileobj=compressed, mode="rb")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._gzip.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self._gzip.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._gzip.close()
        finally:
            try:
                self._compressed.close()
            finally:
                super().close()


class _ShardStream:
    """The tar bytes of one shard as a forward stream, plus re-reads of earlier ranges.

    Re-reads serve hard links, whose target member came earlier in the stream: from the
    chunks still held; else, uncompressed, with one ranged read of the stored file;
    compressed, from the bytes remembered for recent members (`link_cache_bytes`), else
    by decompressing the shard again up to the target (a gzip stream cannot be entered
    in the middle). Offsets are positions in the (decompressed) tar stream.
    """

    def __init__(
        self,
        url: str,
        storage: StorageOptions | None,
        chunk_bytes: int,
        read_ahead_bytes: int,
        link_cache_bytes: int,
    ) -> None:
        self.url = url
        self.storage = storage
        self.chunk_bytes = chunk_bytes
        self.read_ahead_bytes = read_ahead_bytes
        self.link_cache_bytes = link_cache_bytes
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0
        raw = _open_shard(url, storage, chunk_bytes, read_ahead_bytes)
        try:
            self.magic = raw.read(6)  # what the bytes start with, to name a format that is not tar
            raw.seek(0)
            magic = self.magic[: len(_GZIP_MAGIC)]
            self.compressed = url.endswith(COMPRESSED_SUFFIXES) or magic == _GZIP_MAGIC
            if self.compressed:
                depth = _read_ahead_depth(chunk_bytes, read_ahead_bytes)
                self.handle = ReadAheadFile(_GunzipStream(raw), chunk_bytes, depth)
            else:
                self.handle = raw
        except BaseException:
            raw.close()
            raise

    def remember(self, offset: int, data: bytes) -> None:
        """Keep a member's bytes just read, in case a hard link names it (compressed only)."""
        if not self.compressed or not data or len(data) > self.link_cache_bytes:
            return
        self._cache[offset] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > self.link_cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)

    def read_again(self, offset: int, size: int) -> bytes:
        """`size` bytes of the tar stream from `offset`, which lies behind the reader."""
        if size == 0:
            return b""
        cached = self._cache.get(offset)
        if cached is not None and len(cached) == size:
            self._cache.move_to_end(offset)
            return cached
        if offset >= self.handle.retained_start():
            # tarfile seeks back to its own position before the next header.
            self.handle.seek(offset)
            data = self.handle.read(size)
        elif not self.compressed:
            fs, path = filesystem_for(self.url, self.storage)
            data = fs.cat_file(path, start=offset, end=offset + size)
        else:
            again = _ShardStream(self.url, self.storage, self.chunk_bytes, self.read_ahead_bytes, 0)
            try:
                again.handle.seek(offset)
                data = again.handle.read(size)
            finally:
                again.close()
        if len(data) != size:
            raise StorageError(
                f"reading {escape_name(self.url)} again at byte {offset} for a hard link gave "
                f"{len(data)} of {size} bytes: the shard changed while it was read; retry"
            )
        return data

    def drain(self) -> None:
        """Decompress to the end of the gzip stream, so that its CRC and length are checked.

        Deflate stores incompressible data (JPEG, PNG) verbatim, so a flipped byte in an
        image would otherwise pass unnoticed; data after the stream is refused the same way.
        """
        while self.handle.read(self.chunk_bytes):
            pass

    def close(self) -> None:
        self.handle.close()


class _SampleBuilder:
    """Collects the fields of one key, from members that may lie far apart, into a sample."""

    def __init__(self, key: str, late: bool = False) -> None:
        self.key = key
        self.index: int | None = None  # given when a member claims a row (`_claims_a_row`)
        self.first_member = ""
        self.late = late  # this key's row was already given out: its members are ignored
        self.extensions: list[str] = []
        self.data: dict[str, bytes] = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.held_bytes = 0

    def add_extension(self, ext: str) -> None:
        if ext not in self.extensions:
            self.extensions.append(ext)

    def has_image_member(self) -> bool:
        """Any member named like an image, readable or not: the key's row can be given out."""
        return image_field(self.extensions) is not None

    def memory_bytes(self) -> int:
        """What holding this key costs while it waits for its image (json bytes dominate)."""
        texts = [self.key, *self.extensions, *self.notes, *self.skipped.values()]
        return (
            _PENDING_OVERHEAD_BYTES
            + sum(len(text) for text in texts)
            + sum(len(data) for data in self.data.values())
        )

    def build(self) -> TarSample:
        notes = list(self.notes)
        read = [ext for ext in self.extensions if ext in self.data]
        image_ext = image_field(read) or image_field(self.extensions)
        image = self.data.get(image_ext) if image_ext else None
        error = None
        unreadable = [ext for ext in self.extensions if ext.rsplit(".", 1)[-1] in UNREADABLE_IMAGE_EXTENSIONS]
        if image_ext is None and unreadable:
            error = (
                f"image member in a format that is not decoded ({unreadable[0]}; read are "
                f"{', '.join(IMAGE_EXTENSIONS)}): convert it, e.g. to JPEG or PNG"
            )
        elif image_ext is None:
            found = ", ".join(self.extensions) or "nothing"
            error = f"no image member (found: {found})"
        elif image is None:
            error = self.skipped.get(image_ext, f"image member {image_ext!r} was not read")
        extra = [e for e in self.extensions if e != image_ext and image_field([e])]
        if extra:
            notes.append(f"extra image members ignored: {', '.join(extra)}")
        parsed = None
        json_ext = _json_field([ext for ext in self.extensions if ext in self.data]) \
            or _json_field(self.extensions)
        raw_json = self.data.get(json_ext) if json_ext else None
        if raw_json is not None:
            parsed, note = _parse_json(raw_json)
            if note is not None:
                notes.append(note)
        elif json_ext in self.skipped:
            notes.append(self.skipped[json_ext])
        assert self.index is not None, "only a key with a member that claims a row is built"
        return TarSample(
            key=self.key,
            index=self.index,
            image=image,
            image_ext=image_ext if image is not None else None,
            json=parsed,
            error=error,
            notes=tuple(notes),
        )


def _parse_json(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A sidecar's object, or why there is none: a bad sidecar must never sink the shard."""
    try:
        value = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None, "json member is not valid JSON"
    except RecursionError:
        return None, "json member is nested too deeply to parse"
    except Exception as exc:  # noqa: BLE001 - any parser failure is a note, never fatal
        return None, f"json member could not be parsed ({type(exc).__name__})"
    if not isinstance(value, dict):
        return None, "json member is not an object"
    return value, None


def is_json_field(ext: str) -> bool:
    """`json`, or a dotted sidecar such as `b.c.json` beside `b.c.jpg` (key `a` of `a.b.c.*`)."""
    return ext == JSON_EXTENSION or ext.endswith("." + JSON_EXTENSION)


def _json_field(extensions: list[str]) -> str | None:
    """The sidecar of a key: an exact `json` first, then the first dotted one (a key with
    both, e.g. WebDataset's `x.json` and `x.meta.json`, reads only `x.json`, as before)."""
    if JSON_EXTENSION in extensions:
        return JSON_EXTENSION
    return next((ext for ext in extensions if is_json_field(ext)), None)


_OTHER_COMPRESSIONS = (
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"),
    (b"\xfd7zXZ\x00", "xz", "xz -d"),
    (b"BZh", "bzip2", "bzip2 -d"),
    (b"\x04\x22\x4d\x18", "lz4", "lz4 -d"),
)


def _other_compression(magic: bytes) -> tuple[str, str] | None:
    """(format, decompress command) for the start of a compressed stream that is not gzip."""
    for prefix, name, tool in _OTHER_COMPRESSIONS:
        if magic.startswith(prefix):
            return name, tool
    return None


def _wanted(ext: str) -> bool:
    return is_json_field(ext) or image_field([ext]) is not None


def _claims_a_row(ext: str) -> bool:
    """A member that makes its key a row: an image (readable or not) or a json sidecar.

    A key with only other members (README.md, labels.csv, LICENSE.txt in a tar of a
    whole folder) is not an image: it gets a shard note, never an error row.
    """
    return _wanted(ext) or ext.rsplit(".", 1)[-1] in UNREADABLE_IMAGE_EXTENSIONS


def _member_kind(member: tarfile.TarInfo) -> str:
    """Why a member that is neither a file nor a hard link gives no bytes."""
    if member.issym():
        return "is a symbolic link (not followed)"
    if member.ischr():
        return "is a character device"
    if member.isblk():
        return "is a block device"
    if member.isfifo():
        return "is a FIFO (named pipe)"
    kind = member.type.decode("ascii", "backslashreplace")
    return f"has tar member type {kind!r}, which holds no file data"


class _SkippedMembers:
    """Members that belong to no row, as a count and the first one's name: one note per
    kind tells the user what was left out, however many members a shard holds."""

    def __init__(self, template: str) -> None:
        self.template = template  # fields: count, members ("member"/"members"), first
        self.count = 0
        self.first = ""

    def add(self, shown: str) -> None:
        if not self.count:
            self.first = shown
        self.count += 1

    def note(self) -> str | None:
        if not self.count:
            return None
        members = "member" if self.count == 1 else "members"
        return self.template.format(count=self.count, members=members, first=self.first)


class _KeyedSamples:
    """One sample per key from the member stream of one tar (rules: module docstring)."""

    def __init__(
        self,
        stream: _ShardStream,
        max_member_bytes: int,
        max_json_bytes: int,
        max_pending_bytes: int,
    ) -> None:
        self.stream = stream
        self.url = stream.url
        self.max_member_bytes = max_member_bytes
        self.max_json_bytes = max_json_bytes
        self.max_pending_bytes = max_pending_bytes
        self.next_index = 0
        self.given_out: set[str] = set()
        self.pending: dict[str, _SampleBuilder] = {}
        self.pending_bytes = 0
        # normalised member name -> (offset_data, size) of the bytes it names, so a hard
        # link can be read; a later member of the same name replaces it, as on extraction
        self.locations: dict[str, tuple[int, int]] = {}
        self.members_seen = 0
        self.skipped = {
            "hidden": _SkippedMembers("{count} hidden {members} skipped (first: {first!r})"),
            "no extension": _SkippedMembers("{count} {members} without an extension skipped (first: {first!r})"),
            "late": _SkippedMembers(
                "{count} {members} ignored after the key's row was given out (first: {first!r})"),
            "not an image": _SkippedMembers(
                "{count} {members} of keys with no image or json member skipped, as not images "
                "(first: {first!r})"),
            "replaced": _SkippedMembers(
                "{count} later {members} of a name already read ignored (first: {first!r}): the rows "
                "hold the first version, while tar -x would keep the last (tar -r and tar -u append "
                "new versions); re-create the tar with tar -c or berg-scale make-shards to use them"),
        }

    def shard_notes(self) -> list[str]:
        """The notes about members of no row, once the whole archive has been read."""
        notes = [note for note in (skipped.note() for skipped in self.skipped.values()) if note is not None]
        if self.next_index == 0 and not notes:
            what = "an empty archive" if self.members_seen == 0 else "folders only"
            notes.append(f"the tar holds no files ({what}): no rows")
        return notes

    def __iter__(self) -> Iterator[TarSample]:
        handle = self.stream.handle
        try:
            archive = tarfile.open(
                fileobj=handle, mode="r:", encoding="utf-8", errors="surrogateescape", tarinfo=FastTarInfo
            )
        except tarfile.ReadError as exc:
            inside = " inside the gzip stream" if self.stream.compressed else ""
            other = None if self.stream.compressed else _other_compression(self.stream.magic)
            if other is not None:
                name, tool = other
                raise ShardReadError(
                    self.url, f"not a readable tar: its bytes are {name}-compressed, which shards may not "
                    f"be (only gzip is read); decompress it ({tool}c {posixpath.basename(self.url)} > "
                    f"plain.tar) or re-pack it as .tar or .tar.gz") from None
            raise ShardReadError(self.url, f"not a readable tar{inside} ({exc})") from None
        current: _SampleBuilder | None = None
        while True:
            try:
                member = archive.next()
            except tarfile.ReadError as exc:
                raise ShardReadError(self.url, f"damaged tar ({exc})") from None
            if member is None:
                break
            archive.members.clear()  # type: ignore[attr-defined]  # earlier TarInfo objects: flat memory
            self.members_seen += 1
            if member.size < 0:
                raise ShardReadError(
                    self.url,
                    f"damaged tar: member {escape_name(member.name)!r} (header at byte "
                    f"{member.offset}) gives a negative size ({member.size})",
                )
            if member.isdir():
                continue
            name = normalise_member_name(member.name)
            replaces = name in self.locations  # a second version of one file (tar -r, tar -u)
            self._locate(member, name)
            parsed = _split_normalised(name)
            if parsed is None:
                if name:
                    self.skipped[_unkeyed_kind(name)].add(escape_name(member.name))
                continue
            key, ext = parsed
            wanted = _wanted(ext)
            if not wanted and not (member.isreg() or member.islnk()):
                continue  # e.g. a symbolic link x.txt: nothing a row would report
            if current is None or key != current.key:
                sample = self._finish(current)
                if sample is not None:
                    yield sample
                current = self._builder_for(key)
            if not current.late:
                self._add(current, member, name, ext, wanted)
            else:
                self.skipped["replaced" if replaces else "late"].add(escape_name(member.name))
        _verify_end_of_archive(self.url, handle, archive.offset)
        if self.stream.compressed:
            self.stream.drain()
        sample = self._finish(current)
        if sample is not None:
            yield sample
        for builder in self.pending.values():
            if builder.index is None:
                self.skipped["not an image"].add(builder.first_member)
        claimed = [builder for builder in self.pending.values() if builder.index is not None]
        for builder in sorted(claimed, key=lambda held: held.index or 0):
            yield builder.build()

    def _locate(self, member: tarfile.TarInfo, name: str) -> None:
        if member.isreg() and not member.issparse():
            self.locations[name] = (member.offset_data, member.size)
            return
        target = None
        if member.islnk():
            target = self.locations.get(normalise_member_name(member.linkname))
        if target is None:
            self.locations.pop(name, None)
        else:
            self.locations[name] = target

    def _builder_for(self, key: str) -> _SampleBuilder:
        held = self.pending.pop(key, None)
        if held is not None:  # the rest of a key seen earlier without its image
            self.pending_bytes -= held.held_bytes
            return held
        return _SampleBuilder(key, late=key in self.given_out)

    def _finish(self, builder: _SampleBuilder | None) -> TarSample | None:
        """The sample of a completed group, or None while the key still waits for an image."""
        if builder is None or builder.late:
            return None
        if builder.has_image_member():
            self.given_out.add(builder.key)
            return builder.build()
        builder.held_bytes = builder.memory_bytes()
        self.pending[builder.key] = builder
        self.pending_bytes += builder.held_bytes
        if self.pending_bytes > self.max_pending_bytes:
            raise ShardReadError(
                self.url,
                f"{len(self.pending)} keys seen without an image member so far (latest "
                f"{builder.key!r}) hold {self.pending_bytes} bytes while waiting for their "
                f"images, above the {self.max_pending_bytes}-byte limit: the members of "
                f"its samples are far apart; {_REPACK_ADVICE}",
            )
        return None

    def _add(
        self, builder: _SampleBuilder, member: tarfile.TarInfo, name: str, ext: str, wanted: bool
    ) -> None:
        shown = escape_name(member.name)
        builder.add_extension(ext)
        if not builder.first_member:
            builder.first_member = shown
        if builder.index is None and _claims_a_row(ext):
            builder.index = self.next_index  # the key's rank: where its first image or json lies
            self.next_index += 1
        if not wanted:
            return
        if ext in builder.data or ext in builder.skipped:
            builder.notes.append(f"duplicate member {shown!r} ignored")
            return
        limit = self.max_json_bytes if is_json_field(ext) else self.max_member_bytes
        problem = None
        data = b""
        if member.isreg():
            if member.issparse():
                problem = f"member {shown!r} is a sparse file (unsupported)"
            elif member.size > limit:
                problem = f"member {shown!r} is {member.size} bytes, above the {limit}-byte limit"
            else:
                data = self._read_member(member, shown)
        elif member.islnk():
            target = self.locations.get(name)
            if target is None:
                problem = (
                    f"member {shown!r} is a hard link to {escape_name(member.linkname)!r}, "
                    "which is not a regular file earlier in the archive"
                )
            elif target[1] > limit:
                problem = (
                    f"member {shown!r} (a hard link) is {target[1]} bytes, above the "
                    f"{limit}-byte limit"
                )
            else:
                data = self.stream.read_again(*target)
        else:
            problem = f"member {shown!r} {_member_kind(member)}"
        if problem is not None:
            builder.skipped[ext] = problem
        else:
            builder.data[ext] = data

    def _read_member(self, member: tarfile.TarInfo, shown: str) -> bytes:
        handle = self.stream.handle
        handle.seek(member.offset_data)
        data = handle.read(member.size)
        if len(data) != member.size:
            raise ShardReadError(
                self.url,
                f"truncated inside member {shown!r} ({len(data)} of {member.size} bytes present)",
            )
        self.stream.remember(member.offset_data, data)
        return data


def iter_shard_samples(
    url: str,
    storage: StorageOptions | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    link_cache_bytes: int = DEFAULT_LINK_CACHE_BYTES,
    shard_notes: list[str] | None = None,
) -> Iterator[TarSample]:
    """Yield one sample per key of one shard; raises ShardReadError on a damaged tar.

    `read_ahead_bytes=0` reads synchronously. Only image and json members are loaded
    into memory; members above `max_member_bytes` (json: `max_json_bytes`) become sample
    errors (notes) instead. Keys waiting for an image member that comes later may hold
    `max_pending_bytes` in all; beyond that the shard is refused with advice to re-pack
    it, rather than memory growing with the shard. Compressed shards keep the bytes of
    recent members (`link_cache_bytes`) so that hard links to them need no second pass.

    Members that belong to no sample (hidden, without an extension, late) are appended to
    `shard_notes`, one note per kind, once the last sample has been yielded: they are known
    only at the end of the archive, and no sample is theirs to carry the note.
    """
    stream = _ShardStream(url, storage, chunk_bytes, read_ahead_bytes, link_cache_bytes)
    try:
        samples = _KeyedSamples(stream, max_member_bytes, max_json_bytes, max_pending_bytes)
        yield from samples
        if shard_notes is not None:
            shard_notes.extend(samples.shard_notes())
    except _DAMAGED_GZIP as exc:
        if not stream.compressed:
            raise
        raise ShardReadError(url, f"damaged gzip stream ({type(exc).__name__}: {exc})") from None
    finally:
        stream.close()


_TRAILER_CHUNK = 1 << 20


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
    # Tar readers stop at the first zero block, so a second archive appended with `cat`
    # would be dropped without a word; the rest of the file must be zeros (padding).
    position = offset + _BLOCK
    while chunk := handle.read(_TRAILER_CHUNK):
        stripped = chunk.lstrip(b"\0")
        if stripped:
            first = position + len(chunk) - len(stripped)
            raise ShardReadError(
                url,
                f"holds data after its end-of-archive marker (at byte {offset}; data from byte "
                f"{first}), e.g. a second tar appended with `cat a.tar b.tar`, which tar readers "
                "ignore; join tars with `tar --concatenate`, or re-pack the images with make-shards",
            )
        position += len(chunk)


def read_shard(url: str, storage: StorageOptions | None = None, **options: Any) -> list[TarSample]:
    """All samples of a shard in tar order (by `index`), for small shards and tests."""
    return sorted(iter_shard_samples(url, storage, **options), key=lambda sample: sample.index)


def list_tar_shards(prefix: str, storage: StorageOptions | None = None) -> list[str]:
    """Sorted URLs of the shards (`.tar`, `.tar.gz`, `.tgz`) directly under a folder or prefix."""
    fs, path = filesystem_for(prefix, storage)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = sorted(
        posixpath.basename(entry.rstrip("/"))
        for entry in entries
        if entry.endswith(SHARD_SUFFIXES) and not posixpath.basename(entry).startswith(".")
    )
    return [join(prefix, name) for name in names]


__all__ = [
    "IMAGE_EXTENSIONS",
    "ReadAheadFile",
    "ShardReadError",
    "TarSample",
    "escape_name",
    "image_field",
    "iter_shard_samples",
    "list_tar_shards",
    "normalise_member_name",
    "read_shard",
    "split_member_name",
]
