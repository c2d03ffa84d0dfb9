"""Planted-truth response outputs for the RNC tests (helpers shared by several test files).

Each builder decides the responses (so the right answer is known by construction) and
lays them out with `write_synthetic_output`, exactly as the engine would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from berg_scale.rnc.responses import mean_column
from berg_scale.rnc.synthetic import image_key, write_synthetic_output
MODEL = "fmri-nsd-fwrf"


@dataclass
class PlantedUnivariate:
    url: str
    subjects: list[int]
    rois: tuple[str, str]
    planted: dict[str, set[str]]  # condition -> keys
    excluded: set[str]  # keys that must never be selected (error rows, uncommitted shard)
    u: np.ndarray  # (N, S, 2) as written (NaN on error rows)


def planted_univariate(
    root, n_background: int = 400, subjects=(1, 2, 3, 4), noise: float = 0.05, seed: int = 0, n_shards: int = 4
) -> PlantedUnivariate:
    """Four planted quadrant sets of 25 images; background inside [-1, 1] in both ROIs.

    Background sums and differences stay within [-2, 2] while every planted set scores
    above 4 on its own ranking, so the first 25 eligible images are exactly the
    planted ones. A decoy image that beats everything lives in an uncommitted shard,
    and one in an error row, so reading them would show up as a wrong answer.
    """
    rng = np.random.default_rng(seed)
    quadrants = {"high1-high2": (1, 1), "low1-low2": (-1, -1), "high1-low2": (1, -1), "low1-high2": (-1, 1)}
    n_planted = 25 * len(quadrants)
    n_committed = n_background + n_planted
    base = rng.uniform(-1, 1, size=(n_committed, 2))
    order = rng.permutation(n_committed)
    planted_rows = {}
    for q, (condition, signs) in enumerate(quadrants.items()):
        rows = order[q * 25 : (q + 1) * 25]
        planted_rows[condition] = rows
        base[rows] = np.array(signs) * rng.uniform(2, 3, size=(25, 2))
    error_row = int(order[n_planted])  # a background image whose row failed
    decoys = np.full((25, 2), 10.0)  # would win high1-high2 if the uncommitted shard were read
    truth = np.concatenate([base, decoys])
    n = truth.shape[0]
    u = truth[:, None, :] + noise * rng.standard_normal((n, len(subjects), 2))
    columns = {}
    for si, s in enumerate(subjects):
        for ri, roi in enumerate(("V1", "hV4")):
            columns[mean_column(MODEL, s, roi)] = u[:, si, ri]
    # shards: the committed images split over n_shards-1 shards, the decoys in the last one
    per = int(np.ceil(n_committed / (n_shards - 1)))
    bounds = [min(j * per, n_committed) for j in range(n_shards)] + [n]
    keys = _write_with_bounds(root, columns, bounds, [error_row], uncommitted=[n_shards - 1])
    u_written = u.astype(np.float32)
    u_written[error_row] = np.nan
    planted = {c: {keys[i] for i in rows} for c, rows in planted_rows.items()}
    excluded = {keys[error_row]} | {keys[i] for i in range(n_committed, n)}
    return PlantedUnivariate(str(root), list(subjects), ("V1", "hV4"), planted, excluded, u_written)


def _write_with_bounds(root, columns, bounds, error_rows, uncommitted):
    return write_synthetic_output(str(root), columns, error_rows=error_rows, uncommitted_shards=uncommitted,
                                  shard_bounds=bounds)


def keys_of(indices) -> set[str]:
    return {image_key(int(i)) for i in indices}
