"""The plain files directly in one output folder (local or object store), and removing some.

RNC studies and experiments rewrite their `--out` folder on a rerun; each decides which of
its own earlier files are stale, and both list and remove them the same way here.
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterable


def file_names(fs: Any, folder: str) -> set[str]:
    """Names of the files directly under `folder` (a fresh listing; none when it is missing)."""
    try:
        fs.invalidate_cache(folder)
        entries = fs.ls(folder, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {posixpath.basename(str(entry["name"]).rstrip("/")) for entry in entries if entry.get("type") == "file"}


def remove_files(fs: Any, folder: str, names: Iterable[str]) -> None:
    """Remove these files of `folder`; one already gone is fine."""
    for name in names:
        try:
            fs.rm(posixpath.join(folder, name))
        except FileNotFoundError:
            pass
