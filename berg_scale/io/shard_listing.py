"""Turn the user's shard specification into a sorted list of input shards.

Accepted forms, for local paths and s3:// alike: a single tar, a folder/prefix (every
`.tar`, `.tar.gz` and `.tgz` below it, in any letter case), a glob (`s3://b/x/*.tar`,
`data/**/*.tar`) and WebDataset brace ranges (`s3://b/x/{000000..000999}.tar`). Each shard
gets an output name derived from its path relative to the pattern's root, so a retried or
resumed shard always writes the same output key, whichever worker runs it.

Folders and globs skip hidden entries (`.Trash/`, macOS `._name.tar` companions), as
`make-shards` does. A tar compressed in a way the reader does not stream (`.tar.xz`,
`.tar.bz2`, `.tar.zst`) is refused by name rather than skipped, and one file matched by two
patterns under two output names is refused: its images would be written twice.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from berg_scale.errors import ConfigError, StorageError
from berg_scale.io.storage import StorageOptions, filesystem_for, to_url

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
UNREAD_TAR_SUFFIXES = (".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz", ".tar.zst", ".tzst", ".tar.lz4")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_WILDCARDS = ("*", "?", "[")


@dataclass(frozen=True, order=True)
class InputShard:
    """One unit of work: an input tar and the stem of every output derived from it."""

    name: str
    url: str
    relative: str
    size: int | None = field(default=None, compare=False)
    stamp: str | None = field(default=None, compare=False)  # ETag on S3, mtime on disk


def list_shards(patterns: str | Iterable[str], storage: StorageOptions | None = None) -> list[InputShard]:
    """List every shard the patterns name; missing brace members and empty results are errors."""
    if isinstance(patterns, str):
        patterns = [patterns]
    shards: dict[str, InputShard] = {}
    names_by_url: dict[str, str] = {}
    for pattern in patterns:
        for shard in _list_one(pattern, storage):
            previous = shards.get(shard.name)
            if previous is not None and previous.url != shard.url:
                raise ConfigError(_collision_message(previous, shard))
            other_name = names_by_url.setdefault(shard.url, shard.name)
            if other_name != shard.name:
                raise ConfigError(
                    f"input shard {shard.url} is matched twice by input.shards, as {other_name!r} and "
                    f"{shard.name!r} (overlapping patterns, e.g. a folder and one of its sub-folders): "
                    f"its images would be written twice; list each file under one pattern only"
                )
            shards[shard.name] = shard
    if not shards:
        raise ConfigError(
            f"no input shards matched {', '.join(patterns)}: check input.shards "
            f"(expects .tar, .tar.gz or .tgz files, a folder, a glob or a brace range)"
        )
    return sorted(shards.values())


def _collision_message(previous: InputShard, shard: InputShard) -> str:
    """Why two shards share an output name, with only the advice that fits the case."""
    both = f"input shards {previous.url} and {shard.url} map to the same output name {shard.name!r}"
    if previous.relative == shard.relative:
        # The same relative path under two patterns' roots (e.g. one/s.tar and two/s.tar).
        return (
            f"{both}: they have the same path {shard.relative!r} below their patterns' "
            "folders; rename one, or name their common parent folder as the single pattern "
            "so that their relative paths differ"
        )
    return (
        f"{both}: their paths {previous.relative!r} and {shard.relative!r} differ only in "
        "characters that output names replace ('/' becomes '__', anything but letters, "
        "digits, '.', '_' and '-' becomes '_'); rename one"
    )


def shard_output_name(relative: str) -> str:
    """The file stem used under responses/, _done/ and _failed/ for one input shard.

    Only a plain `.tar` suffix is removed (so existing outputs keep their names);
    compressed shards keep theirs (`x.tar.gz`, `x.tgz`), so `x.tar` beside `x.tar.gz`
    gets two outputs instead of a collision.
    """
    stem = relative[: -len(".tar")] if relative.endswith(".tar") else relative
    parts = [part for part in stem.split("/") if part not in ("", ".", "..")]
    cleaned = [_UNSAFE_CHARACTERS.sub("_", part).strip("_") or "_" for part in parts]
    name = "__".join(cleaned)
    if not name or name.startswith("."):
        name = f"shard{name}"
    return name


def _list_one(pattern: str, storage: StorageOptions | None) -> list[InputShard]:
    fs, path = filesystem_for(pattern, storage)
    if "{" in path:
        import braceexpand

        expanded = list(braceexpand.braceexpand(path))
    else:
        expanded = [path]
    is_brace = len(expanded) > 1 or expanded[0] != path
    results: list[tuple[str, str, dict[str, Any]]] = []  # (path in fs, root, listing info)
    try:
        if is_brace:
            results = _existing_members(fs, expanded, pattern)
        elif any(ch in path for ch in _WILDCARDS):
            root = _static_prefix(path)
            found = fs.glob(path, detail=True)
            results = _shards_found(found, root, pattern)
        elif _is_shard(path):
            try:
                info = fs.info(path)
            except FileNotFoundError:
                raise ConfigError(f"input shard {pattern} does not exist") from None
            results = [(path, posixpath.dirname(path.rstrip("/")), info)]
        else:
            root = path.rstrip("/")
            if not fs.exists(root):
                raise ConfigError(f"input folder {pattern} does not exist")
            found = fs.find(root, detail=True)
            results = _shards_found(found, root, pattern)
    except (ConfigError, StorageError):
        raise
    except (PermissionError, FileNotFoundError, OSError) as exc:
        raise StorageError(f"cannot list input shards {pattern}: {_describe(exc)}") from exc
    shards = []
    for found, root, info in results:
        relative = posixpath.relpath(found, root) if root else found
        shards.append(InputShard(name=shard_output_name(relative), url=to_url(fs, found), relative=relative,
                                 size=_size_of(info), stamp=_stamp_of(info)))
    return shards


def _shards_found(found: dict[str, dict[str, Any]], root: str, pattern: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The shards among a folder's or glob's files: hidden entries skipped, unread tars refused."""
    visible = {p: info for p, info in found.items() if _is_file(info) and not _is_hidden(p, root)}
    unread = sorted(p for p in visible if p.lower().endswith(UNREAD_TAR_SUFFIXES))
    if unread:
        raise ConfigError(
            f"{len(unread)} file(s) under {pattern} are tars compressed in a way the reader does not "
            f"stream (first: {unread[0]}): decompress them to .tar (or recompress as .tar.gz), or "
            f"name only the readable shards in input.shards (e.g. a *.tar glob)"
        )
    return [(p, root, visible[p]) for p in sorted(visible) if _is_shard(p)]


