"""Reading an output back: committed shards only, as Arrow, NumPy or labelled arrays.

A response file without a `_done` marker may be a leftover of a crashed or duplicate
execution, so readers go through the markers, never through a directory listing of
`responses/`. The Parquet files themselves need no berg-scale code: pandas, polars or
DuckDB can read `responses/*.parquet` directly (checking `_done/` first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.io.output_store import OutputStore, done_shards, read_readouts
from berg_scale.io.response_writer import read_schema_metadata
from berg_scale.io.storage import StorageOptions, absence_note
from berg_scale.io.storage_errors import storage_errors


def open_responses(output: str, storage: StorageOptions | None = None) -> Any:
    """A `pyarrow.dataset.Dataset` over the committed response shards of `output`."""
    import pyarrow.dataset as ds

    # Storage problems (no endpoint, refused credentials, a missing bucket) read as one
    # line naming the fix, as they do on the command line, not as a botocore traceback.
    with storage_errors(output, storage, what="read"):
        store = OutputStore(output, storage)
        names = sorted(done_shards(store))
        if not names:
            raise BergScaleError(
                f"{output} has no committed shards (no _done/*.json): run `berg-scale generate` "
                f"or check the path{absence_note(output, storage)}"
            )
        paths = [store.response_path(name) for name in names]
        return ds.dataset(paths, format="parquet", filesystem=store.fs)


def column_info(output: str, column: str, storage: StorageOptions | None = None) -> dict[str, Any]:
    """A column's description (shape, dims, dtype, coords) from readouts.json."""
    with storage_errors(output, storage, what="read"):
        readouts = read_readouts(OutputStore(output, storage)) or {}
    for entry in readouts.get("columns", []):
        if entry["name"] == column:
            return entry
    known = [entry["name"] for entry in readouts.get("columns", [])]
    if not known:
        schema = open_responses(output, storage).schema
        known = [entry["name"] for entry in read_schema_metadata(schema).get("columns", [])]
    raise BergScaleError(f"no column {column!r} in {output}; columns: {', '.join(known) or 'none'}")


def readout_array(
    output: str,
    column: str,
    status_ok_only: bool = True,
    storage: StorageOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) with values shaped (n_images, *column shape).

    With `status_ok_only=False`, error rows are included and filled with NaN.
    """
    keys, _, values = read_column(output, column, status_ok_only, storage)
    return keys, values


def read_column(
    output: str,
    column: str,
    status_ok_only: bool = True,
    storage: StorageOptions | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, shards, values): `readout_array` plus each row's input shard.

    Keys are unique within a shard only, so (shard, key) is what identifies an image.
    """
    import pyarrow.compute as pc

    dataset = open_responses(output, storage)
    if column not in dataset.schema.names:
        info = column_info(output, column, storage)  # raises with the list of columns
        raise BergScaleError(f"column {info['name']!r} is missing from the response files")
    shape = _column_shape(dataset.schema, column)
    row_filter = pc.field("status") == "ok" if status_ok_only else None
    table = dataset.to_table(columns=["shard", "key", column], filter=row_filter)
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    shards = np.asarray(table.column("shard").to_pylist(), dtype=object)
    values = _to_numpy(table.column(column), len(keys), shape)
    return keys, shards, values


def readout_xarray(output: str, column: str, status_ok_only: bool = True,
                   storage: StorageOptions | None = None) -> Any:
    """The column as an `xarray.DataArray` whose indexes are unique, so `sel` and `align` work.

    Dims are ("image", *column dims), except that fMRI columns put their vertices/voxels
    on a "neuroid" dim indexed by a MultiIndex: (hemisphere, vertex) for fsaverage, where
    the same vertex of two subjects is the same surface location, and (subject, roi,
    voxel) for subject-native fwRF voxels. The image index is the key (or (shard, key)
    where keys repeat across shards). See `berg_scale.exports.xarray_export`.
    """
    from berg_scale.exports.xarray_export import labelled_column

    keys, shards, values = read_column(output, column, status_ok_only, storage)
    return labelled_column(keys, shards, values, column_info(output, column, storage))


def _column_shape(schema: Any, column: str) -> tuple[int, ...]:
    for entry in read_schema_metadata(schema).get("columns", []):
        if entry["name"] == column:
            return tuple(entry["shape"])
    field_type = schema.field(column).type
    return (field_type.list_size,) if hasattr(field_type, "list_size") else ()


def _to_numpy(chunked: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    import pyarrow as pa

    array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    width = int(np.prod(shape)) if shape else 1
    if pa.types.is_fixed_size_list(array.type):
        valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        flat = array.values.to_numpy(zero_copy_only=False)
        start = array.offset * width
        flat = flat[start : start + n * width]
        values = flat.reshape(n, width).astype(flat.dtype, copy=True)
    else:
        valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = array.fill_null(0).to_numpy(zero_copy_only=False).reshape(n, 1).copy()
    if not valid.all():
        values = values.astype(np.result_type(values.dtype, np.float32))
        values[~valid] = np.nan
    return values.reshape((n, *shape))
