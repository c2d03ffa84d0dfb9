"""Parquet response shards: the schema, how rows become Arrow arrays, atomic shard writes.

One Parquet file per input shard, one row per input image. Responses are fixed-size
lists of float32/float16 (a multi-dimensional readout such as EEG (rep, channel, time) is
stored flattened in C order; its shape and axis names are in the schema metadata), and
scalar readouts (the `:mean` columns) are plain float columns, so pandas, polars and
DuckDB read them without any berg-scale code. Error rows keep their key and carry nulls.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from berg_scale import __version__
from berg_scale.io.output_store import OutputStore
from berg_scale.io.sample_metadata import metadata_array, metadata_names
from berg_scale.io.tar_sample import TarSample

METADATA_KEY = b"berg_scale"
ID_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
]
_ARROW_FLOATS = {"float32": pa.float32(), "float16": pa.float16()}


def column_description(column: Any, with_coords: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a ModelSet `OutputColumn` (coords only when asked)."""
    readout = column.readout
    description: dict[str, Any] = {
        "name": column.name,
        "kind": column.kind,
        "shape": [int(n) for n in column.shape],
        "dims": list(column.dims),
        "dtype": str(np.dtype(column.dtype)),
        "model_id": readout.model_id,
        "subject": int(readout.subject),
        "selection": _selection_of(readout),
    }
    if column.kind == "mean" and getattr(readout, "ncsnr_threshold", None) is not None:
        description["ncsnr_threshold"] = float(readout.ncsnr_threshold)  # the mean is over ncsnr > this
    if with_coords:
        description["coords"] = {str(k): _jsonable(v) for k, v in (column.coords or {}).items()}
        attrs = getattr(column, "attrs", None)
        if attrs:
            description["attrs"] = {str(k): _jsonable(v) for k, v in attrs.items()}
    return description


def build_schema(columns: Sequence[dict[str, Any]], metadata: dict[str, Any]) -> pa.Schema:
    """Schema from column descriptions; `metadata` lands under the `berg_scale` key."""
    fields = list(ID_FIELDS)
    for column in columns:
        fields.append(pa.field(column["name"], arrow_type(column["shape"], column["dtype"])))
    payload = {"engine_version": __version__, "columns": list(columns), **metadata}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(payload, sort_keys=True).encode()})


def arrow_type(shape: Sequence[int], dtype: str) -> pa.DataType:
    value_type = _ARROW_FLOATS[str(np.dtype(dtype))]
    size = math.prod(shape)
    if len(shape) == 0:
        return value_type
    return pa.list_(value_type, size)


def build_record_batch(
    schema: pa.Schema,
    shard: str,
    rows: Sequence[TarSample],
    outputs: dict[str, np.ndarray],
) -> pa.RecordBatch:
    """Rows (decoded samples) in input order; `outputs[name]` holds the ok rows only, in the same order."""
    n = len(rows)
    ok = np.fromiter((row.ok for row in rows), dtype=bool, count=n)
    n_ok = int(ok.sum())
    arrays: list[pa.Array] = [
        pa.array([row.key for row in rows], pa.string()),
        pa.array([shard] * n, pa.string()),
        pa.array([row.index for row in rows], pa.int32()),
        pa.array(["ok" if row.ok else "error" for row in rows], pa.string()),
        pa.array([row.error for row in rows], pa.string()),
    ]
    carried = set(metadata_names(schema))
    for field in list(schema)[len(ID_FIELDS) :]:
        if field.name in carried:
            arrays.append(metadata_array(field, [row.json for row in rows]))
            continue
        values = outputs.get(field.name)
        arrays.append(_column_array(field, values, ok, n_ok))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _column_array(field: pa.Field, values: np.ndarray | None, ok: np.ndarray, n_ok: int) -> pa.Array:
    is_list = pa.types.is_fixed_size_list(field.type)
    value_type = field.type.value_type if is_list else field.type
    width = field.type.list_size if is_list else 1
    numpy_dtype = value_type.to_pandas_dtype()
    full = np.zeros((len(ok), width), dtype=numpy_dtype)
    if n_ok:
        if values is None:
            raise ValueError(f"the model returned no values for column {field.name!r}")
        flat = np.asarray(values).reshape(n_ok, -1)
        if flat.shape[1] != width:
            raise ValueError(
                f"column {field.name!r}: expected {width} values per image, got {flat.shape[1]}"
            )
        full[ok] = flat.astype(numpy_dtype, copy=False)
    mask = pa.array(~ok)
    flat_values = pa.array(full.reshape(-1), type=value_type)
    if is_list:
        return pa.FixedSizeListArray.from_arrays(flat_values, width, mask=mask)
    return pa.array(full.reshape(-1), type=value_type, mask=~ok)


class ResponseShardWriter:
    """Streams record batches into a staging file; `commit` publishes it under its final key.

    Row groups are written as batches arrive, so a worker never holds a whole shard's
    responses in memory.
    """

    def __init__(self, store: OutputStore, shard: str, schema: pa.Schema) -> None:
        self.store = store
        self.shard = shard
        self.schema = schema
        self.final_path = store.response_path(shard)
        self.temp_path = store.temp_path(self.final_path)
        store.ensure_parent(self.temp_path)
        self._file = store.fs.open(self.temp_path, "wb")
        self._writer = pq.ParquetWriter(self._file, schema, compression="zstd")
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self) -> str:
        self._close()
        self.store.publish(self.temp_path, self.final_path)
        return self.final_path

    def abort(self) -> None:
        try:
            self._close()
        finally:
            self.store.remove(self.temp_path)

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            finally:
                self._file.close()

    def __enter__(self) -> "ResponseShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def read_schema_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _selection_of(readout: Any) -> Any:
    """The compact selection (binary vectors as index lists) when the spec offers one."""
    to_dict = getattr(readout, "to_dict", None)
    if callable(to_dict):
        return to_dict().get("selection")
    return _jsonable(readout.selection)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def iter_descriptions(columns: Iterable[Any], with_coords: bool = False) -> list[dict[str, Any]]:
    return [column_description(column, with_coords=with_coords) for column in columns]
