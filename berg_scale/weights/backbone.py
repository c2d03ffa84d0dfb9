"""Downloading torchvision's ViT-B/32 checkpoint, the backbone of BERG's ViT models.

BERG's bucket does not hold it: BERG loads it through torchvision, which fetches
`vit_b_32-d86f8d99.pth` into torch.hub's checkpoint folder and checks that the file's
sha256 starts with the hex digits in its name. This module does the same with
`torch.hub.download_url_to_file`, so a machine with internet access can prepare a
root (and a node cache) in one command, and a mirror URL can stand in for the
official one.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from berg_scale.errors import BergScaleError

# torchvision's file names end in `-<first hex digits of the sha256>.<ext>`.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[A-Za-z0-9]+$")
PRESENT, DOWNLOADED, REPLACED = "present", "downloaded", "replaced"
STALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BackboneFetch:
    """Where the backbone is, where it came from, and what this call did."""

    path: str
    url: str
    state: str  # present | downloaded | replaced


def hash_prefix_of(url: str) -> str:
    """The sha256 prefix a torchvision-style file name promises."""
    name = os.path.basename(urlsplit(url).path)
    match = _HASH_IN_NAME.search(name)
    if not match:
        raise BergScaleError(
            f"cannot verify {url}: its file name {name!r} carries no sha256 prefix "
            "(torchvision's names end in '-<hex>.pth'); use torchvision's URL or a mirror that keeps its file name"
        )
    return match.group(1)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_backbone(path: str, url: str, *, progress: bool = True) -> BackboneFetch:
    """Make `path` hold the checkpoint at `url`, checked against the prefix in its name.

    A present file whose hash matches is kept; one that does not match is downloaded
    again. A failed download leaves no file at `path`.
    """
    prefix = hash_prefix_of(url)
    path = os.path.abspath(os.path.expanduser(path))
    replacing = False
    if os.path.isfile(path):
        if _sha256_of(path).startswith(prefix):
            return BackboneFetch(path, url, PRESENT)
        replacing = True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import socket
    from urllib.error import URLError

    from torch.hub import download_url_to_file

    # urllib waits forever on a connection that went silent; a stall of a minute is an error.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(STALL_TIMEOUT_S)
    try:
        download_url_to_file(url, path, hash_prefix=prefix, progress=progress)
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BergScaleError(f"cannot download the backbone from {url} ({reason})") from None
    except RuntimeError as exc:  # torch.hub's hash check
        raise BergScaleError(
            f"the file at {url} is not the expected checkpoint ({exc}); nothing was written to {path}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return BackboneFetch(path, url, REPLACED if replacing else DOWNLOADED)
