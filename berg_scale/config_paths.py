"""Relative paths in config files resolve against the config file's folder.

A config names its inputs and outputs relative to where it is kept (next to the shards,
in a project folder), so `berg-scale generate ../project/run.yaml` must read the same
files as `cd ../project && berg-scale generate run.yaml`. URLs (`s3://`, `file://`, any
`scheme://`), absolute paths and `~` paths are left as written; values given on the
command line (`--set key=value`) are taken as typed, i.e. relative to the working
directory, like every other command-line path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def is_relative_local_path(value: str) -> bool:
    """True for a path such as `shards/` or `../out`; False for URLs, absolute and `~` paths."""
    text = value.strip()
    if not text or "://" in text:
        return False
    return not (os.path.isabs(text) or text.startswith("~"))


def resolve_against(value: str, base_dir: Path) -> str:
    """`value` joined to `base_dir` when it is a relative local path, else unchanged."""
    if not is_relative_local_path(value):
        return value
    return os.path.normpath(os.path.join(base_dir, value.strip()))


def override_keys(overrides: Sequence[str]) -> list[tuple[str, ...]]:
    """The key paths that `--set key.path=value` overrides name (their values stay as typed)."""
    keys = []
    for override in overrides:
        key_path = override.partition("=")[0]
        parts = tuple(part for part in key_path.strip().split(".") if part)
        if parts:
            keys.append(parts)
    return keys


def resolve_config_paths(
    raw: dict[str, Any],
    base_dir: Path,
    fields: Iterable[str],
    skip: Sequence[tuple[str, ...]] = (),
) -> dict[str, Any]:
    """Resolve the dotted `fields` of `raw` (strings or lists of strings) in place.

    A field is skipped when an override names it, a section above it or a part of it,
    so a command-line value is never re-based onto the config's folder.
    """
    for field in fields:
        parts = tuple(field.split("."))
        if any(parts[: len(s)] == s or s[: len(parts)] == parts for s in skip):
            continue
        node: Any = raw
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node[parts[-1]]
        if isinstance(value, str):
            node[parts[-1]] = resolve_against(value, base_dir)
        elif isinstance(value, list):
            node[parts[-1]] = [resolve_against(v, base_dir) if isinstance(v, str) else v for v in value]
    return raw
