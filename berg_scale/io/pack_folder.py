"""Pack a folder tree of images into WebDataset tar shards.

The walk is sorted, so the same folder always gives the same shards, keys and
manifest. Every file is checked before it is packed (by default a full decode, which
also catches truncated JPEGs that a header check misses); files that fail, and files
that are not images at all, are listed with their reason, never silently dropped.
Bytes are copied as they are unless a maximum side or a JPEG quality asks for
re-encoding (`berg_scale.io.reencode`). Each sample carries a `<key>.json` sidecar with
its source path and upright size, which `generate` can copy into the output
(`input.metadata`). Shards close at a number of images, at a size in bytes, or both.

An incremental run (`add=True`) packs only files whose relative path the destination's
manifest does not list yet, into new shards numbered after the existing ones; existing
shards are never rewritten. The manifest is written last: a destination with
`manifest.json` holds a complete set of shards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from berg_scale import __version__
from berg_scale.errors import BergScaleError, ConfigError
from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS, DecodeError, decode_to_rgb, probe
from berg_scale.io.output_lease import OutputLease, new_run_id
from berg_scale.io.output_store import OutputStore
from berg_scale.io.reencode import DEFAULT_JPEG_QUALITY, reencode_jpeg
from berg_scale.io.shard_reader import escape_name
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join
from berg_scale.io.tar_writer import TarShardWriter

SOURCE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CHECKS = ("decode", "header", "none")
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.csv"
MANIFEST_FORMAT = "berg-scale-shards/1"
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "GIF": "gif",
}
_UNSAFE = re.compile(r"[^\w-]+")  # \w: letters and digits of any script, and "_"
_PREFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


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
    """What `pack_folder` did; `manifest_url` is None when nothing was packed.

    In an incremental run `shards` are the new shards only and `existing_shards` the
    ones found; `skipped` names unreadable files, `ignored` the files that are not
    images (hidden files, other extensions), each with its reason.
    """

    dest: str
    shards: list[PackedShard] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: list[SkippedFile] = field(default_factory=list)
    existing_shards: list[dict[str, Any]] = field(default_factory=list)
    already_packed: int = 0
    resized: int = 0
    manifest_url: str | None = None
    labels_url: str | None = None
    labels_note: str | None = None  # why no labels.csv was written, when a class layout was near

    @property
    def n_images(self) -> int:
        return sum(len(s.keys) for s in self.shards)

    @property
    def ignored_files(self) -> int:
        return len(self.ignored)


@dataclass(frozen=True)
class PackOptions:
    """How files become samples: validation, optional re-encoding, shard limits."""

    per_shard: int | None = 1000
    shard_bytes: int | None = None
    check: str = "decode"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    jpeg_quality: int | None = None
    follow_links: bool = False

    @property
    def reencodes(self) -> bool:
        return self.max_side is not None or self.jpeg_quality is not None

    def validate(self) -> None:
        if self.per_shard is None and self.shard_bytes is None:
            raise ConfigError("give --per-shard, --shard-size or both")
        if self.per_shard is not None and self.per_shard < 1:
            raise ConfigError(f"--per-shard must be at least 1, got {self.per_shard}")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise ConfigError(f"--shard-size must be positive, got {self.shard_bytes}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be positive, got {self.max_pixels}")
        if self.check not in CHECKS:
            raise ConfigError(f"check must be one of {CHECKS}, got {self.check!r}")
        if self.max_side is not None and self.max_side < 16:
            raise ConfigError(f"--max-side must be at least 16 px, got {self.max_side}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"--jpeg-quality must be 1..95, got {self.jpeg_quality}")
        if self.reencodes and self.check != "decode":
            raise ConfigError("--max-side/--jpeg-quality decode every image; leave --check at decode")

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "max_pixels"}


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
    original: tuple[int, int] | None = None  # size before resizing, when resized


def walk_images(src_dir: str, follow_links: bool = False) -> tuple[list[_Candidate], int]:
    """Image files under `src_dir` in sorted order, and how many other files were seen."""
    found, ignored = walk_folder(src_dir, follow_links)
    return found, len(ignored)


_LINK_HINT = "not followed; --follow-links packs what it points to"


def walk_folder(src_dir: str, follow_links: bool = False) -> tuple[list[_Candidate], list[SkippedFile]]:
    """Image files under `src_dir` in sorted order, and the other files with the reason.

    Symbolic links are left out unless `follow_links`: by default nothing from outside
    `src_dir` can end up in a shard. Followed folder links are entered once each, so a
    link loop cannot make the walk endless.
    """
    found: list[_Candidate] = []
    ignored: list[SkippedFile] = []
    entered = {os.path.realpath(src_dir)}

    def rel_of(path: str) -> str:
        # escaped: a name byte that is not UTF-8 would make the sidecar, the manifest and
        # every message unwritable; the file itself is opened by its real path
        return escape_name(os.path.relpath(path, src_dir).replace(os.sep, "/"))

    for root, dirs, files in os.walk(src_dir, followlinks=follow_links):
        kept = []
        for name in sorted(dirs):
            path = os.path.join(root, name)
            if name.startswith("."):
                ignored.append(SkippedFile(rel_of(path) + "/", "hidden folder (not searched)"))
            elif os.path.islink(path) and not follow_links:
                ignored.append(SkippedFile(rel_of(path) + "/", f"symbolic link to a folder ({_LINK_HINT})"))
            elif os.path.realpath(path) in entered:
                ignored.append(SkippedFile(
                    rel_of(path) + "/", "folder already searched through another path (link loop)"
                ))
            else:
                entered.add(os.path.realpath(path))
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = rel_of(path)
            ext = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                ignored.append(SkippedFile(rel, "hidden file"))
            elif os.path.islink(path) and not follow_links:
                ignored.append(SkippedFile(rel, f"symbolic link ({_LINK_HINT})"))
            elif os.path.islink(path) and not os.path.exists(path):
                ignored.append(SkippedFile(rel, "broken symbolic link (its target does not exist)"))
            elif not os.path.isfile(path):
                ignored.append(SkippedFile(rel, "not a regular file (device, FIFO or socket)"))
            elif ext in SOURCE_EXTENSIONS:
                found.append(_Candidate(rel, path))
            else:
                ignored.append(SkippedFile(
                    rel, f"not an image file name ({ext or 'no extension'}; "
                    f"packed: {', '.join(SOURCE_EXTENSIONS)})"
                ))
    return found, ignored


def _read_regular_file(path: str, follow_links: bool) -> bytes:
    """The file's bytes, refusing what became a link or a FIFO after the walk listed it
    (a FIFO would block the read forever)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(0, "no longer a regular file")
        return handle.read()


