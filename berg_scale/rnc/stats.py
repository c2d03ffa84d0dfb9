"""Statistics shared by univariate and multivariate RNC.

Written out by hand (binomial tail, Benjamini-Hochberg, bootstrap, permutation
p-values) so that the library needs no SciPy or statsmodels, and so that each step
matches the published procedure exactly (p = (c + 1) / (n + 1), BH within subject,
binomial test across subjects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def permutation_p_value(null: np.ndarray, observed: float, direction: str) -> float:
    """p = (#{null beats observed} + 1) / (n + 1); "beats" is > for "greater", < for "less".

    The +1 counts the observed statistic as one draw of the null, so p is never 0.
    Undefined (NaN) draws of the null are dropped and n counts the rest: counted as
    "not beating", they would make p too small.
    """
    null = np.asarray(null)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    if direction == "greater":
        count = int(np.count_nonzero(null > observed))
    elif direction == "less":
        count = int(np.count_nonzero(null < observed))
    else:
        raise ValueError(f"direction must be 'greater' or 'less', not {direction!r}")
    return (count + 1) / (null.size + 1)


@dataclass(frozen=True)
class FdrResult:
    q_values: np.ndarray
    significant: np.ndarray


def benjamini_hochberg(p_values: np.ndarray, alpha: float = 0.05) -> FdrResult:
    """Benjamini-Hochberg step-up over one family; NaN p-values are left out of the family.

    A hypothesis is rejected when its p is at most the largest p_(i) with
    p_(i) <= i * alpha / m. The q-values are the usual monotone adjusted p-values,
    so `significant == (q <= alpha)`.
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    significant = np.zeros(p.shape, dtype=bool)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return FdrResult(q, significant)
    order = valid[np.argsort(p[valid], kind="stable")]
    ranked = p[order]
    ranks = np.arange(1, m + 1)
    adjusted = ranked * m / ranks
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    q[order] = np.minimum(adjusted, 1.0)
    passing = np.flatnonzero(ranked <= ranks * alpha / m)
    if passing.size:
        significant[order[: passing[-1] + 1]] = True
    return FdrResult(q, significant)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the across-subject test of how many subjects agree."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def bootstrap_ci(
    values: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
    level: float = 0.95,
    chunk: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the mean across subjects, resampling subjects with replacement.

    `values` is (subjects,) or (subjects, statistics); all statistics share the same
    resamples. Subjects with a NaN value (e.g. no eligible controlling image) are
    ignored within each resample (nanmean); a column that is all NaN gets a NaN CI.
    Returns (low, high), each of shape (statistics,) (a 0-d array for 1-D input).
    """
    values = np.asarray(values, dtype=np.float64)
    squeeze = values.ndim == 1
    if squeeze:
        values = values[:, None]
    n_subjects, n_stats = values.shape
    low = np.full(n_stats, np.nan)
    high = np.full(n_stats, np.nan)
    if n_subjects and n_bootstrap > 0:
        finite = np.isfinite(values)
        filled = np.where(finite, values, 0.0)
        means = np.empty((n_bootstrap, n_stats))
        for start in range(0, n_bootstrap, chunk):
            stop = min(start + chunk, n_bootstrap)
            picks = rng.integers(0, n_subjects, size=(stop - start, n_subjects))
            sums = filled[picks].sum(axis=1)
            counts = finite[picks].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                means[start:stop] = sums / counts
        tail = (1.0 - level) / 2 * 100
        for j in range(n_stats):
            column = means[:, j]
            column = column[np.isfinite(column)]
            if column.size:
                low[j], high[j] = np.percentile(column, [tail, 100 - tail])
    if squeeze:
        return low[0], high[0]
    return low, high


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over finite pairs, computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom > 0 else float("nan")


def same_folds(table: np.ndarray) -> np.ndarray:
    """Per-fold (score, baseline, difference) rows with a fold that has no score (no eligible
    controlling image) left out of the baseline too, so that the mean score, the mean
    baseline and their difference all average the same held-out subjects."""
    table = np.array(table, dtype=np.float64).reshape(-1, 3)
    table[~np.isfinite(table[:, 0]), 1] = np.nan
    return table


def mean_or_nan(values: np.ndarray) -> float:
    """The mean of the finite values; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")
