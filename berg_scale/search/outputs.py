"""What a search writes under --out: results.parquet, summary.json and grid.png.

    results.parquet  rank, shard, key, index, distance (nearest first)
    summary.json     the request, the method, counts of images read / skipped / ranked,
                     timings, the ANN index (if any), the same hits as the table, and
                     warnings (an output still being written or only partly committed)
    grid.png         the target image (for --like) and the k images with keys and distances
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from berg_scale.io.storage import StorageOptions, filesystem_for
from berg_scale.rnc.outputs import write_json, write_tables
from berg_scale.search.nearest import SearchResult

RESULTS_SCHEMA = pa.schema([
    ("rank", pa.int32()), ("shard", pa.string()), ("key", pa.string()), ("index", pa.int64()),
    ("distance", pa.float64()),
])


def results_table(result: SearchResult) -> pa.Table:
    return pa.Table.from_pylist(
        [{"rank": h.rank, "shard": h.shard, "key": h.key, "index": h.index, "distance": h.distance}
         for h in result.hits],
        schema=RESULTS_SCHEMA,
    )


def summary(result: SearchResult, responses: str, files: dict[str, Any]) -> dict[str, Any]:
    return {
        "responses": responses,
        "target": {**result.target.source, "values": int(result.target.vector.size)},
        "columns": [{"name": c.name, "width": c.width} for c in result.columns],
        "width": result.width,
        "metric": result.metric,
        "k": result.k,
        "method": result.method,
        "ann": result.ann,
        "counts": result.counts.as_dict(),
        "results": [{"rank": h.rank, "shard": h.shard, "key": h.key, "index": h.index, "distance": h.distance}
                    for h in result.hits],
        "notes": result.notes,
        "warnings": result.warnings,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "files": files,
    }


def write_results(result: SearchResult, out: str, responses: str, storage: StorageOptions | None = None,
                  grid: bool = True, images_url: str | None = None, tile: int = 128) -> dict[str, Any]:
    """Write the table, the grid (unless asked not to or impossible) and the summary."""
    fs, root = filesystem_for(out, storage)
    files: dict[str, Any] = {"results": write_tables(fs, root, {"results": results_table(result)})[0]}
    path, note = _write_grid(result, fs, root, responses, storage, images_url, tile) if grid else (None, "")
    files["grid"] = path
    if note:
        result.notes.append(note)
    stale = posixpath.join(root, "grid.png")
    if path is None and fs.exists(stale):
        fs.rm(stale)  # a grid of an earlier search in the same folder would not match these results
    if result.ann and result.ann.get("files"):
        files["index"] = result.ann["files"]
    files["summary"] = posixpath.join(root, "summary.json")
    write_json(fs, files["summary"], summary(result, responses, files))
    return files


def _write_grid(result, fs, root, responses, storage, images_url, tile) -> tuple[str | None, str]:
    from berg_scale.rnc.images import fetch_thumbnails, images_folder_problem, locate_sources
    from berg_scale.rnc.plots import save_figure
    from berg_scale.search.grid import grid_figure

    target = result.target.exclude
    wanted = [(h.shard, h.key) for h in result.hits] + ([target] if target else [])
    if not wanted:
        return None, "no image grid: no image was ranked"
    problem = images_folder_problem(images_url, storage) if images_url else None
    if problem:
        return None, f"no image grid: --images {problem}; give the folder of the input tars"
    sources = locate_sources({s for s, _ in wanted}, responses, images_url, storage)
    if not any(sources.values()):
        return None, ("no image grid: the commit markers record no input tar for these shards; "
                      "pass --images URL (the folder of the input tars)")
    fetched = fetch_thumbnails(sources, wanted, storage, tile)
    tiles = {pair: fetched.get(*pair) for pair in wanted}
    missing = len(fetched.missing)
    source = result.target.source
    what = (f"the response of {source['like']} (red)" if target
            else f"the target pattern in {posixpath.basename(str(source.get('file', '')))}")
    names = ", ".join(c.name for c in result.columns)
    title = (f"{len(result.hits)} images nearest to {what}\n"
             f"{result.metric} distance over {result.width} values ({_shorten(names, 90)}), {result.method} search")
    footer = result.counts.describe()
    fig = grid_figure(result.hits, tiles, title, target, footer)
    path = save_figure(fig, fs, posixpath.join(root, "grid"), ["png"])[0]
    note = (f"{missing} of {len(tiles)} grid images were not found: {fetched.warning()}" if missing else "")
    return path, note


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
