"""Pack a folder of images (searched recursively) into WebDataset tar shards.

Image bytes are copied unchanged; keys come from the relative paths. Each file is
checked first and unreadable ones are skipped and listed. DEST may be a local folder
or an s3:// prefix (credentials and endpoint from the standard AWS variables or
--endpoint-url). A manifest.json listing shards, keys and source paths is written
last. Exit status: 0 when at least one image was packed, 1 when none was.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of images (recursive)")
    parser.add_argument("dest", metavar="DEST", help="output folder or s3://bucket/prefix")
    parser.add_argument(
        "--per-shard", type=int, default=1000, metavar="N",
        help="images per shard (default: 1000)",
    )
    parser.add_argument(
        "--prefix", default="shard-",
        help="shard file name prefix; shards are PREFIX000000.tar, ... (default: shard-)",
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
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace what DEST holds from an earlier run: its manifest.json and every "
        "PREFIX*.tar file (stale shards are deleted)",
    )
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint URL")
    parser.add_argument("--region", default=None, help="S3 region")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no per-file warnings"
    )


def _show_skipped(skipped: list, limit: int = 20) -> None:
    print(f"warning: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
    for item in skipped[:limit]:
        print(f"  {item.path}: {item.reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (all listed in manifest.json)",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS
    from berg_scale.io.pack_folder import pack_folder, walk_images
    from berg_scale.io.storage import StorageOptions
    from berg_scale.io.storage_errors import storage_errors

    storage = StorageOptions(endpoint_url=args.endpoint_url, region=args.region)
    # Counting first gives the bar a total; the walk is cheap next to reading images.
    show_total = not args.quiet and os.path.isdir(args.src_dir)
    total = len(walk_images(args.src_dir)[0]) if show_total else None
    with storage_errors(args.dest, storage, what="write"), tqdm(
        total=total, unit="img", desc="packing", disable=args.quiet or None, file=sys.stderr
    ) as bar:
        report = pack_folder(
            args.src_dir,
            args.dest,
            per_shard=args.per_shard,
            prefix=args.prefix,
            storage=storage,
            check=args.check,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=bar.update,
        )
    if report.skipped and not args.quiet:
        _show_skipped(report.skipped)
    if report.n_images == 0:
        print(
            f"make-shards: error: no readable images found in {args.src_dir} "
            f"({len(report.skipped)} unreadable, {report.ignored_files} other files); "
            "nothing was written; point it at a folder of JPEG, PNG, WebP, BMP or TIFF images",
            file=sys.stderr,
        )
        return 2
    print(
        f"packed {report.n_images} image(s) into {len(report.shards)} shard(s) at "
        f"{args.dest}; skipped {len(report.skipped)} unreadable, ignored "
        f"{report.ignored_files} non-image file(s); manifest: {report.manifest_url}"
    )
    return 0
