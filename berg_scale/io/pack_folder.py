"""Pack a folder tree of images into WebDataset tar shards, bytes copied as they are.

The walk is sorted, so the same folder always gives the same shards, keys and
manifest. Every file is checked before it is packed (by default a full decode, which
also catches truncated JPEGs that a header check misses); files that fail are skipped
and listed with their reason, never silently dropped. The manifest is written last:
a destination with `manifest.json` holds a complete set of shards.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

from berg_scale import __version__
from berg_scale.errors import BergScaleError, ConfigError
from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS, DecodeError, decode_to_rgb, probe
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join
from berg_scale.io.tar_writer import TarShardWriter

SOURCE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
CHECKS = ("decode", "header", "none")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "berg-scale-shards/1"
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PREFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class PackedShard:
    name: str
    url: str
    keys: list[str]
    sources: list[str]
    bytes: int


@dataclass
class PackReport:
    """What `pack_folder` did; `manifest_url` is None when nothing was packed."""

    dest: str
    shards: list[PackedShard] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored_files: int = 0
    manifest_url: str | None = None

    @property
    def n_images(self) -> int:
        return sum(len(s.keys) for s in self.shards)


@dataclass
class _Candidate:
    relpath: str
    abspath: str


@dataclass
class _Checked:
    candidate: _Candidate
    data: bytes | None
    ext: str | None
    width: int = 0
    height: int = 0
    reason: str | None = None


def walk_images(src_dir: str) -> tuple[list[_Candidate], int]:
    """Image files under `src_dir` in sorted order, and how many other files were seen."""
    found: list[_Candidate] = []
    ignored = 0
    for root, dirs, files in os.walk(src_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.startswith(".") or not os.path.isfile(path):
                ignored += 1
                continue
            if os.path.splitext(name)[1].lower() in SOURCE_EXTENSIONS:
                rel = os.path.relpath(path, src_dir).replace(os.sep, "/")
                found.append(_Candidate(rel, path))
            else:
                ignored += 1
    return found, ignored


def key_for(relpath: str) -> str:
    """A WebDataset-safe key from a relative path: folders kept, other characters -> '_'."""
    parts = relpath.split("/")
    parts[-1] = os.path.splitext(parts[-1])[0]
    safe = [_UNSAFE.sub("_", part).strip("_") or "_" for part in parts]
    return "/".join(safe)


def unique_keys(relpaths: Iterable[str]) -> list[str]:
    """Keys for paths in order; a key already taken gets `_1`, `_2`, ... appended."""
    taken: set[str] = set()
    keys = []
    for rel in relpaths:
        base = key_for(rel)
        key, n = base, 0
        while key in taken:
            n += 1
            key = f"{base}_{n}"
        taken.add(key)
        keys.append(key)
    return keys


def _check(candidate: _Candidate, check: str, max_pixels: int) -> _Checked:
    try:
        with open(candidate.abspath, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return _Checked(candidate, None, None, reason=f"cannot read file: {exc.strerror or exc}")
    try:
        header = probe(data, max_pixels)
        ext = FORMAT_EXTENSIONS.get(header.format)
        if ext is None:
            raise DecodeError(f"{header.format} is not a supported stimulus format")
        if check == "decode":
            decode_to_rgb(data, max_pixels=max_pixels)
    except DecodeError as exc:
        if check == "none" and len(data) > 0:
            fallback = os.path.splitext(candidate.relpath)[1].lower().lstrip(".")
            return _Checked(candidate, data, fallback)
        return _Checked(candidate, None, None, reason=exc.reason)
    return _Checked(candidate, data, ext, header.width, header.height)


def _checked_in_order(
    candidates: list[_Candidate], check: str, max_pixels: int, workers: int
) -> Iterator[_Checked]:
    """Check files in a thread pool (decoding releases the GIL) but yield them in order,
    keeping only a bounded window of file contents in memory."""
    window = max(4, workers * 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        for candidate in candidates:
            pending.append(pool.submit(_check, candidate, check, max_pixels))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _existing_shards(dest: str, prefix: str, storage: StorageOptions | None) -> list[str]:
    fs, path = filesystem_for(dest, storage)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return sorted(n for n in names if (n.startswith(prefix) and n.endswith(".tar"))
                  or n == MANIFEST_NAME)


def pack_folder(
    src_dir: str,
    dest: str,
    *,
    per_shard: int = 1000,
    prefix: str = "shard-",
    storage: StorageOptions | None = None,
    check: str = "decode",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackReport:
    """Pack every readable image under `src_dir` into `dest/<prefix>{000000..}.tar`.

    `progress` is called with the number of files handled since the last call.
    Raises BergScaleError for unusable arguments or an occupied destination.
    """
    if per_shard < 1:
        raise ConfigError(f"--per-shard must be at least 1, got {per_shard}")
    if max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {max_pixels}")
    if check not in CHECKS:
        raise ConfigError(f"check must be one of {CHECKS}, got {check!r}")
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"--prefix {prefix!r} may only contain letters, digits, '.', '_' and '-' "
            "and may not start with '.'"
        )
    if not os.path.isdir(src_dir):
        raise ConfigError(f"source folder {src_dir!r} does not exist or is not a folder")
    if not is_remote(dest) and os.path.abspath(dest).startswith(
        os.path.abspath(src_dir).rstrip(os.sep) + os.sep
    ):
        raise ConfigError("the destination may not be inside the source folder")
    existing = _existing_shards(dest, prefix, storage)
    if existing and not overwrite:
        raise BergScaleError(
            f"{dest} already holds {len(existing)} shard/manifest file(s) such as "
            f"{existing[0]!r}; choose an empty destination or pass --overwrite"
        )
    if MANIFEST_NAME in existing:
        # Without a manifest the destination reads as incomplete until the new run ends.
        _remove(join(dest, MANIFEST_NAME), storage)

    candidates, ignored = walk_images(src_dir)
    keys = dict(zip((c.relpath for c in candidates), unique_keys(c.relpath for c in candidates)))
    report = PackReport(dest=dest, ignored_files=ignored)
    writer: TarShardWriter | None = None
    shard_keys: list[str] = []
    shard_sources: list[str] = []

    def finish_shard() -> None:
        nonlocal writer
        assert writer is not None
        written = writer.commit()
        report.shards.append(
            PackedShard(
                name=written.url.rsplit("/", 1)[-1],
                url=written.url,
                keys=list(shard_keys),
                sources=list(shard_sources),
                bytes=written.bytes,
            )
        )
        writer = None
        shard_keys.clear()
        shard_sources.clear()

    try:
        for checked in _checked_in_order(
            candidates, check, max_pixels, workers or min(8, os.cpu_count() or 1)
        ):
            if progress:
                progress(1)
            rel = checked.candidate.relpath
            if checked.data is None:
                report.skipped.append(SkippedFile(rel, checked.reason or "unreadable"))
                continue
            if writer is None:
                url = join(dest, f"{prefix}{len(report.shards):06d}.tar")
                writer = TarShardWriter(url, storage)
            label = {"source": rel}
            if checked.width:
                label.update(width=checked.width, height=checked.height)
            writer.add_sample(
                keys[rel],
                {
                    str(checked.ext): checked.data,
                    "json": json.dumps(label, sort_keys=True).encode(),
                },
            )
            shard_keys.append(keys[rel])
            shard_sources.append(rel)
            if len(shard_keys) >= per_shard:
                finish_shard()
        if writer is not None:
            finish_shard()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

    written = {shard.name for shard in report.shards}
    for name in existing:
        if name != MANIFEST_NAME and name not in written:
            _remove(join(dest, name), storage)  # a stale shard from an earlier, larger run
    if report.shards:
        report.manifest_url = _write_manifest(report, src_dir, per_shard, check, storage)
    return report


def _remove(url: str, storage: StorageOptions | None) -> None:
    fs, path = filesystem_for(url, storage)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise BergScaleError(f"cannot remove {url} while overwriting: {exc}") from exc


def _write_manifest(
    report: PackReport,
    src_dir: str,
    per_shard: int,
    check: str,
    storage: StorageOptions | None,
) -> str:
    url = join(report.dest, MANIFEST_NAME)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_by": f"berg-scale {__version__}",
        "source": os.path.abspath(src_dir),
        "per_shard": per_shard,
        "check": check,
        "n_images": report.n_images,
        "n_shards": len(report.shards),
        "shards": [
            {
                "name": s.name,
                "n": len(s.keys),
                "bytes": s.bytes,
                "keys": s.keys,
                "sources": s.sources,
            }
            for s in report.shards
        ],
        "skipped": [asdict(s) for s in report.skipped],
        "ignored_files": report.ignored_files,
    }
    fs, path = filesystem_for(url, storage)
    try:
        with fs.open(path, "w") as handle:
            json.dump(manifest, handle, indent=1)
    except Exception as exc:
        raise BergScaleError(f"cannot write manifest {url}: {exc}") from exc
    return url
