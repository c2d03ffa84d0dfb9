"""Where every experiment's files go: Parquet tables, figures as PNG and SVG, and a
summary.json that lists them all, through one filesystem (local or s3://).

Each experiment decides what its tables and figure hold; writing them the same way keeps
the output folders alike, so a reader finds `summary.json["files"]` in every one.

A rerun into the same --out (with --no-figures, fewer ROIs, the other RNC kind) writes
fewer files than the run before it; the files it does not rewrite would then sit beside
the new tables and describe another run. Each experiment therefore names every file it
can write, and the writer removes those of them that this run does not write, and only
those: files a user put in the folder are never touched.
"""

from __future__ import annotations

import argparse
import io
import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from berg_scale.io.folder_files import file_names, remove_files

FIGURE_FORMATS = ("png", "svg")
SUMMARY_FILE = "summary.json"


def add_no_figures_option(parser: argparse.ArgumentParser, first: str = "--no-figures") -> None:
    """--no-figures and --no-plots as one option (`args.no_figures`), `first` the name shown first:
    every experiment accepts either spelling, whichever its documentation uses."""
    other = "--no-plots" if first == "--no-figures" else "--no-figures"
    parser.add_argument(first, other, dest="no_figures", action="store_true",
                        help="write the tables and summary only, no figures")


def output_names(tables: Iterable[str] = (), figures: Iterable[str] = ()) -> set[str]:
    """File names the writer gives tables (name -> name.parquet) and figure stems (stem.png, stem.svg),
    with summary.json: what an experiment passes as `known` to `write_experiment_outputs`."""
    names = {f"{name}.parquet" for name in tables}
    names |= {f"{stem}.{fmt}" for stem in figures for fmt in FIGURE_FORMATS}
    return names | {SUMMARY_FILE}


def remove_stale_outputs(
    fs: Any,
    root: str,
    known: Iterable[str],
    written: Iterable[str],
    experiment: str,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Remove the files of `known` under `root` that this run will not write; returns their names.

    Only names in `known` (those the experiment itself writes) are candidates, so unknown
    files stay. Logs one line when anything was removed.
    """
    stale = sorted((set(known) - set(written)) & file_names(fs, root))
    remove_files(fs, root, stale)
    if stale:
        log(f"removed {len(stale)} file{'s' if len(stale) != 1 else ''} of an earlier {experiment} run that "
            f"this run does not write: {', '.join(stale)}")
    return stale


def write_experiment_outputs(
    out: str,
    storage: Any,
    tables: Mapping[str, Any],
    figures: Mapping[str, Any],
    summary: dict[str, Any],
    known: Iterable[str] = (),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Write `tables` (name -> pyarrow Table) as <name>.parquet, `figures` (stem -> matplotlib
    Figure, closed afterwards) as <stem>.png/.svg, and `summary` plus the list of every file
    as summary.json under `out`; returns the URLs written, summary.json last.

    `known` names every file the experiment can write (see `output_names`); those that this
    run does not write are removed first, so the folder holds one run's files only.
    """
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from berg_scale.io.storage import filesystem_for, to_url
    from berg_scale.rnc.outputs import write_json

    fs, root = filesystem_for(out, storage)
    fs.makedirs(root, exist_ok=True)
    experiment = str(summary.get("experiment") or "experiment")
    remove_stale_outputs(fs, root, known, output_names(tables, figures), experiment, log)
    written = []
    for name, table in tables.items():
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = posixpath.join(root, f"{name}.parquet")
        with fs.open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        written.append(path)
    for stem, figure in figures.items():
        try:
            for fmt in FIGURE_FORMATS:
                buffer = io.BytesIO()
                figure.savefig(buffer, format=fmt, dpi=200, bbox_inches="tight")
                path = posixpath.join(root, f"{stem}.{fmt}")
                with fs.open(path, "wb") as handle:
                    handle.write(buffer.getvalue())
                written.append(path)
        finally:
            plt.close(figure)
    path = posixpath.join(root, SUMMARY_FILE)
    urls = [to_url(fs, p) for p in [*written, path]]
    summary["files"] = urls
    write_json(fs, path, summary)
    return urls
