"""RNC result tables (Parquet) and the JSON summary, written through fsspec.

Each controlling or baseline image is one row carrying its WebDataset key, shard and
position, so results can be joined back to the stimuli and the responses. Images left
out for non-finite responses are listed the same way in `excluded.parquet`, with the
columns where their values were not finite.
"""

from __future__ import annotations

import json
import math
import posixpath
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from berg_scale.rnc.finite import Exclusions
from berg_scale.rnc.multivariate_study import MultivariateResult
from berg_scale.rnc.responses import ImageIndex, ResponseStore
from berg_scale.rnc.univariate import UnivariateResult


class KeyResolver:
    """Maps image numbers to (key, shard, index), reading key columns once per shard."""

    def __init__(self, store: ResponseStore, images: ImageIndex, wanted: Sequence[int]) -> None:
        numbers = np.unique(np.asarray(list(wanted), dtype=np.int64))
        keys = store.keys_for(images, numbers) if numbers.size else []
        shards, positions = images.locate(numbers) if numbers.size else ([], np.empty(0))
        self._rows = {int(i): (k, s, int(p)) for i, k, s, p in zip(numbers, keys, shards, positions)}

    def __call__(self, image: int) -> tuple[str, str, int]:
        return self._rows[int(image)]


EXCLUDED_SCHEMA = pa.schema([
    ("image", pa.int64()), ("key", pa.string()), ("shard", pa.string()), ("index", pa.int64()),
    ("nonfinite_columns", pa.list_(pa.string())), ("n_images", pa.int64()), ("n_images_excluded", pa.int64()),
])


def _schema(*fields: tuple[str, str]) -> pa.Schema:
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in fields])


_PAIR = (("roi_1", "str"), ("roi_2", "str"))
_IMAGE = (("image", "int"), ("key", "str"), ("shard", "str"), ("index", "int"))
_FOLD = (("fold", "str"), ("heldout_subject", "int"))  # heldout_subject: null for the all-subjects fold
_USED = (("n_images_used", "int"), ("n_images_excluded", "int"))

UNIVARIATE_CONTROLLING_SCHEMA = _schema(
    *_PAIR, ("condition", "str"), *_FOLD, ("cv", "int"), ("rank", "int"), *_IMAGE, ("rank_score", "float"),
    ("u1_train", "float"), ("u2_train", "float"), ("seed", "int"))
UNIVARIATE_BASELINES_SCHEMA = _schema(
    ("roi", "str"), *_FOLD, ("cv", "int"), ("rank", "int"), *_IMAGE, ("batch", "int"), ("baseline_train", "float"),
    ("baseline_test", "float"), ("null_mean", "float"), *_USED, ("seed", "int"))
UNIVARIATE_TESTS_SCHEMA = _schema(
    *_PAIR, ("condition", "str"), ("roi", "str"), ("roi_position", "int"), ("direction", "str"), ("subject", "int"),
    ("n_controlling", "int"), ("score", "float"), ("baseline_score", "float"), ("difference", "float"),
    ("p_value", "float"), ("q_value", "float"), ("significant", "bool"), *_USED, ("seed", "int"))
CORRELATIONS_SCHEMA = _schema(*_PAIR, ("subject", "int"), ("pearson_r", "float"), ("n_images", "int"))
GENERATIONS_SCHEMA = _schema(
    *_PAIR, ("condition", "str"), *_FOLD, ("generation", "int"), ("train_score", "float"), ("test_score", "float"),
    ("seed", "int"))
MULTIVARIATE_CONTROLLING_SCHEMA = _schema(
    *_PAIR, ("condition", "str"), *_FOLD, ("cv", "int"), ("position", "int"), *_IMAGE, ("train_score", "float"),
    ("test_score", "float"), ("seed", "int"))
MULTIVARIATE_BASELINES_SCHEMA = _schema(
    *_PAIR, *_FOLD, ("batch", "int"), ("train_score", "float"), ("test_score", "float"),
    ("null_train_mean", "float"), ("n_null_defined", "int"), *_USED, ("position", "int"), *_IMAGE, ("seed", "int"))
MULTIVARIATE_TESTS_SCHEMA = _schema(
    *_PAIR, ("condition", "str"), ("subject", "int"), ("score", "float"), ("baseline_score", "float"),
    ("difference", "float"), ("p_value", "float"), ("n_null", "int"), *_USED, ("q_value", "float"),
    ("significant", "bool"), ("seed", "int"))


