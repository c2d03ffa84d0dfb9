"""Label tables: which category each image belongs to, joined to committed responses.

A label table is a CSV or Parquet file with a label column (`label`, or the column that
the experiment's --label-column names) and either a `key` column
(image keys, unique across the output) or `shard` + `key` columns (when keys repeat
across shards). Experiments never drop an image silently: keys in the table that the
responses lack, and responses whose key has no label, are counted and reported, and
images with an error row are reported apart.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions, filesystem_for


class LabelError(BergScaleError):
    """A label table is unreadable or does not fit the responses."""


@dataclass(frozen=True)
class LabelTable:
    """Labels by image: `by_key[(shard or None, key)] = label`."""

    source: str
    by_key: dict[tuple[str | None, str], str]
    uses_shard: bool

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.by_key.values()))

    def label_of(self, shard: str, key: str) -> str | None:
        return self.by_key.get((shard if self.uses_shard else None, key))


@dataclass
class LabelMatch:
    """Labels aligned with a list of response rows, and what did not match."""

    labels: np.ndarray  # object array, None where a row has no label
    missing_in_responses: list[str] = field(default_factory=list)  # table keys never seen
    unlabelled_rows: int = 0  # response rows without a label (left out)
    error_rows: int = 0  # labelled images whose response row is an error row (left out)
    # table (shard, key) pairs missing whose key the responses hold in another shard:
    # (key, table's shard, a responses' shard) of the first, and how many
    other_shard: tuple[str, str, str] | None = None
    other_shard_count: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "labelled_images_used": int(sum(label is not None for label in self.labels)),
            "table_keys_missing_from_responses": len(self.missing_in_responses),
            "first_missing": self.missing_in_responses[:10],
            "response_rows_without_label": self.unlabelled_rows,
            "labelled_error_rows": self.error_rows,
            "table_keys_in_another_shard": self.other_shard_count,
        }

    def describe(self) -> str:
        parts = [f"{self.report()['labelled_images_used']} labelled images used"]
        if self.missing_in_responses:
            parts.append(f"{len(self.missing_in_responses)} table keys not in the responses "
                         f"(first: {self.missing_in_responses[0]})")
        if self.other_shard is not None:
            key, table_shard, found = self.other_shard
            parts.append(f"{self.other_shard_count} of them are in the responses under another shard "
                         f"(first: {key!r}, shard {table_shard!r} in the table, {found!r} in the responses): "
                         f"the table's 'shard' column must name the responses' shards, or drop the "
                         f"column when keys are unique")
        if self.unlabelled_rows:
            parts.append(f"{self.unlabelled_rows} response rows without a label left out")
        if self.error_rows:
            parts.append(f"{self.error_rows} labelled images with an error row left out")
        return "; ".join(parts)


def read_label_table(path: str, storage: StorageOptions | None = None, label_column: str = "label") -> LabelTable:
    """Read a CSV or Parquet label table; one-line errors name the file and the fix."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fs, local = filesystem_for(path, storage)
    if not fs.exists(local):
        raise LabelError(f"label table {path} does not exist: check --labels")
    try:
        # Read by path (Parquet) or from bytes (CSV), never through a Python file object,
        # whose reads from pyarrow's threads can abort the interpreter at exit.
        if posixpath.splitext(local)[1].lower() in (".parquet", ".pq"):
            table = pq.read_table(local, filesystem=fs)
        else:
            convert = pcsv.ConvertOptions(column_types={"key": pa.string(), "shard": pa.string(),
                                                        label_column: pa.string()})
            table = pcsv.read_csv(pa.BufferReader(fs.cat_file(local)), convert_options=convert)
    except FileNotFoundError:
        raise LabelError(f"label table {path} does not exist: check --labels") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelError(f"cannot read label table {path} ({' '.join(str(exc).split())[:200]}): "
                         f"expected a CSV or Parquet file with columns key,{label_column}") from None
    check_columns(path, table.column_names, label_column)
    names = set(table.column_names)
    keys = [str(k) for k in table.column("key").to_pylist()]
    labels = table.column(label_column).to_pylist()
    uses_shard = "shard" in names
    shards: Sequence[Any] = table.column("shard").to_pylist() if uses_shard else [None] * len(keys)
    by_key: dict[tuple[str | None, str], str] = {}
    for row, (shard, key, label) in enumerate(zip(shards, keys, labels)):
        if label is None or str(label).strip() == "":
            raise LabelError(f"label table {path}: row {row + 2} ({key}) has an empty label")
        ident = (str(shard) if uses_shard else None, key)
        previous = by_key.get(ident)
        if previous is not None and previous != str(label):
            where = f"shard {shard}, key {key}" if uses_shard else f"key {key}"
            raise LabelError(f"label table {path}: {where} is labelled both {previous!r} and {label!r}")
        by_key[ident] = str(label)
    if not by_key:
        raise LabelError(f"label table {path} has no rows")
    return LabelTable(source=path, by_key=by_key, uses_shard=uses_shard)


def check_columns(path: str, columns: Sequence[str], label_column: str) -> None:
    """One-line errors for a table without a key or label column, naming its columns and --label-column."""
    have = ", ".join(columns) or "none"
    if "key" not in columns:
        raise LabelError(f"label table {path} needs a 'key' column of image keys (optionally with 'shard'); "
                         f"it has {have}")
    if label_column not in columns:
        others = [c for c in columns if c not in ("key", "shard")]
        hint = (f": name the column that holds the labels with --label-column, e.g. --label-column {others[0]}"
                if others else ": add a column of labels")
        raise LabelError(f"label table {path} has no column {label_column!r} (it has {have}){hint}")


def match_labels(table: LabelTable, shards: Sequence[str], keys: Sequence[str], ok: Sequence[bool]) -> LabelMatch:
    """Align labels with response rows (shard, key, status ok) and count every mismatch."""
    labels = np.empty(len(keys), dtype=object)
    seen: set[tuple[str | None, str]] = set()
    unlabelled = errors = 0
    for i, (shard, key, good) in enumerate(zip(shards, keys, ok)):
        ident = (shard if table.uses_shard else None, key)
        label = table.by_key.get(ident)
        if label is not None:
            seen.add(ident)
        if label is None:
            unlabelled += 1
        elif not good:
            errors += 1
            label = None
        labels[i] = label
    if not table.uses_shard:
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        repeated = [key for key, n in counts.items() if n > 1 and (None, key) in table.by_key]
        if repeated:
            raise LabelError(
                f"key {repeated[0]!r} appears in {counts[repeated[0]]} shards of the responses: "
                f"add a 'shard' column to the label table {table.source}"
            )
    unseen = sorted(((shard, key) for (shard, key) in table.by_key if (shard, key) not in seen),
                    key=lambda pair: (pair[1], str(pair[0])))
    missing = [key for _, key in unseen]
    match = LabelMatch(labels=labels, missing_in_responses=missing, unlabelled_rows=unlabelled, error_rows=errors)
    if table.uses_shard and unseen:
        shard_of = dict(zip(keys, shards))
        elsewhere = [(key, str(shard), shard_of[key]) for shard, key in unseen if key in shard_of]
        if elsewhere:
            match.other_shard, match.other_shard_count = elsewhere[0], len(elsewhere)
    return match
