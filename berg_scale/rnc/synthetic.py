"""Write response outputs in the engine's layout from given arrays (tests, benchmarks, docs).

RNC is tested against planted truths: the caller decides the responses, this module
only lays them out as a `generate` run would, through the engine's own writer and output
store (schema, staged Parquet file, commit marker, readouts.json), including error rows
and uncommitted shards.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from berg_scale.io.output_store import OutputStore, commit_shard, write_readouts
from berg_scale.io.response_writer import ResponseShardWriter, build_schema
from berg_scale.io.storage import StorageOptions


def shard_name(j: int) -> str:
    return f"{j:06d}"


def image_key(i: int) -> str:
    return f"img{i:08d}"


def write_synthetic_output(
    url: str,
    mean_columns: Mapping[str, np.ndarray],
    voxel_columns: Mapping[str, np.ndarray] | None = None,
    ncsnr: Mapping[str, np.ndarray] | None = None,
    n_shards: int = 4,
    error_rows: Sequence[int] = (),
    uncommitted_shards: Sequence[int] = (),
    dtype: str = "float32",
    storage: StorageOptions | None = None,
    shard_bounds: Sequence[int] | None = None,
    coords: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    layouts: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    shard_names: Sequence[str] | None = None,
    inputs: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
) -> list[str]:
    """Lay out N images' responses as `n_shards` consecutive shards; returns the keys.

    Image i gets key `image_key(i)`. Rows in `error_rows` are written with status
    "error" and null responses; shards in `uncommitted_shards` get a Parquet file but
    no `_done` marker (as after a crash before commit). `shard_bounds` (n_shards + 1
    increasing row numbers from 0 to N) overrides the even split. `coords` adds per-column
    coordinates to readouts.json (e.g. fsaverage `hemisphere` and `vertex`); a column with a
    `vertex` coordinate gets the dimension name "vertex", as the fsaverage model writes it.
    `layouts[name]` gives a column's element `shape` and `dims` (e.g. EEG's (repetition,
    channel, time)); its values may then be shaped (N, *shape). `shard_names` replaces the
    names 000000, 000001, ... (e.g. `a__shard-000000` for a nested input layout), `inputs`
    gives each shard's input tar URL for its `_done` marker (as `generate` records it), and
    `keys` replaces the image keys.
    """
    voxel_columns = dict(voxel_columns or {})
    ncsnr = dict(ncsnr or {})
    n = len(next(iter(mean_columns.values()))) if mean_columns else len(next(iter(voxel_columns.values())))
    store = OutputStore(url, storage, run_id="synthetic")
    columns = _column_descriptions(mean_columns, voxel_columns, ncsnr, dtype, coords or {}, layouts or {})
    schema = build_schema([{k: v for k, v in c.items() if k != "coords"} for c in columns],
                          {"weight_hashes": {}, "model_fingerprint": "synthetic"})
    bounds = np.linspace(0, n, n_shards + 1).astype(int) if shard_bounds is None else np.asarray(shard_bounds)
    n_shards = len(bounds) - 1
    errors = set(int(e) for e in error_rows)
    float_type = pa.float16() if dtype == "float16" else pa.float32()
    np_type = np.float16 if dtype == "float16" else np.float32
    keys = list(keys) if keys is not None else [image_key(i) for i in range(n)]
    names = list(shard_names) if shard_names is not None else [shard_name(j) for j in range(n_shards)]
    uncommitted = set(int(j) for j in uncommitted_shards)
    for j in range(n_shards):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        rows = np.arange(lo, hi)
        bad = np.array([i in errors for i in rows], dtype=bool)
        arrays: dict[str, Any] = {
            "key": pa.array(keys[lo:hi], pa.string()),
            "shard": pa.array([names[j]] * (hi - lo), pa.string()),
            "index": pa.array(np.arange(hi - lo, dtype=np.int32)),
            "status": pa.array(np.where(bad, "error", "ok").tolist(), pa.string()),
            "error": pa.array([("synthetic decode failure" if b else None) for b in bad], pa.string()),
        }
        for name, matrix in voxel_columns.items():
            block = np.asarray(matrix[lo:hi], dtype=np_type).reshape(hi - lo, -1)
            flat = pa.array(block.reshape(-1), float_type)
            mask = pa.array(bad) if bad.any() else None
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, block.shape[1], mask=mask)
        for name, values in mean_columns.items():
            arrays[name] = pa.array(np.asarray(values[lo:hi], dtype=np.float32), pa.float32(), mask=bad)
        batch = pa.RecordBatch.from_arrays([arrays[field.name] for field in schema], schema=schema)
        writer = ResponseShardWriter(store, names[j], schema)
        writer.write(batch)
        if j in uncommitted:
            writer.commit()  # a Parquet file without a marker, as after a crash before commit
        else:
            marker: dict[str, Any] = {"rows": hi - lo, "ok": int((~bad).sum()), "errors": int(bad.sum())}
            if inputs is not None:
                marker["input"] = inputs[j]
            commit_shard(store, names[j], writer, marker)
    write_readouts(store, columns)
    store.remove_tree(store.staging_folder())
    return keys


def _column_descriptions(
    mean_columns: Mapping[str, np.ndarray],
    voxel_columns: Mapping[str, np.ndarray],
    ncsnr: Mapping[str, np.ndarray],
    dtype: str,
    extra_coords: Mapping[str, Mapping[str, Sequence[Any]]],
    layouts: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
) -> list[dict[str, Any]]:
    """readouts.json entries, in the engine's form (name, model, subject, shape, coords)."""
    columns = []
    for name in list(voxel_columns) + list(mean_columns):
        scalar = name not in voxel_columns
        base = name.split(":")[0]
        model_id, subject, selection = base.split("/")
        entry: dict[str, Any] = {
            "name": name,
            "model_id": model_id,
            "subject": int(subject.removeprefix("sub-")),
            "selection": {"roi": selection},
            "kind": "mean" if scalar else "responses",
            "shape": [] if scalar else [int(np.shape(voxel_columns[name])[1])],
            "dims": [] if scalar else ["voxel"],
            "dtype": "float32" if scalar else dtype,
            "coords": {},
        }
        if base in ncsnr:
            values = np.asarray(ncsnr[base], dtype=float)
            entry["coords"] = {"voxel": list(range(values.size)), "ncsnr": values.tolist()}
        if name in extra_coords:
            extra = {key: np.asarray(value).tolist() for key, value in extra_coords[name].items()}
            if "vertex" in extra and not scalar:
                entry["dims"] = ["vertex"]
                entry["coords"].pop("voxel", None)
            entry["coords"].update(extra)
        if layouts and name in layouts:
            entry["shape"] = [int(size) for size in layouts[name]["shape"]]
            entry["dims"] = [str(dim) for dim in layouts[name]["dims"]]
        columns.append(entry)
    return columns