def rows_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of a fixed schema: the same columns and types whatever the rows.

    Inferred types would depend on the rows (no held-out fold makes `heldout_subject` a
    column of nulls; no test at all makes a table without columns), so readers could
    not rely on them.
    """
    unknown = sorted({k for row in rows for k in row} - set(schema.names))
    if unknown:
        raise ValueError(f"rows have columns the table schema lacks: {', '.join(unknown)}")
    return pa.Table.from_pylist(list(rows), schema=schema)


def excluded_table(exclusions: Exclusions | None, keys: KeyResolver) -> pa.Table:
    """One row per image left out, with the columns where its responses were not finite."""
    rows = []
    if exclusions is not None:
        for row, image in enumerate(exclusions.excluded):
            key, shard, index = keys(image)
            rows.append({"image": int(image), "key": key, "shard": shard, "index": index,
                         "nonfinite_columns": exclusions.columns_of(row), "n_images": exclusions.n_images,
                         "n_images_excluded": exclusions.n_excluded})
    return pa.Table.from_pylist(rows, schema=EXCLUDED_SCHEMA)


def excluded_images(exclusions: Exclusions | None) -> list[int]:
    return [] if exclusions is None else [int(i) for i in exclusions.excluded]


def univariate_tables(result: UnivariateResult, keys: KeyResolver) -> dict[str, pa.Table]:
    seed = result.params.seed
    used = result.exclusions.n_used if result.exclusions else None
    n_excluded = result.exclusions.n_excluded if result.exclusions else 0
    controlling = []
    for sel in result.selections:
        for rank, image in enumerate(sel.images):
            key, shard, index = keys(image)
            controlling.append(
                {"roi_1": sel.pair[0], "roi_2": sel.pair[1], "condition": sel.condition, "fold": sel.fold.label,
                 "heldout_subject": sel.fold.heldout, "cv": sel.fold.cv, "rank": rank + 1, "image": int(image),
                 "key": key, "shard": shard, "index": index, "rank_score": float(sel.rank_scores[rank]),
                 "u1_train": float(sel.u1[rank]), "u2_train": float(sel.u2[rank]), "seed": seed}
            )
    baselines = []
    for base in result.baselines:
        for rank, image in enumerate(base.images):
            key, shard, index = keys(image)
            baselines.append(
                {"roi": base.roi, "fold": base.fold.label, "heldout_subject": base.fold.heldout, "cv": base.fold.cv,
                 "rank": rank + 1, "image": int(image), "key": key, "shard": shard, "index": index,
                 "batch": base.batch_index, "baseline_train": base.score_train, "baseline_test": base.score_test,
                 "null_mean": base.null_mean, "n_images_used": used, "n_images_excluded": n_excluded, "seed": seed}
            )
    tests = [dict(t, seed=seed) for t in result.tests]
    return {
        "controlling": rows_table(controlling, UNIVARIATE_CONTROLLING_SCHEMA),
        "baselines": rows_table(baselines, UNIVARIATE_BASELINES_SCHEMA),
        "tests": rows_table(tests, UNIVARIATE_TESTS_SCHEMA),
        "correlations": rows_table(result.correlations, CORRELATIONS_SCHEMA),
        "excluded": excluded_table(result.exclusions, keys),
    }


def multivariate_tables(result: MultivariateResult, keys: KeyResolver) -> dict[str, pa.Table]:
    seed = result.params.ga.seed
    generations, controlling = [], []
    for run in result.runs:
        for g, (score, test) in enumerate(zip(run.search.best_scores, run.test_scores)):
            generations.append(
                {"roi_1": run.pair[0], "roi_2": run.pair[1], "condition": run.condition, "fold": run.fold.label,
                 "heldout_subject": run.fold.heldout, "generation": g + 1, "train_score": float(score),
                 "test_score": float(test), "seed": seed}
            )
        final = run.search.best_batches[-1]
        for rank, image in enumerate(final):
            key, shard, index = keys(image)
            controlling.append(
                {"roi_1": run.pair[0], "roi_2": run.pair[1], "condition": run.condition, "fold": run.fold.label,
                 "heldout_subject": run.fold.heldout, "cv": run.fold.cv, "position": rank + 1, "image": int(image),
                 "key": key, "shard": shard, "index": index, "train_score": float(run.search.best_scores[-1]),
                 "test_score": float(run.test_scores[-1]), "seed": seed}
            )
    baselines = []
    for base in result.baselines:
        for rank, image in enumerate(base["images"]):
            key, shard, index = keys(image)
            row = {k: v for k, v in base.items() if k != "images"}
            baselines.append(dict(row, position=rank + 1, image=int(image), key=key, shard=shard, index=index, seed=seed))
    return {
        "generations": rows_table(generations, GENERATIONS_SCHEMA),
        "controlling": rows_table(controlling, MULTIVARIATE_CONTROLLING_SCHEMA),
        "baselines": rows_table(baselines, MULTIVARIATE_BASELINES_SCHEMA),
        "tests": rows_table([dict(t, seed=seed) for t in result.tests], MULTIVARIATE_TESTS_SCHEMA),
        "excluded": excluded_table(result.exclusions, keys),
        "nulls": test_null_table(result.test_nulls),
    }


TEST_NULL_SCHEMA = pa.schema([
    ("roi_1", pa.string()), ("roi_2", pa.string()), ("fold", pa.string()), ("heldout_subject", pa.int64()),
    ("batch_size", pa.int64()), ("n_batches", pa.int64()), ("test_null", pa.large_list(pa.float32())),
])


def test_null_table(test_nulls: Sequence[dict]) -> pa.Table:
    """One row per pair and held-out fold: the test scores of the random baseline batches (float32).

    Kept in draw order, so that the slices the difference null uses (baseline 0:n,
    align n:2n, disentangle 2n:3n) can be rebuilt by analyses over several pairs.
    """
    values = [np.asarray(row["test_null"], dtype=np.float32) for row in test_nulls]
    offsets = np.concatenate([[0], np.cumsum([v.size for v in values])]).astype(np.int64)
    flat = np.concatenate(values) if values else np.empty(0, dtype=np.float32)
    columns = {name: [row[name] for row in test_nulls] for name in ("roi_1", "roi_2", "fold", "heldout_subject",
                                                                    "batch_size")}
    arrays = [pa.array(columns[n], type=TEST_NULL_SCHEMA.field(n).type) for n in columns]
    arrays.append(pa.array([v.size for v in values], type=pa.int64()))
    arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32())))
    return pa.Table.from_arrays(arrays, schema=TEST_NULL_SCHEMA)


def write_tables(fs, directory: str, tables: dict[str, pa.Table]) -> list[str]:
    fs.makedirs(directory, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = posixpath.join(directory, f"{name}.parquet")
        with fs.open(path, "wb") as handle:
            pq.write_table(table, handle)
        written.append(path)
    return written


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(fs, path: str, data: dict) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump(_json_safe(data), handle, indent=2)
