"""Find the k images whose predicted response pattern is nearest a target pattern.

The searched vector of an image is one or more response columns of a `generate` output,
concatenated in the order given: an ROI's voxel responses, a set of ROI means, or any
numeric column. The target is a vector in a .npy or .csv file, or the response of one
image of the output (--like SHARD/KEY, left out of the results).

Exact search (the default) streams over the committed shards with a running top-k, so
it works for any number of images in the memory of one shard. --index ann builds a
faiss HNSW index (pip install faiss-cpu), saved under OUT/index/ and reused by later
searches while the output and options are unchanged; --index auto uses a valid saved
index, builds one above --ann-above images, and otherwise searches exactly.
Writes OUT/results.parquet, OUT/summary.json and OUT/grid.png.
"""

from __future__ import annotations

import argparse
import sys
import time

from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.subject_ids import subject_argument


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--responses", required=True, metavar="OUTPUT",
                        help="generate output to search (local folder or s3://)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for results, summary and grid")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--columns", nargs="+", metavar="NAME",
                       help="response columns, concatenated in this order (e.g. fmri-nsd-fwrf/sub-01/V1)")
    which.add_argument("--rois", nargs="+", metavar="ROI",
                       help="ROIs whose means (or, with --voxels, voxel responses) form the vector")
    parser.add_argument("--model", help="model of --rois (default: the only model in the output)")
    parser.add_argument("--subjects", type=subject_argument, nargs="+", help="subjects of --rois (default: all in the output)")
    parser.add_argument("--voxels", action="store_true", help="with --rois: voxel responses instead of ROI means")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="FILE", help="target vector: .npy, or .csv/.txt of numbers")
    target.add_argument("--like", metavar="SHARD/KEY", help="use this image's own response as the target")
    parser.add_argument("-k", type=int, default=10, help="number of images to return (default 10)")
    parser.add_argument("--metric", default="euclidean", choices=("euclidean", "cosine", "correlation"),
                        help="distance (default euclidean; correlation = 1 - Pearson r)")
    parser.add_argument("--index", default="exact", choices=("exact", "ann", "auto"),
                        help="exact streaming search (default), a faiss HNSW index, or auto (see above)")
    parser.add_argument("--ann-above", type=int, default=10_000_000, metavar="N",
                        help="--index auto: build an ANN index above this many images (default 10,000,000); "
                             "a valid saved index is always used")
    parser.add_argument("--index-dir", metavar="DIR", help="where the ANN index is saved and reused (default OUT/index)")
    parser.add_argument("--rebuild-index", action="store_true", help="build a new ANN index even if a valid one exists")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree (default 32)")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW build beam width (default 80)")
    parser.add_argument("--ef-search", type=int, default=128,
                        help="HNSW query beam width; higher: better recall, slower (default 128)")
    parser.add_argument("--images", metavar="URL",
                        help="folder of the input tars (<URL>/<shard>.tar), when not where the commit markers say")
    parser.add_argument("--tile-size", type=int, default=128, help="pixel size of grid tiles (default 128)")
    parser.add_argument("--no-grid", action="store_true", help="write the table and summary only")
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)


def run(args: argparse.Namespace) -> int:
    from berg_scale.io.storage import StorageOptions, join
    from berg_scale.rnc.responses import ResponseStore
    from berg_scale.search.ann import AnnParams
    from berg_scale.search.columns import roi_columns
    from berg_scale.search.errors import SearchError
    from berg_scale.search.nearest import SearchRequest, find_nearest
    from berg_scale.search.outputs import write_results

    if args.tile_size < 16 or args.tile_size > 1024:
        raise SearchError(f"--tile-size must be between 16 and 1024 (got {args.tile_size})")
    if args.columns is not None and (args.model or args.subjects or args.voxels):
        raise SearchError("--model, --subjects and --voxels go with --rois, not with --columns")
    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    columns = args.columns
    if columns is None:
        columns = roi_columns(ResponseStore(args.responses, storage), args.rois, args.model, args.subjects, args.voxels)
    request = SearchRequest(
        responses=args.responses, columns=columns, target_file=args.target, like=args.like, k=args.k,
        metric=args.metric, index=args.index, ann_above=args.ann_above,
        ann=AnnParams(args.hnsw_m, args.ef_construction, args.ef_search),
        index_dir=args.index_dir or join(args.out, "index"), rebuild_index=args.rebuild_index, storage=storage,
    )
    result = find_nearest(request, _Progress())
    files = write_results(result, args.out, args.responses, storage, grid=not args.no_grid,
                          images_url=args.images, tile=args.tile_size)
    print(f"{result.method} search, {result.metric} distance over {result.width} values "
          f"({len(result.columns)} column{'s' if len(result.columns) != 1 else ''}): {result.counts.describe()}")
    if result.ann:
        state = "reused" if result.ann["reused"] else "built"
        print(f"ANN index {state}: {result.ann['vectors']:,} vectors, faiss HNSW M={result.ann['hnsw_m']}")
    for hit in result.hits:
        print(f"  {hit.rank:>3}  {hit.distance:.6g}  {hit.shard}/{hit.key}")
    for note in result.notes:
        print(f"note: {note}")
    written = [_as_url(path, args.out) for path in (files["results"], files.get("grid"), files["summary"]) if path]
    print(f"wrote {', '.join(written)} ({result.seconds['total']:.1f} s)")
    return 0


def _as_url(path: str, out: str) -> str:
    """A written path as the user names it: object-store paths keep their scheme."""
    scheme = out.split("://", 1)[0] + "://" if "://" in out else ""
    return path if not scheme or path.startswith(scheme) else scheme + path


class _Progress:
    """Prints how far a long pass has got, at most every 10 seconds (to stderr)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = time.monotonic()

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every and done < total:
            self.last = now
            print(f"{what} {done:,} of {total:,} shards", file=sys.stderr, flush=True)
