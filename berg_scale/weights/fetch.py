"""Resumable copying of BERG files from object storage into a local BERG root.

BERG's ViT weight files are 0.5-0.8 GB each, so a broken connection must not cost the
bytes already received: every file is written to `<file>.part` with ranged reads that
continue from the part's size, and renamed into place only once its size (and sha256,
when known) is right. A file whose final name exists therefore is always complete,
which is what lets other processes read the root while a fetch is running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import fsspec

from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join, to_url
from berg_scale.io.storage_errors import endpoint_of_filesystem, exception_chain, translate_storage_error
from berg_scale.weights.locking import directory_lock
from berg_scale.weights.selection import DEFAULT_BUCKET, DEFAULT_REGION, files_for_readouts

CHUNK_BYTES = 8 * 1024 * 1024
# One S3 connection gives well under 100 MB/s; a few ranges in flight fill a node's link.
CONCURRENT_RANGES = 4
PART_SUFFIX = ".part"
PART_INFO_SUFFIX = ".part.json"

# What a file's local copy looks like before a fetch, and what the fetch did with it.
PRESENT, MISSING, PARTIAL, CORRUPT = "present", "missing", "partial", "corrupt"
DOWNLOADED, RESUMED = "downloaded", "resumed"


@dataclass
class FileStatus:
    """One file of a fetch: its remote size, local state, and bytes moved for it."""

    path: str
    size: int
    state: str
    local_bytes: int = 0
    transferred: int = 0
    sha256: str | None = None

    @property
    def needs_transfer(self) -> int:
        if self.state == PRESENT:
            return 0
        return self.size - (self.local_bytes if self.state == PARTIAL else 0)


@dataclass
class FetchReport:
    """What a fetch found and did; `dry_run` reports carry the plan only."""

    source: str
    dest: str
    files: list[FileStatus] = field(default_factory=list)
    dry_run: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_to_transfer(self) -> int:
        return sum(f.needs_transfer for f in self.files)

    @property
    def bytes_transferred(self) -> int:
        return sum(f.transferred for f in self.files)

    @property
    def downloaded(self) -> list[str]:
        return [f.path for f in self.files if f.state in (DOWNLOADED, RESUMED)]

    @property
    def skipped(self) -> list[str]:
        return [f.path for f in self.files if f.state == PRESENT]

    def table(self) -> str:
        """A plain listing (state, size, path) for --dry-run and logs."""
        lines = [f"{f.state:<10} {human_bytes(f.size):>10}  {f.path}" for f in self.files]
        lines.append(
            f"{len(self.files)} files, {human_bytes(self.total_bytes)} in total, "
            f"{human_bytes(self.bytes_to_transfer)} to transfer"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        if self.dry_run:
            return f"dry run: {human_bytes(self.bytes_to_transfer)} would be transferred"
        return (
            f"{len(self.downloaded)} files fetched ({human_bytes(self.bytes_transferred)}), "
            f"{len(self.skipped)} already present, into {self.dest}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dest": self.dest,
            "dry_run": self.dry_run,
            "files": [vars(f) for f in self.files],
            "bytes_transferred": self.bytes_transferred,
        }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def load_hashes(path: str) -> dict[str, str]:
    """Expected sha256 per relative path, from `sha256sum` output or a JSON mapping."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise BergScaleError(f"cannot read hashes file {path}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BergScaleError(f"hashes file {path} is not valid JSON: {exc}") from None
        items = list(mapping.items()) if isinstance(mapping, dict) else []
    else:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            digest, _, name = line.strip().partition(" ")
            items.append((name.strip().lstrip("*"), digest))
    hashes: dict[str, str] = {}
    for name, digest in items:
        digest = str(digest).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BergScaleError(
                f"hashes file {path}: {name!r} has no valid sha256 (64 hex digits), got {digest!r}"
            )
        hashes[str(name).lstrip("./")] = digest
    return hashes


