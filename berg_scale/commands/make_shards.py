"""Pack a folder of images (searched recursively) into WebDataset tar shards.

Image bytes are copied unchanged unless --max-side or --jpeg-quality asks for
re-encoding; keys come from the relative paths. Each file is checked first; unreadable
files and files that are not images are listed by name with the reason. Shards close
at --per-shard images and/or --shard-size bytes. --add appends the files an existing
destination does not hold yet, in new shards. DEST may be a local folder or an s3://
prefix (credentials and endpoint from the standard AWS variables or --endpoint-url).
A manifest.json listing shards, keys and source paths is written last, and labels.csv
(key,label) when images sit in sub-folders. Exit status: 0 when at least one image is
in DEST, 2 when none is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from berg_scale.io.endpoints import ENDPOINT_HELP

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3,
          "GB": 1000**3, "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2,
          "GIB": 1024**3, "TIB": 1024**4}


def parse_size(text: str) -> int:
    """`256MB` -> 256,000,000; `1.5GiB` -> 1,610,612,736; a bare number is bytes."""
    match = _SIZE.fullmatch(text or "")
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write e.g. 256MB, 1GB, 512MiB or a number of bytes"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of images (recursive)")
    parser.add_argument("dest", metavar="DEST", help="output folder or s3://bucket/prefix")
    parser.add_argument(
        "--per-shard", type=int, default=None, metavar="N",
        help="images per shard (default: 1000, or no limit when --shard-size is given)",
    )
    parser.add_argument(
        "--shard-size", type=parse_size, default=None, metavar="SIZE",
        help="close a shard before it would exceed SIZE (e.g. 256MB, 1GiB); with --per-shard, "
        "whichever comes first",
    )
    parser.add_argument(
        "--prefix", default="shard-",
        help="shard file name prefix; shards are PREFIX000000.tar, ... (default: shard-)",
    )
    parser.add_argument(
        "--max-side", type=int, default=None, metavar="PX",
        help="downscale images whose longer side exceeds PX (EXIF orientation applied first) "
        "and store them as JPEG; smaller images are copied unless --jpeg-quality is given",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=None, metavar="Q",
        help="re-encode every image as JPEG at quality Q (1..95); resized images use 90 "
        "unless given",
    )
    parser.add_argument(
        "--check", choices=("decode", "header", "none"), default="decode",
        help="how each file is validated before packing: full decode (default, catches "
        "truncated files), header only (faster), or none",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=None, metavar="N",
        help="skip images with more pixels than this (default: 64 Mpx)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="threads that read and check files (default: CPU count, at most 8)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--add", action="store_true",
        help="incremental: pack only files DEST's manifest does not list yet, into new shards "
        "numbered after the existing ones (existing shards are never rewritten)",
    )
    mode.add_argument(
        "--overwrite", action="store_true",
        help="replace what DEST holds from an earlier run: its manifest.json and every "
        "PREFIX*.tar file (stale shards are deleted)",
    )
    parser.add_argument(
        "--no-labels", action="store_true",
        help="do not write labels.csv (key,label from each image's top-level sub-folder)",
    )
    parser.add_argument(
        "--follow-links", action="store_true",
        help="pack the files symbolic links point to and search linked folders (default: links "
        "are listed as ignored, so nothing from outside SRC_DIR is packed)",
    )
    parser.add_argument(
        "--take-over", action="store_true",
        help="take over the destination's lease (_lease.json) from a make-shards run that "
        "stopped on another machine and has not renewed it for 2 minutes",
    )
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)
    parser.add_argument("--region", default=None, help="S3 region")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no per-file warnings"
    )


def _show(title: str, items: list, limit: int = 20) -> None:
    print(f"warning: {title}:", file=sys.stderr)
    for item in items[:limit]:
        print(f"  {item.path}: {item.reason}", file=sys.stderr)
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more (all listed in manifest.json)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS
    from berg_scale.io.pack_folder import pack_folder, walk_images
    from berg_scale.io.storage import StorageOptions
    from berg_scale.io.storage_errors import storage_errors

    storage = StorageOptions(endpoint_url=args.endpoint_url, region=args.region)
    per_shard = args.per_shard if args.per_shard is not None else (None if args.shard_size else 1000)
    # Counting first gives the bar a total; the walk is cheap next to reading images.
    show_total = not args.quiet and os.path.isdir(args.src_dir)
    total = len(walk_images(args.src_dir, args.follow_links)[0]) if show_total else None
    with storage_errors(args.dest, storage, what="write"), tqdm(
        total=total, unit="img", desc="packing", disable=args.quiet or None, file=sys.stderr
    ) as bar:
        report = pack_folder(
            args.src_dir,
            args.dest,
            per_shard=per_shard,
            shard_bytes=args.shard_size,
            prefix=args.prefix,
            storage=storage,
            check=args.check,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
            max_side=args.max_side,
            jpeg_quality=args.jpeg_quality,
            workers=args.workers,
            overwrite=args.overwrite,
            add=args.add,
            labels=not args.no_labels,
            follow_links=args.follow_links,
            progress=bar.update,
            take_over=args.take_over,
        )
    if not args.quiet:
        if report.skipped:
            _show(f"skipped {len(report.skipped)} unreadable file(s)", report.skipped)
        if report.ignored:
            _show(f"ignored {len(report.ignored)} file(s) that are not images", report.ignored)
    if report.n_images == 0 and not report.existing_shards:
        print(
            f"make-shards: error: no readable images found in {args.src_dir} "
            f"({len(report.skipped)} unreadable, {report.ignored_files} other files); "
            "nothing was written; point it at a folder of JPEG, PNG, WebP, BMP, TIFF or GIF images",
            file=sys.stderr,
        )
        return 2
    added = f" (--add: {report.already_packed} already in {len(report.existing_shards)} existing shard(s))" \
        if args.add else ""
    resized = f"; resized {report.resized}" if report.resized else ""
    labels = f"; labels: {report.labels_url}" if report.labels_url else ""
    print(
        f"packed {report.n_images} image(s) into {len(report.shards)} shard(s) at "
        f"{args.dest}{added}; skipped {len(report.skipped)} unreadable, ignored "
        f"{report.ignored_files} non-image file(s){resized}; manifest: {report.manifest_url}{labels}"
    )
    if report.labels_note:
        print(f"note: {report.labels_note}", file=sys.stderr)
    return 0