def key_for(relpath: str) -> str:
    """A WebDataset-safe key from a relative path: folders kept, letters and digits of
    any script kept (NFC, so a macOS name gives the same key), other runs -> '_'."""
    parts = unicodedata.normalize("NFC", relpath).split("/")
    parts[-1] = os.path.splitext(parts[-1])[0]
    safe = [_UNSAFE.sub("_", part).strip("_") or "_" for part in parts]
    return "/".join(safe)


def unique_keys(relpaths: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """Keys for paths in order; a key already taken gets `_1`, `_2`, ... appended."""
    used: set[str] = set(taken)
    keys = []
    for rel in relpaths:
        base = key_for(rel)
        key, n = base, 0
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def label_of(relpath: str) -> str | None:
    """The top-level sub-folder of a source path (ImageFolder convention), None at the top."""
    head, sep, _ = relpath.partition("/")
    return head if sep else None


def _upright(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)


def _check(candidate: _Candidate, options: PackOptions) -> _Checked:
    try:
        data = _read_regular_file(candidate.abspath, options.follow_links)
    except OSError as exc:
        return _Checked(candidate, None, None, reason=f"cannot read file: {exc.strerror or exc}")
    try:
        header = probe(data, options.max_pixels)
        ext = FORMAT_EXTENSIONS.get(header.format)
        if ext is None:
            raise DecodeError(f"{header.format} is not a supported stimulus format")
        if options.reencodes:
            return _reencoded(candidate, data, header.width, header.height, header.orientation, options)
        if options.check == "decode":
            decode_to_rgb(data, max_pixels=options.max_pixels)
    except DecodeError as exc:
        if options.check == "none" and len(data) > 0:
            fallback = os.path.splitext(candidate.relpath)[1].lower().lstrip(".")
            return _Checked(candidate, data, fallback)
        return _Checked(candidate, None, None, reason=exc.reason)
    width, height = _upright(header.width, header.height, header.orientation)
    return _Checked(candidate, data, ext, width, height)


def _reencoded(
    candidate: _Candidate, data: bytes, width: int, height: int, orientation: int, options: PackOptions
) -> _Checked:
    """Re-encode when asked for every file (a quality) or when the image is too large."""
    upright = _upright(width, height, orientation)
    if options.jpeg_quality is None and max(upright) <= (options.max_side or 0):
        decode_to_rgb(data, max_pixels=options.max_pixels)  # still a full check
        ext = FORMAT_EXTENSIONS[probe(data, options.max_pixels).format]
        return _Checked(candidate, data, ext, *upright)
    out = reencode_jpeg(
        data,
        max_side=options.max_side,
        quality=options.jpeg_quality or DEFAULT_JPEG_QUALITY,
        max_pixels=options.max_pixels,
    )
    original = (out.original_width, out.original_height) if out.resized else None
    return _Checked(candidate, out.data, "jpg", out.width, out.height, original=original)


def _checked_in_order(
    candidates: list[_Candidate], options: PackOptions, workers: int
) -> Iterator[_Checked]:
    """Check files in a thread pool (decoding releases the GIL) but yield them in order,
    keeping only a bounded window of file contents in memory."""
    window = max(4, workers * 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        for candidate in candidates:
            pending.append(pool.submit(_check, candidate, options))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _listing(dest: str, storage: StorageOptions | None) -> list[str]:
    fs, path = filesystem_for(dest, storage)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def _existing_shards(dest: str, prefix: str, storage: StorageOptions | None) -> list[str]:
    return [n for n in _listing(dest, storage)
            if (n.startswith(prefix) and n.endswith(".tar")) or n == MANIFEST_NAME]


def read_manifest(dest: str, storage: StorageOptions | None = None) -> dict[str, Any] | None:
    """The destination's manifest, None when there is none; one-line error if unreadable."""
    url = join(dest, MANIFEST_NAME)
    fs, path = filesystem_for(url, storage)
    try:
        with fs.open(path, "r") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BergScaleError(f"cannot read {url}: {exc}; repair it or start again with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BergScaleError(f"{url} is not a make-shards manifest ({MANIFEST_FORMAT}); "
                             "choose another destination or pass --overwrite")
    return manifest


def _next_index(names: Iterable[str], prefix: str) -> int:
    """One after the highest `PREFIXnnnnnn.tar` present (stray shards included)."""
    highest = -1
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.tar")
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _prepare_destination(
    dest: str, prefix: str, storage: StorageOptions | None, overwrite: bool, add: bool
) -> tuple[list[str], dict[str, Any] | None, bool]:
    """Check the destination for the chosen mode.

    Returns its shard files, the manifest an incremental run extends, and whether a
    `labels.csv` there was written by this tool (only then may it be replaced).
    """
    existing = _existing_shards(dest, prefix, storage)
    if add:
        manifest = read_manifest(dest, storage)
        shards = [n for n in existing if n != MANIFEST_NAME]
        if manifest is None and shards:
            raise BergScaleError(
                f"{dest} holds {len(shards)} shard(s) but no {MANIFEST_NAME} (an interrupted "
                "run?); --add needs the manifest: start again with --overwrite"
            )
        return existing, manifest, bool(manifest and manifest.get("labels") == LABELS_NAME)
    if existing and not overwrite:
        if MANIFEST_NAME not in existing:
            raise BergScaleError(
                f"{dest} holds {len(existing)} shard(s) such as {existing[0]!r} but no {MANIFEST_NAME} "
                "(an interrupted make-shards?): start again with --overwrite, or choose an empty destination"
            )
        raise BergScaleError(
            f"{dest} already holds {len(existing)} shard/manifest file(s) such as "
            f"{existing[0]!r}; choose an empty destination, pass --add to append new "
            "files, or --overwrite"
        )
    labels_ours = False
    if MANIFEST_NAME in existing:
        try:
            old = read_manifest(dest, storage)
            labels_ours = bool(old and old.get("labels") == LABELS_NAME)
        except BergScaleError:
            pass  # an unreadable manifest is being replaced anyway
        # Without a manifest the destination reads as incomplete until the new run ends.
        _remove(join(dest, MANIFEST_NAME), storage)
    return existing, None, labels_ours


def pack_folder(
    src_dir: str,
    dest: str,
    *,
    per_shard: int | None = 1000,
    shard_bytes: int | None = None,
    prefix: str = "shard-",
    storage: StorageOptions | None = None,
    check: str = "decode",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    jpeg_quality: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    add: bool = False,
    labels: bool = True,
    follow_links: bool = False,
    progress: Callable[[int], None] | None = None,
    take_over: bool = False,
) -> PackReport:
    """Pack every readable image under `src_dir` into `dest/<prefix>{000000..}.tar`.

    A shard closes after `per_shard` images or before it would exceed `shard_bytes`
    (a single larger sample gets a shard of its own). `progress` is called with the
    number of files handled since the last call. Raises BergScaleError for unusable
    arguments or a destination that does not fit the mode.

    The destination is leased (`_lease.json`, as `generate` leases an output) while the
    run lists, writes and records shards: two `--add` runs at once would number their
    new shards alike and overwrite each other's, and the manifest would list one of them.
    `take_over` takes a stale lease (a run killed on another machine).
    """
    options = PackOptions(per_shard, shard_bytes, check, max_pixels, max_side, jpeg_quality, follow_links)
    options.validate()
    if add and overwrite:
        raise ConfigError("--add and --overwrite exclude each other: --add keeps every existing shard")
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
    lease = OutputLease(OutputStore(dest, storage), new_run_id(), command="make-shards", noun="destination")
    lease.acquire(take_over=take_over)
    try:
        return _pack(src_dir, dest, prefix, storage, options, overwrite, add, labels, workers, progress, lease)
    finally:
        lease.release()


def _pack(
    src_dir: str,
    dest: str,
    prefix: str,
    storage: StorageOptions | None,
    options: PackOptions,
    overwrite: bool,
    add: bool,
    labels: bool,
    workers: int | None,
    progress: Callable[[int], None] | None,
    lease: OutputLease,
) -> PackReport:
    """The work of `pack_folder`, while this run holds the destination's lease."""
    follow_links = options.follow_links
    existing, previous, labels_ours = _prepare_destination(dest, prefix, storage, overwrite, add)

    candidates, ignored = walk_folder(src_dir, follow_links)
    report = PackReport(dest=dest, ignored=ignored)
    old_keys: list[str] = []
    first_index = 0
    if previous is not None:
        report.existing_shards = list(previous.get("shards", []))
        packed = {src for shard in report.existing_shards for src in shard.get("sources", [])}
        old_keys = [key for shard in report.existing_shards for key in shard.get("keys", [])]
        def packed_before(candidate: _Candidate) -> bool:
            # manifests of earlier versions hold undecodable names unescaped
            raw = os.path.relpath(candidate.abspath, src_dir).replace(os.sep, "/")
            return candidate.relpath in packed or raw in packed

        seen_before = [packed_before(c) for c in candidates]
        report.already_packed = sum(seen_before)
        candidates = [c for c, before in zip(candidates, seen_before) if not before]
        first_index = _next_index(existing, prefix)
        if progress and report.already_packed:
            progress(report.already_packed)  # counted by the caller's total, not read again
    keys = dict(zip((c.relpath for c in candidates),
                    unique_keys((c.relpath for c in candidates), taken=old_keys)))
    _write_shards(report, candidates, keys, dest, prefix, storage, options, workers, progress, first_index,
                  lease.check)
    lease.check()

    if not add:
        written = {shard.name for shard in report.shards}
        for name in existing:
            if name != MANIFEST_NAME and name not in written:
                _remove(join(dest, name), storage)  # a stale shard from an earlier, larger run
    if report.shards or report.existing_shards:
        if labels:
            report.labels_url = _write_labels(report, labels_ours, storage)
        if labels_ours and report.labels_url is None:
            _remove(join(dest, LABELS_NAME), storage)  # ours and no longer complete
        report.manifest_url = _write_manifest(report, src_dir, options, previous, storage)
    return report


def _write_shards(
    report: PackReport,
    candidates: list[_Candidate],
    keys: dict[str, str],
    dest: str,
    prefix: str,
    storage: StorageOptions | None,
    options: PackOptions,
    workers: int | None,
    progress: Callable[[int], None] | None,
    first_index: int,
    still_leased: Callable[[], None],
) -> None:
    writer: TarShardWriter | None = None
    shard_keys: list[str] = []
    shard_sources: list[str] = []

    def finish_shard() -> None:
        nonlocal writer
        assert writer is not None
        written = writer.commit()
        report.shards.append(PackedShard(
            name=written.url.rsplit("/", 1)[-1], url=written.url, keys=list(shard_keys),
            sources=list(shard_sources), bytes=written.bytes,
        ))
        writer = None
        shard_keys.clear()
        shard_sources.clear()

    try:
        for checked in _checked_in_order(candidates, options, workers or min(8, os.cpu_count() or 1)):
            if progress:
                progress(1)
            rel = checked.candidate.relpath
            if checked.data is None:
                report.skipped.append(SkippedFile(rel, checked.reason or "unreadable"))
                continue
            sidecar: dict[str, Any] = {"source": rel}
            if checked.width:
                sidecar.update(width=checked.width, height=checked.height)
            if checked.original is not None:
                sidecar.update(original_width=checked.original[0], original_height=checked.original[1])
                report.resized += 1
            fields = {str(checked.ext): checked.data, "json": json.dumps(sidecar, sort_keys=True).encode()}
            key = keys[rel]
            if (writer is not None and options.shard_bytes is not None
                    and writer.size_with(fields, key) > options.shard_bytes):
                finish_shard()
            if writer is None:
                still_leased()  # raises once another run took the destination over
                index = first_index + len(report.shards)
                writer = TarShardWriter(join(dest, f"{prefix}{index:06d}.tar"), storage)
            writer.add_sample(key, fields)
            shard_keys.append(key)
            shard_sources.append(rel)
            if options.per_shard is not None and len(shard_keys) >= options.per_shard:
                finish_shard()
        if writer is not None:
            finish_shard()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _remove(url: str, storage: StorageOptions | None) -> None:
    fs, path = filesystem_for(url, storage)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise BergScaleError(f"cannot remove {url} while overwriting: {exc}") from exc


def _all_shard_entries(report: PackReport) -> list[dict[str, Any]]:
    new = [{"name": s.name, "n": len(s.keys), "bytes": s.bytes, "keys": s.keys, "sources": s.sources}
           for s in report.shards]
    return [*report.existing_shards, *new]


def _write_labels(report: PackReport, ours: bool, storage: StorageOptions | None) -> str | None:
    """`labels.csv` (key,label) from top-level sub-folder names (the class-folder layout).

    Written only when every packed image sits in a sub-folder (a partial table would
    read as a labelling), and never over a `labels.csv` this tool did not write.
    """
    rows = [(key, label_of(src)) for shard in _all_shard_entries(report)
            for key, src in zip(shard.get("keys", []), shard.get("sources", []))]
    if not rows:
        return None
    outside = [key for key, label in rows if label is None]
    if outside:
        if len(outside) < len(rows):
            report.labels_note = (
                f"no {LABELS_NAME}: {len(outside)} of {len(rows)} image(s) sit outside any class folder "
                f"(first: {outside[0]!r}); move them into a sub-folder for a label table"
            )
        return None
    url = join(report.dest, LABELS_NAME)
    if not ours and LABELS_NAME in _listing(report.dest, storage):
        return None  # a table the user put there
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["key", "label"])
    table.writerows(rows)
    fs, path = filesystem_for(url, storage)
    try:
        with fs.open(path, "w") as handle:
            handle.write(text.getvalue())
    except Exception as exc:
        raise BergScaleError(f"cannot write label table {url}: {exc}") from exc
    return url


def _write_manifest(
    report: PackReport,
    src_dir: str,
    options: PackOptions,
    previous: dict[str, Any] | None,
    storage: StorageOptions | None,
) -> str:
    url = join(report.dest, MANIFEST_NAME)
    shards = _all_shard_entries(report)
    run = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": f"berg-scale {__version__}",
        "source": os.path.abspath(src_dir),
        **options.describe(),
        "new_shards": [s.name for s in report.shards],
        "new_images": report.n_images,
        "resized": report.resized,
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_by": f"berg-scale {__version__}",
        "source": os.path.abspath(src_dir),
        **options.describe(),
        "n_images": sum(int(s.get("n", len(s.get("keys", [])))) for s in shards),
        "n_shards": len(shards),
        "labels": LABELS_NAME if report.labels_url else None,
        "runs": [*(previous or {}).get("runs", []), run],
        "shards": shards,
        "skipped": [asdict(s) for s in report.skipped],
        "ignored": [asdict(s) for s in report.ignored],
        "ignored_files": report.ignored_files,
    }
    fs, path = filesystem_for(url, storage)
    try:
        with fs.open(path, "w") as handle:
            json.dump(manifest, handle, indent=1)
    except Exception as exc:
        raise BergScaleError(f"cannot write manifest {url}: {exc}") from exc
    return url