def _check_relative(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise BergScaleError(f"refusing file path {path!r}: it must be relative, without '..'")
    return "/".join(parts)


BERG_ACCESS_HINT = (
    "BERG's public bucket needs anonymous access (--anon, region us-west-2), a private "
    "bucket needs credentials and --no-anon"
)


def _storage_error(exc: BaseException, url: str, fs: fsspec.AbstractFileSystem | None = None) -> StorageError:
    """One line for a failed read of the source, with BERG's access rules when they matter."""
    translated = translate_storage_error(
        exc, url, what="read", endpoint=endpoint_of_filesystem(fs) if fs is not None else None,
        anonymous_hint=BERG_ACCESS_HINT,
    )
    if translated is None:
        translated = StorageError(f"cannot read {url}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    return translated


def _missing_bucket(exc: BaseException) -> bool:
    """A missing bucket is a wrong --bucket, not a list of missing files."""
    return any(
        (getattr(item, "response", None) or {}).get("Error", {}).get("Code") == "NoSuchBucket"
        for item in exception_chain(exc)
        if isinstance(getattr(item, "response", None), dict)
    )


def _read_part_info(path: str) -> dict[str, Any] | None:
    try:
        with open(path + PART_INFO_SUFFIX, encoding="utf-8") as handle:
            info = json.load(handle)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _local_state(target: str, size: int, etag: str | None) -> tuple[str, int]:
    """Classify the local copy of one file: present, partial (resumable), corrupt, missing."""
    if os.path.isfile(target):
        return (PRESENT, size) if os.path.getsize(target) == size else (CORRUPT, 0)
    part = target + PART_SUFFIX
    if os.path.isfile(part):
        have = os.path.getsize(part)
        info = _read_part_info(target)
        same_object = info is None or (info.get("size") == size and info.get("etag") == etag)
        if same_object and 0 < have <= size:
            return PARTIAL, have
    return MISSING, 0


def plan_files(
    fs: fsspec.AbstractFileSystem, source_root: str, files: Sequence[str], dest: str
) -> tuple[list[FileStatus], dict[str, str | None]]:
    """Remote sizes and local states of `files`; raises naming every file the source lacks."""
    statuses: list[FileStatus] = []
    etags: dict[str, str | None] = {}
    missing: list[str] = []
    for rel in files:
        rel = _check_relative(rel)
        remote = join(source_root, rel)
        try:
            info = fs.info(remote)
        except FileNotFoundError as exc:
            if _missing_bucket(exc):
                raise _storage_error(exc, to_url(fs, remote), fs) from None
            missing.append(rel)
            continue
        except Exception as exc:  # noqa: BLE001 - botocore's errors are not all OSErrors
            if translate_storage_error(exc) is None:
                raise
            raise _storage_error(exc, to_url(fs, remote), fs) from None
        if info.get("type", "file") != "file" or info.get("size") is None:
            missing.append(rel)
            continue
        size = int(info["size"])
        etag = info.get("ETag") or info.get("etag")
        etags[rel] = str(etag) if etag is not None else None
        state, have = _local_state(os.path.join(dest, rel), size, etags[rel])
        statuses.append(FileStatus(rel, size, state, local_bytes=have))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BergScaleError(
            f"{len(missing)} needed file(s) are not in {to_url(fs, source_root)}: {shown}; "
            "check the bucket/prefix (--bucket) and the subjects/ROIs requested"
        )
    return statuses, etags


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    _hash_prefix(path, digest)
    return digest.hexdigest()


def _hash_prefix(path: str, digest: "hashlib._Hash") -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)


def _transfer(
    fs: fsspec.AbstractFileSystem,
    remote: str,
    status: FileStatus,
    target: str,
    etag: str | None,
    expected_sha256: str | None,
    bar: Any,
    chunk_bytes: int,
    concurrency: int,
) -> None:
    """Bring one file from its current local state to complete, published under `target`."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = target + PART_SUFFIX
    start = status.local_bytes if status.state == PARTIAL else 0
    if start == 0:
        _remove(part)
        with open(target + PART_INFO_SUFFIX, "w", encoding="utf-8") as handle:
            json.dump({"size": status.size, "etag": etag}, handle)
    digest = hashlib.sha256()
    if start:
        _hash_prefix(part, digest)
    with open(part, "ab") as handle:
        offset = start
        while offset < status.size:
            # A window of ranges is read concurrently and appended in order, so the part
            # file always stays a prefix of the object (an interruption loses one window).
            ranges = []
            for _ in range(max(1, concurrency)):
                if offset >= status.size:
                    break
                end = min(offset + chunk_bytes, status.size)
                ranges.append((offset, end))
                offset = end
            try:
                blocks = fs.cat_ranges(
                    [remote] * len(ranges), [r[0] for r in ranges], [r[1] for r in ranges],
                    on_error="raise",
                )
            except Exception as exc:  # noqa: BLE001 - botocore's errors are not all OSErrors
                if translate_storage_error(exc) is None:
                    raise
                raise _storage_error(exc, to_url(fs, remote), fs) from None
            for (first, last), data in zip(ranges, blocks):
                if len(data) != last - first:
                    raise StorageError(
                        f"{to_url(fs, remote)} returned {len(data)} bytes for range "
                        f"{first}-{last}; the object changed during the fetch: run it again"
                    )
                handle.write(data)
                digest.update(data)
                status.transferred += len(data)
                bar.update(len(data))
        handle.flush()
        os.fsync(handle.fileno())
    actual = os.path.getsize(part)
    if actual != status.size:
        _remove(part)
        raise StorageError(f"{status.path}: got {actual} bytes, expected {status.size}; run again")
    status.sha256 = digest.hexdigest()
    if expected_sha256 and status.sha256 != expected_sha256:
        _remove(part)
        _remove(target + PART_INFO_SUFFIX)
        raise StorageError(
            f"{status.path}: sha256 {status.sha256} does not match the expected "
            f"{expected_sha256}; the partial file was removed, run again (if it repeats, "
            "the source or the hashes file is wrong)"
        )
    os.replace(part, target)
    _remove(target + PART_INFO_SUFFIX)
    status.state = RESUMED if start else DOWNLOADED


def fetch_files(
    fs: fsspec.AbstractFileSystem,
    source_root: str,
    files: Iterable[str],
    dest: str,
    *,
    hashes: dict[str, str] | None = None,
    dry_run: bool = False,
    progress: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    concurrency: int = CONCURRENT_RANGES,
    lock_timeout_s: float = 3600.0,
    lock: bool = True,
) -> FetchReport:
    """Copy `files` (relative paths) from `source_root` on `fs` into the local `dest`.

    Holds the lock of `dest` while transferring, so two fetches into one root (two
    terminals, or many workers on one node) never write the same part file; whoever
    comes second finds the files present and transfers nothing. A present file is
    re-hashed when `hashes` knows its sha256 and fetched again if it differs (same size,
    different bytes). `lock=False` is for callers that already hold that lock.
    """
    if is_remote(dest):
        raise BergScaleError(f"the destination must be a local folder, got {dest!r}")
    dest = os.path.abspath(os.path.expanduser(dest))
    files = list(dict.fromkeys(files))
    hashes = hashes or {}
    report = FetchReport(source=to_url(fs, source_root), dest=dest, dry_run=dry_run)
    if dry_run:
        report.files, _ = plan_files(fs, source_root, files, dest)
        return report
    with directory_lock(dest, timeout_s=lock_timeout_s) if lock else contextlib.nullcontext():
        report.files, etags = plan_files(fs, source_root, files, dest)
        from tqdm.auto import tqdm

        with tqdm(
            total=report.bytes_to_transfer,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="BERG weights",
            disable=not progress or report.bytes_to_transfer == 0,
            file=sys.stderr,
        ) as bar:
            for status in report.files:
                expected = hashes.get(status.path)
                if status.state == PRESENT and expected:
                    status.sha256 = _file_sha256(os.path.join(dest, status.path))
                    if status.sha256 != expected:
                        status.state = CORRUPT
                        bar.total = (bar.total or 0) + status.size
                if status.state == PRESENT:
                    continue
                target = os.path.join(dest, status.path)
                if status.state == CORRUPT:
                    _remove(target)
                _transfer(
                    fs,
                    join(source_root, status.path),
                    status,
                    target,
                    etags.get(status.path),
                    hashes.get(status.path),
                    bar,
                    chunk_bytes,
                    concurrency,
                )
    return report


def fetch_weights(
    readouts: Iterable[Any],
    dest: str,
    storage: StorageOptions | None = None,
    *,
    bucket: str = DEFAULT_BUCKET,
    hashes: dict[str, str] | None = None,
    dry_run: bool = False,
    progress: bool = True,
    include_metadata: bool = True,
    include_weights: bool = True,
) -> FetchReport:
    """Fetch exactly the weight and metadata files that `readouts` need into `dest`.

    `bucket` is any local path or s3:// URL holding a BERG root (BERG's public bucket by
    default, read anonymously from us-west-2 unless `storage` says otherwise).
    """
    files = files_for_readouts(
        readouts, include_metadata=include_metadata, include_weights=include_weights
    )
    if storage is None:
        storage = StorageOptions(anon=True, region=DEFAULT_REGION)
    fs, root = filesystem_for(bucket, storage)
    return fetch_files(fs, root, files, dest, hashes=hashes, dry_run=dry_run, progress=progress)