def _is_hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root) if root else path
    return any(part.startswith(".") and part not in (".", "..") for part in relative.split("/"))


def _is_file(info: dict[str, Any]) -> bool:
    return info.get("type", "file") != "directory"


def _size_of(info: dict[str, Any]) -> int | None:
    size = info.get("size", info.get("Size"))
    return int(size) if size is not None else None


def _stamp_of(info: dict[str, Any]) -> str | None:
    """A change stamp from the listing: S3's ETag (content hash), else the modification time."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime", info.get("LastModified"))
    if mtime is None:
        return None
    return repr(float(mtime)) if isinstance(mtime, (int, float)) else str(mtime)


def _existing_members(fs: Any, expanded: list[str], pattern: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Check brace members by listing each parent folder once (not one request per shard)."""
    root = _static_prefix(expanded[0])
    parents = sorted({posixpath.dirname(p) for p in expanded})
    present: dict[str, dict[str, Any]] = {}
    for parent in parents:
        try:
            for entry in fs.ls(parent, detail=True):
                present[entry["name"].rstrip("/")] = entry
        except FileNotFoundError:
            continue
    missing = [p for p in expanded if p not in present]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(expanded)} shards named by {pattern} do not exist "
            f"(first: {missing[0]}); fix the range in input.shards"
        )
    for p in expanded:
        if not _is_shard(p):
            raise ConfigError(f"{p} from {pattern} is not a .tar shard")
    return [(p, root, present[p]) for p in expanded]


def _static_prefix(path: str) -> str:
    """The folder part of a pattern before its first wildcard or brace."""
    cut = len(path)
    for marker in (*_WILDCARDS, "{"):
        position = path.find(marker)
        if position != -1:
            cut = min(cut, position)
    return posixpath.dirname(path[:cut]) if cut < len(path) else posixpath.dirname(path)


def _is_shard(path: str) -> bool:
    return path.lower().endswith(SHARD_SUFFIXES)


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
