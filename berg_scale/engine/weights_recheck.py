"""Whether the weights that made an output's committed shards are still under its berg_root.

`status` answers this without reading gigabytes: each weight file is looked up by URL,
size and change stamp in the digest cache the driver keeps (the same one `generate`
consults), so a file the driver hashed and nobody touched since costs one metadata call.
A file the cache cannot vouch for (hashed on another machine, or changed since) is counted
as not verified unless the caller asks for its bytes to be hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from berg_scale.engine.ledger import WAY_OUT, LedgerMismatch, check_committed_weights, marker_weights
from berg_scale.io.storage import StorageOptions, filesystem_for, join
from berg_scale.models.store import backbone_hash_key, sha256_of_url
from berg_scale.weights.digest_cache import DigestCache, change_stamp, default_cache_path

BACKBONE_PREFIX = "backbone:"


@dataclass
class WeightsRecheck:
    """What a look at the recorded weight files found."""

    checked: int = 0
    unverified: list[str] = field(default_factory=list)  # no digest known for these bytes here
    problem: str | None = None  # the refusal the next generate would give

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "unverified": len(self.unverified),
                "unverified_examples": self.unverified[:5], "problem": self.problem,
                # ok: no refusal found; all_verified: and no file left unread for want of a digest
                "ok": self.problem is None, "all_verified": self.problem is None and not self.unverified}


def recorded_weights(markers: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Every weight file the committed shards' markers name, with the first digest recorded."""
    files: dict[str, str] = {}
    for marker in markers.values():
        for relative, digest in marker_weights(marker).items():
            files.setdefault(str(relative), str(digest))
    return files


def recheck_weights(
    output: str,
    markers: Mapping[str, Mapping[str, Any]],
    berg_root: str,
    backbone: str | None,
    storage: StorageOptions | None,
    hash_unknown: bool = False,
) -> WeightsRecheck:
    """Compare the recorded digests with the files under berg_root now.

    A missing file or a digest that differs is reported in the words `generate` would use;
    with `hash_unknown`, files the cache cannot answer for are read and hashed (and
    remembered, so the next generate need not read them again).
    """
    result = WeightsRecheck()
    digests = DigestCache(default_cache_path())
    current: dict[str, str] = {}
    try:
        for relative in sorted(recorded_weights(markers)):
            is_backbone = relative.startswith(BACKBONE_PREFIX)
            if is_backbone and (not backbone or backbone_hash_key(backbone) != relative):
                continue  # a backbone configured under another name is the next config's business
            url = backbone if is_backbone and backbone else join(berg_root, relative)
            try:
                digest = _digest(url, storage, digests, hash_unknown)
            except FileNotFoundError:
                where = "the backbone path" if is_backbone else "berg_root"
                result.problem = (f"{url}, which made committed shards of {output}, is no longer at {where}; "
                                  f"restore it, or point the config at the weights to use and {WAY_OUT}")
                return result
            if digest is None:
                result.unverified.append(relative)
                continue
            current[relative] = digest
            result.checked += 1
    finally:
        digests.save()
    try:
        check_committed_weights(output, markers, current)
    except LedgerMismatch as exc:
        result.problem = str(exc)
    return result


def _digest(url: str, storage: StorageOptions | None, digests: DigestCache, hash_unknown: bool) -> str | None:
    """The file's sha256 as the driver last hashed these bytes; None if unknown here.

    With `hash_unknown`, unknown bytes are read and hashed (the driver's own function).
    """
    if hash_unknown:
        return sha256_of_url(url, storage, digests)
    fs, path = filesystem_for(url, storage)
    info = fs.info(path)
    return digests.known(url, int(info.get("size") or 0), change_stamp(info))
