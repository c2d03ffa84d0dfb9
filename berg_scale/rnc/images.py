"""Fetch controlling images back from the input WebDataset shards by key.

Where the shards are: each `_done/<shard>.json` marker of the response output records
the URL of the input tar it was generated from (`input`), so the grids need no extra
setting. `images=` (`--images`) overrides that, for outputs moved away from their inputs:
it names a folder (or prefix) whose tars are matched to output shard names the way
`generate` names them (`a/shard-000000.tar` -> `a__shard-000000`), so nested layouts work.

Reading goes through the engine's own tar reader (`iter_shard_samples`) and decoder
(`decode_to_rgb`), so every layout and format that `generate` reads (JPEG, PNG, WebP,
BMP, TIFF, GIF; keys in sub-folders of the tar; .tar.gz) is also found here. Tars are
untrusted: members are read as bytes, never extracted; sizes and pixel counts are
capped; an image that cannot be found or decoded is reported with its reason instead
of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from PIL import Image

from berg_scale.errors import BergScaleError
from berg_scale.io.decode import decode_to_rgb
from berg_scale.io.output_store import OutputStore, read_done_markers
from berg_scale.io.shard_reader import ShardReadError, iter_shard_samples
from berg_scale.io.storage import StorageOptions

MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000


def shard_url(images_url: str, shard: str) -> str:
    """`<images>/<shard>.tar`: where a flat folder of shards keeps one output shard's tar."""
    name = shard if shard.endswith((".tar", ".tar.gz", ".tgz")) else f"{shard}.tar"
    return f"{images_url.rstrip('/')}/{name}"


@dataclass
class FetchedImages:
    """Thumbnails of the wanted (shard, key) pairs, and why each missing one is missing."""

    images: dict[tuple[str, str], Image.Image] = field(default_factory=dict)
    missing: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, shard: str, key: str) -> Image.Image | None:
        return self.images.get((shard, key))

    def warning(self, limit: int = 10) -> str | None:
        """One line naming the images not found (the first `limit`) and why, or None."""
        if not self.missing:
            return None
        items = sorted(self.missing.items())
        shown = "; ".join(f"{key} ({shard}): {reason}" for (shard, key), reason in items[:limit])
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        return f"{len(items)} image(s) for the grids not found: {shown}{more}"


def input_urls_from_markers(
    responses: str, shards: Iterable[str], storage: StorageOptions | None = None
) -> dict[str, str]:
    """Output shard name -> input tar URL, as recorded in the `_done` markers."""
    markers = read_done_markers(OutputStore(responses, storage), shards)
    return {name: str(marker["input"]) for name, marker in markers.items()
            if isinstance(marker, dict) and marker.get("input")}


def images_folder_problem(images_url: str, storage: StorageOptions | None = None) -> str | None:
    """Why a folder (or prefix) of input shards cannot serve the grids, or None.

    Checked once, so that a mistyped `--images` is one line, not one reason per image.
    """
    from berg_scale.io.storage import filesystem_for

    fs, root = filesystem_for(images_url, storage)
    try:
        if fs.exists(root):
            return None
    except (OSError, BergScaleError) as exc:
        return f"{images_url} cannot be read ({' '.join(str(exc).split()) or type(exc).__name__})"
    return f"{images_url} does not exist"


def input_urls_from_folder(
    images_url: str, shards: Iterable[str], storage: StorageOptions | None = None
) -> dict[str, str]:
    """Output shard name -> tar URL under a folder of input shards (flat or nested)."""
    from berg_scale.io.shard_listing import list_shards

    shards = list(shards)
    try:
        listed = {s.name: s.url for s in list_shards(images_url, storage)}
    except BergScaleError:
        listed = {}  # not a listable folder: fall back to <images>/<shard>.tar
    return {name: listed.get(name) or shard_url(images_url, name) for name in shards}


def fetch_thumbnails(
    sources: Mapping[str, str],
    wanted: Iterable[tuple[str, str]],
    storage: StorageOptions | None = None,
    size: int = 96,
) -> FetchedImages:
    """RGB thumbnails (longest side `size`) of (shard, key) pairs; `sources` maps shard -> tar URL.

    Each tar is read front to back once, and only until its last wanted key was seen.
    """
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        by_shard.setdefault(shard, set()).add(key)
    result = FetchedImages()
    for shard, keys in sorted(by_shard.items()):
        url = sources.get(shard)
        if not url:
            for key in keys:
                result.missing[(shard, key)] = (
                    "its _done marker records no input URL; give the input shards with --images (plots.images)")
            continue
        _fetch_from_tar(url, shard, keys, storage, size, result)
    return result


def _fetch_from_tar(url: str, shard: str, keys: set[str], storage, size: int, result: FetchedImages) -> None:
    pending = set(keys)
    try:
        for sample in iter_shard_samples(url, storage, max_member_bytes=MAX_MEMBER_BYTES):
            if sample.key not in pending:
                continue
            pending.discard(sample.key)
            if sample.image is None:
                result.missing[(shard, sample.key)] = f"{sample.error or 'no image member'} in {url}"
            else:
                try:
                    image = decode_to_rgb(sample.image, max_pixels=MAX_PIXELS, draft_size=size)
                    image.thumbnail((size, size))
                    result.images[(shard, sample.key)] = image
                except BergScaleError as exc:
                    result.missing[(shard, sample.key)] = f"does not decode ({exc}) in {url}"
            if not pending:
                return
        reason = f"no such key in {url}"
    except FileNotFoundError:
        reason = f"input shard {url} does not exist"
    except ShardReadError as exc:
        reason = f"input shard {url}: {exc.reason}"
    except (BergScaleError, OSError) as exc:
        reason = f"cannot read {url} ({' '.join(str(exc).split()) or type(exc).__name__})"
    for key in pending:
        result.missing[(shard, key)] = reason


def locate_sources(
    shards: Iterable[str],
    responses: str | None = None,
    images_url: str | None = None,
    storage: StorageOptions | None = None,
) -> dict[str, str]:
    """Shard -> input tar URL: from `images_url` when given, else from the response markers."""
    shards = sorted(set(shards))
    if images_url:
        return input_urls_from_folder(images_url, shards, storage)
    if responses:
        return input_urls_from_markers(responses, shards, storage)
    return {}


def fetch_images(
    images_url: str | None,
    wanted: Iterable[tuple[str, str]],
    storage: StorageOptions | None = None,
    size: int = 96,
    *,
    responses: str | None = None,
) -> dict[str, Image.Image | None]:
    """key -> RGB thumbnail (None when missing or undecodable) for (shard, key) pairs.

    The tars come from `images_url` (a folder of input shards, flat or nested) when it is
    given, else from the `_done` markers of the response output `responses`. Use
    `fetch_thumbnails` to learn why an image is missing, or when keys repeat across shards.
    """
    wanted = list(wanted)
    sources = locate_sources([s for s, _ in wanted], responses, images_url, storage)
    fetched = fetch_thumbnails(sources, wanted, storage, size)
    return {key: fetched.get(shard, key) for shard, key in wanted}
