"""Uniform random k-subsets in O(k) per draw, vectorised over many draws.

Shuffling all N images per draw (as a naive `resample(replace=False)` does) costs
O(N) and dominates at millions of images. Here every draw takes k independent
uniform indices and re-draws only the positions that collide with an earlier
position or with an excluded set. The procedure treats all image labels alike (it
commutes with any relabelling of the images that keeps the excluded set), so the
result is exactly uniform over the allowed k-subsets, not an approximation.
"""

from __future__ import annotations

import numpy as np

from berg_scale.errors import ConfigError

_MAX_ROUNDS = 10_000
# Below this ratio of population to drawn items, collisions are frequent and drawing
# random keys for the whole (small) population is cheaper than rejection.
_DENSE_RATIO = 4
_DENSE_ROWS = 16_384


def _index_dtype(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def sample_subsets(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
    """`count` uniform k-subsets of range(n), each row sorted ascending (canonical)."""
    if k > n:
        raise ConfigError(f"cannot draw {k} distinct images from {n}: there are fewer images than one batch holds")
    if count == 0 or k == 0:
        return np.empty((count, k), dtype=_index_dtype(n))
    dtype = _index_dtype(n)
    if n <= _DENSE_RATIO * k:
        out: np.ndarray = np.empty((count, k), dtype=dtype)
        for start in range(0, count, _DENSE_ROWS):
            keys = rng.random((min(_DENSE_ROWS, count - start), n))
            out[start : start + keys.shape[0]] = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
        return out
    draws = np.sort(rng.integers(0, n, size=(count, k), dtype=dtype), axis=1)
    for _ in range(_MAX_ROUNDS):
        duplicate = draws[:, 1:] == draws[:, :-1]
        bad_rows = np.flatnonzero(duplicate.any(axis=1))
        if bad_rows.size == 0:
            return draws
        rows = draws[bad_rows]
        mask = np.zeros(rows.shape, dtype=bool)
        mask[:, 1:] = duplicate[bad_rows]
        rows[mask] = rng.integers(0, n, size=int(mask.sum()), dtype=dtype)
        draws[bad_rows] = np.sort(rows, axis=1)
    raise RuntimeError("subset sampling did not converge")  # pragma: no cover


def sample_excluding(
    rng: np.random.Generator, n: int, excluded: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """For each row of `excluded`, `counts[row]` distinct indices not in that row.

    Returns an array of shape (rows, max(counts)); positions at or beyond a row's
    count hold -1. Used for mutation: the replacement images of a mutant are drawn
    from the images that are not already in its parent.
    """
    rows, width = excluded.shape
    counts = np.asarray(counts, dtype=np.int64)
    if rows and int(counts.max(initial=0)) > n - width:
        raise ConfigError(
            f"cannot replace {int(counts.max())} images of a {width}-image batch from {n} "
            "images: use more images or a smaller batch"
        )
    qmax = int(counts.max(initial=0))
    active = np.arange(qmax)[None, :] < counts[:, None]
    if n <= _DENSE_RATIO * (width + qmax):
        keys = rng.random((rows, n))
        np.put_along_axis(keys, excluded.astype(np.int64), 2.0, axis=1)
        out = np.argsort(keys, axis=1)[:, :qmax].astype(np.int64)
        out[~active] = -1
        return out
    out = rng.integers(0, n, size=(rows, qmax), dtype=np.int64)
    out[~active] = -1
    sentinel = np.int64(-1)
    for _ in range(_MAX_ROUNDS):
        in_parent = (out[:, :, None] == excluded[:, None, :]).any(axis=2) & active
        # a position collides if an earlier active position in the row holds the same value
        order = np.argsort(out, axis=1, kind="stable")
        sorted_vals = np.take_along_axis(out, order, axis=1)
        same_as_prev = np.zeros_like(active)
        same_as_prev[:, 1:] = (sorted_vals[:, 1:] == sorted_vals[:, :-1]) & (
            sorted_vals[:, 1:] != sentinel
        )
        repeated = np.zeros_like(active)
        np.put_along_axis(repeated, order, same_as_prev, axis=1)
        bad = in_parent | repeated
        n_bad = int(bad.sum())
        if n_bad == 0:
            return out
        out[bad] = rng.integers(0, n, size=n_bad, dtype=np.int64)
    raise RuntimeError("exclusion sampling did not converge")  # pragma: no cover


def sample_injection(rng: np.random.Generator, n: int, m: int, count: int) -> np.ndarray:
    """`count` uniform random injections of m items into range(n) (ordered, distinct).

    A uniform permutation of the images, restricted to m particular images, is exactly
    such an injection; the permutation tests use this to stay O(m) per iteration.
    When collisions are rare (m^2 << n), rows of i.i.d. draws with a repeat are drawn
    again whole (row rejection, exact); otherwise a uniform subset is shuffled.
    """
    if m > n:
        raise ConfigError(f"cannot place {m} distinct images among {n}")
    if 4 * m * m <= n:
        dtype = _index_dtype(n)
        out = rng.integers(0, n, size=(count, m), dtype=dtype)
        pending = np.arange(count)
        for _ in range(_MAX_ROUNDS):
            rows = np.sort(out[pending], axis=1)
            pending = pending[(rows[:, 1:] == rows[:, :-1]).any(axis=1)]
            if pending.size == 0:
                return out
            out[pending] = rng.integers(0, n, size=(pending.size, m), dtype=dtype)
        raise RuntimeError("injection sampling did not converge")  # pragma: no cover
    subsets = sample_subsets(rng, n, m, count)
    keys = rng.random(subsets.shape)
    return np.take_along_axis(subsets, np.argsort(keys, axis=1), axis=1)
