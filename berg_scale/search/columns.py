"""Which response columns make up the searched vector, and reading them shard by shard.

The searched vector of an image is the concatenation, in the order given, of one or more
columns of a `generate` output: an ROI's voxel (or vertex) responses
(`model/sub-01/V1`), ROI means (`model/sub-01/V1:mean`, one value each) or any other
numeric column (EEG columns are flattened in their stored order). Only committed
shards and rows with status "ok" are read, one shard at a time.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from berg_scale.rnc.responses import ResponseStore, mean_column, response_column
from berg_scale.search.errors import SearchError

BOOKKEEPING = ("key", "shard", "index", "status", "error")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the searched vector and how many values it contributes."""

    name: str
    width: int


@dataclass(frozen=True)
class VectorBatch:
    """The ok images of one committed shard: keys, positions and their vectors."""

    shard: str
    keys: pa.Array  # string
    indices: np.ndarray  # int64, the `index` column (row position in the input shard)
    values: np.ndarray  # float32 (rows, D); NaN where a response is null
    finite: np.ndarray  # bool (rows,): every value of the row is finite
    nonfinite_by_column: dict[str, int]  # rows with a non-finite value, per column

    def keys_at(self, rows: np.ndarray) -> list[str]:
        return self.keys.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()


def schema_of(store: ResponseStore) -> pa.Schema:
    return store.dataset(store.committed_shards()[:1]).schema


def resolve_columns(store: ResponseStore, names: Sequence[str]) -> list[ColumnSpec]:
    """Check the column names against the output and give each its width."""
    if not names:
        raise SearchError("no columns to search: pass --columns NAME ... or --rois ROI ...")
    duplicated = sorted({n for n in names if list(names).count(n) > 1})
    if duplicated:
        raise SearchError(f"column {duplicated[0]!r} is given twice: list each column once")
    schema = schema_of(store)
    available = [n for n in schema.names if n not in BOOKKEEPING]
    specs = []
    for name in names:
        if name not in schema.names or name in BOOKKEEPING:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SearchError(
                f"no response column {name!r} in {store.url}{hint} ({len(available)} columns, e.g. "
                f"{', '.join(available[:4]) or 'none'})"
            )
        specs.append(ColumnSpec(name, _width(schema.field(name).type, name)))
    return specs


def roi_columns(
    store: ResponseStore, rois: Sequence[str], model: str | None = None,
    subjects: Sequence[int] | None = None, voxels: bool = False,
) -> list[str]:
    """Column names for ROI means (or ROI voxel responses), subject by subject, ROI by ROI."""
    names = [n for n in schema_of(store).names if n not in BOOKKEEPING]
    parsed = [p for p in (_parse(n) for n in names) if p is not None]
    models = sorted({m for m, _, _ in parsed})
    if model is None:
        if len(models) != 1:
            raise SearchError(
                f"the output holds {len(models)} models ({', '.join(models) or 'none'}): name one with --model"
            )
        model = models[0]
    elif model not in models:
        raise SearchError(f"no columns of model {model!r} in {store.url}; models: {', '.join(models) or 'none'}")
    present = sorted({s for m, s, _ in parsed if m == model})
    subjects = list(subjects) if subjects else present
    columns = []
    for subject in subjects:
        for roi in rois:
            name = response_column(model, subject, roi) if voxels else mean_column(model, subject, roi)
            if name not in names:
                have = sorted({r.removesuffix(":mean") for m, s, r in parsed if m == model and s == subject})
                raise SearchError(
                    f"no column {name!r}: subject {subject} of {model} has "
                    f"{', '.join(have) or 'no columns'} (subjects: {', '.join(map(str, present))})"
                )
            columns.append(name)
    return columns


def iter_vectors(
    store: ResponseStore, columns: Sequence[ColumnSpec], shards: Sequence[str] | None = None
) -> Iterator[VectorBatch]:
    """One VectorBatch per committed shard, in shard-name order."""
    names = [c.name for c in columns]
    for shard, table in store.iter_shards(["key", *names], shards):
        blocks, nonfinite = [], {}
        finite = np.ones(table.num_rows, dtype=bool)
        for spec in columns:
            block = column_matrix(table.column(spec.name), spec)
            ok = np.isfinite(block).all(axis=1)
            nonfinite[spec.name] = int((~ok).sum())
            finite &= ok
            blocks.append(block)
        values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        keys = table.column("key").combine_chunks()
        indices = table.column("index").to_numpy().astype(np.int64)
        yield VectorBatch(shard, keys, indices, values, finite, nonfinite)


def column_matrix(column: pa.ChunkedArray, spec: ColumnSpec) -> np.ndarray:
    """(rows, width) float32 values of a scalar or fixed-size-list column; nulls become NaN."""
    pieces = []
    for chunk in column.chunks:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage
        if pa.types.is_fixed_size_list(chunk.type):
            size = chunk.type.list_size
            flat = chunk.values.slice(chunk.offset * size, len(chunk) * size)
            block = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(chunk), size)
        else:
            block = chunk.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(chunk), 1)
        if chunk.null_count:
            block = block.copy()
            block[np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
        if block.shape[1] != spec.width:
            raise SearchError(f"column {spec.name!r} has {block.shape[1]} values in one shard and {spec.width} in another")
        pieces.append(block)
    if not pieces:
        return np.empty((0, spec.width), np.float32)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _width(field_type: pa.DataType, name: str) -> int:
    if isinstance(field_type, pa.ExtensionType):
        field_type = field_type.storage_type
    if pa.types.is_fixed_size_list(field_type) and _numeric(field_type.value_type):
        return int(field_type.list_size)
    if _numeric(field_type):
        return 1
    raise SearchError(f"column {name!r} is {field_type}, not a numeric response column")


def _numeric(field_type: pa.DataType) -> bool:
    return pa.types.is_floating(field_type) or pa.types.is_integer(field_type)


def _parse(name: str) -> tuple[str, int, str] | None:
    """(model, subject, selection) of a response column name `model/sub-XX/selection`."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[1].startswith("sub-") or not parts[1][4:].isdigit():
        return None
    return parts[0], int(parts[1][4:]), parts[2]
