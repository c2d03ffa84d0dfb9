"""Where every experiment's files go: Parquet tables, figures as PNG and SVG, and a
summary.json that lists them all, through one filesystem (local or s3://).

Each experiment decides what its tables and figure hold; writing them the same way keeps
the output folders alike, so a reader finds `summary.json["files"]` in every one.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Mapping
from typing import Any

FIGURE_FORMATS = ("png", "svg")


def write_experiment_outputs(
    out: str,
    storage: Any,
    tables: Mapping[str, Any],
    figures: Mapping[str, Any],
    summary: dict[str, Any],
) -> list[str]:
    """Write `tables` (name -> pyarrow Table) as <name>.parquet, `figures` (stem -> matplotlib
    Figure, closed afterwards) as <stem>.png/.svg, and `summary` plus the list of every file
    as summary.json under `out`; returns the URLs written, summary.json last."""
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from berg_scale.io.storage import filesystem_for, to_url
    from berg_scale.rnc.outputs import write_json

    fs, root = filesystem_for(out, storage)
    fs.makedirs(root, exist_ok=True)
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
    path = posixpath.join(root, "summary.json")
    urls = [to_url(fs, p) for p in [*written, path]]
    summary["files"] = urls
    write_json(fs, path, summary)
    return urls
