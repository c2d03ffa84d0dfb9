"""Tars built the way users build them: Python's `tarfile` and GNU `tar`.

Tests that check what the reader does with real-world archives build them here, not
with berg-scale's own writer, so the reader is held to what plain tools produce.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

# The first bytes of a macOS AppleDouble file (`._cat.jpg` next to `cat.jpg`).
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def python_tar(path: Path | str, members: list[tuple[str, bytes]]) -> str:
    """A PAX tar of (name, bytes) members in the given order, as `tarfile` writes it."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def gnu_tar(folder: Path | str, path: Path | str, *, sort_by_name: bool = True) -> str:
    """`tar -cf path -C folder .`: `./`-prefixed names, in name or directory order."""
    command = ["tar", "-cf", str(path)]
    if sort_by_name:
        command.append("--sort=name")
    subprocess.run([*command, "-C", str(folder), "."], check=True)
    return str(path)
