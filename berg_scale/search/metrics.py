"""Distances between response vectors and one target vector, in float64.

    euclidean    d(x, t) = ||x - t||_2
    cosine       d(x, t) = 1 - x.t / (||x|| ||t||)                    (0 .. 2)
    correlation  d(x, t) = 1 - Pearson r(x, t)
                         = cosine distance of the mean-centred vectors (0 .. 2)

Correlation compares the shape of a pattern and ignores its offset and scale; it needs
at least two values per vector. A vector whose cosine or correlation is undefined (all
zeros, or constant for correlation) gets NaN, which the search reports as "undefined"
and leaves out. Distances are computed in float64 from the stored float32/float16
values, in row chunks, so a wide column never needs more than a few tens of MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from berg_scale.search.errors import SearchError

METRICS = ("euclidean", "cosine", "correlation")
CHUNK_ELEMENTS = 4_000_000  # float64 values per chunk: 32 MB


@dataclass(frozen=True)
class PreparedTarget:
    """The target as each metric compares it: raw, or centred and scaled to unit norm."""

    metric: str
    vector: np.ndarray  # float64 (D,)


def check_metric(metric: str, width: int) -> None:
    if metric not in METRICS:
        raise SearchError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if metric == "correlation" and width < 2:
        raise SearchError(
            "the correlation metric needs vectors of 2 or more values (these have 1): "
            "select more columns or use --metric euclidean"
        )


def prepare_target(target: np.ndarray, metric: str) -> PreparedTarget:
    """Centre/normalise the target once; refuses a target whose distance is undefined."""
    vector = np.asarray(target, dtype=np.float64).reshape(-1)
    check_metric(metric, vector.size)
    if metric == "euclidean":
        return PreparedTarget(metric, vector)
    if metric == "correlation":
        vector = vector - vector.mean()
    norm = float(np.linalg.norm(vector))
    if not norm > 0:
        what = "constant" if metric == "correlation" else "all zeros"
        raise SearchError(f"the target vector is {what}, so its {metric} distance to any vector is undefined")
    return PreparedTarget(metric, vector / norm)


def distances(rows: np.ndarray, target: PreparedTarget) -> np.ndarray:
    """(n,) float64 distances of the rows (n, D) to the target; NaN where undefined."""
    rows = np.asarray(rows)
    n, width = rows.shape
    if width != target.vector.size:
        raise SearchError(f"vectors have {width} values but the target has {target.vector.size}")
    out = np.empty(n, dtype=np.float64)
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    for start in range(0, n, step):
        chunk = rows[start:start + step].astype(np.float64)
        out[start:start + step] = _chunk_distances(chunk, target)
    return out


def _chunk_distances(chunk: np.ndarray, target: PreparedTarget) -> np.ndarray:
    if target.metric == "euclidean":
        chunk -= target.vector
        return np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    if target.metric == "correlation":
        chunk -= chunk.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = (chunk @ target.vector) / norms
    similarity[~(norms > 0)] = np.nan
    return 1.0 - np.clip(similarity, -1.0, 1.0)


def unit_rows(rows: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 rows as an inner-product index stores them, mask of rows that are defined).

    Euclidean rows are stored as they are; cosine rows scaled to unit norm; correlation
    rows centred, then scaled. Then 1 - inner product with the prepared target is the
    cosine or correlation distance.
    """
    values = np.asarray(rows, dtype=np.float32)
    if metric == "euclidean":
        return np.ascontiguousarray(values), np.ones(values.shape[0], dtype=bool)
    values = values.astype(np.float64)
    if metric == "correlation":
        values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1)
    defined = norms > 0
    values[defined] /= norms[defined, None]
    return np.ascontiguousarray(values.astype(np.float32)), defined
