"""A study written into an `out_dir` that holds an earlier one: what stays, what goes.

`rnc univariate --out DIR` followed by `rnc multivariate --out DIR` is the documented way
to run the two analyses with different options, so a run that computes one part keeps
the other part's entry of summary.json, but only while that entry still describes files
that are there and responses that are still the ones read: the same `responses`, the
same shard commits (a regenerated output has the same shard names but new markers) and
the same study-wide settings that summary.json states once for both parts. Otherwise
the entry is dropped, and the log says why.

A part that is rerun rewrites its tables and figures; files of its folder that an
earlier run wrote and this one did not (figures of pairs no longer studied, figures of a
run with plots when this one has none) would sit next to the new tables as if they
belonged to them, so they are removed. Only names berg-scale itself gives (its tables,
its figure stems, or files the earlier summary.json lists) are touched, never other files.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any, Callable

from berg_scale.io.folder_files import file_names, remove_files
from berg_scale.io.storage import filesystem_for

PARTS = ("univariate", "multivariate")
TABLES = {
    "univariate": ("controlling", "baselines", "tests", "correlations", "excluded"),
    "multivariate": ("generations", "controlling", "baselines", "tests", "excluded", "nulls"),
}
FIGURE_STEMS = {"univariate": ("scatter", "images", "baselines"), "multivariate": ("generations", "images")}
FIGURE_FORMATS = ("png", "svg", "pdf")
# stated once in summary.json for both parts, so both parts must share them
SHARED_SETTINGS = ("model_id", "subjects", "roi_unions", "ncsnr_threshold", "seed")


def read_summary(fs: Any, out_root: str) -> dict | None:
    """The summary.json an earlier study left in `out_root`, or None (none, or not JSON)."""
    try:
        data = json.loads(fs.cat_file(posixpath.join(out_root, "summary.json")))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def carried_parts(
    previous: dict | None, summary: dict, parts_run: set[str], fs: Any, out_root: str, storage: Any,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """Part -> its earlier entry, for each part this run does not compute and may keep.

    Logs one line for each earlier part that is dropped, with the reason.
    """
    kept: dict[str, dict] = {}
    for part in PARTS:
        if part in parts_run or not previous or part not in previous:
            continue
        reason = _reason_to_drop(previous, summary, part, fs, out_root, storage)
        if reason:
            log(f"{part}: the earlier {part} results are left out of summary.json because {reason}; run "
                f"`berg-scale rnc {part}` with this --out to add them again")
            continue
        kept[part] = previous[part]
        log(f"{part}: the earlier {part} results stay in summary.json (same responses and shard commits)")
    return kept


def keep_parts(summary: dict, previous: dict, kept: dict[str, dict], out_root: str) -> None:
    """Put the kept parts' entries, outputs and config sections into this run's summary."""
    for part, entry in kept.items():
        summary[part] = entry
        folder = posixpath.join(out_root, part)
        summary["outputs"] = [p for p in previous.get("outputs", []) if posixpath.dirname(p) == folder] + [
            p for p in summary["outputs"] if posixpath.dirname(p) != folder]
        section = (previous.get("config") or {}).get(part)
        if section is not None:
            summary["config"][part] = section
        if "n_images" in previous:
            summary.setdefault("n_images", previous["n_images"])


def _reason_to_drop(previous: dict, summary: dict, part: str, fs: Any, out_root: str, storage: Any) -> str:
    if not _same_location(previous.get("responses"), summary["responses"], storage):
        return f"they were made from other responses ({previous.get('responses')})"
    if "shard_commits" not in previous:
        return "their summary records no shard commits to compare with the responses"
    if previous["shard_commits"] != summary["shard_commits"]:
        return "the responses have been regenerated since (their shard commits differ)"
    before, now = previous.get("config") or {}, summary["config"]
    for name in SHARED_SETTINGS:
        if before.get(name) != now.get(name):
            return f"they were made with {name} {before.get(name)!r} and this run uses {now.get(name)!r}"
    missing = _missing_files(previous, part, fs, out_root)
    if missing:
        return f"their files are gone ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
    return ""


def _same_location(a: Any, b: Any, storage: Any) -> bool:
    """Whether two response URLs name the same place (`out` and `./out` do)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    if a == b:
        return True
    fs_a, root_a = filesystem_for(a, storage)
    fs_b, root_b = filesystem_for(b, storage)
    return type(fs_a) is type(fs_b) and root_a.rstrip("/") == root_b.rstrip("/")


def _missing_files(previous: dict, part: str, fs: Any, out_root: str) -> list[str]:
    folder = posixpath.join(out_root, part)
    present = file_names(fs, folder)
    listed = [posixpath.basename(p) for p in previous.get("outputs", []) if posixpath.dirname(p) == folder]
    wanted = listed or ["controlling.parquet"]
    return [name for name in wanted if name not in present]


def is_own_name(part: str, name: str) -> bool:
    """A file name berg-scale gives in a part's folder: one of its tables or figure stems."""
    if name in {f"{t}.parquet" for t in TABLES[part]}:
        return True
    stems = "|".join(FIGURE_STEMS[part])
    return re.fullmatch(rf"(?:{stems})_.+-.+\.(?:{'|'.join(FIGURE_FORMATS)})", name) is not None


def remove_stale(
    fs: Any, out_root: str, part: str, written: list[str], previous: dict | None, log: Callable[[str], None],
) -> list[str]:
    """Remove files of the part's folder that an earlier run wrote and this run did not; returns them."""
    folder = posixpath.join(out_root, part)
    now = {posixpath.basename(p) for p in written if posixpath.dirname(p) == folder}
    listed = {posixpath.basename(p) for p in (previous or {}).get("outputs", []) if posixpath.dirname(p) == folder}
    stale = sorted(name for name in file_names(fs, folder)
                   if name not in now and (name in listed or is_own_name(part, name)))
    remove_files(fs, folder, stale)
    if stale:
        shown = ", ".join(stale[:4]) + (", ..." if len(stale) > 4 else "")
        log(f"{part}: removed {len(stale)} stale file(s) of an earlier run that this run did not rewrite ({shown})")
    return stale
