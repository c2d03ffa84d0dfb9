"""Univariate RNC (Gifford et al., Nature Human Behaviour 2025): baselines, four control conditions, folds, statistics.

Everything works on u[s, r](i), the ROI-mean response of image i for subject s and
ROI r, held as one (N, S, R) float32 array: memory is linear in N x readouts and no
step is quadratic in N. Random batches are O(k) each (see `sampling`), and the
permutation tests are O(k) per iteration because permuting all N images only matters
through where the few controlling and baseline images land.

Images with a NaN or infinite response in any column the study reads are left out of
every step (see `finite`); random draws are made among the used images only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from berg_scale.errors import ConfigError
from berg_scale.rnc.finite import DEFAULT_MAX_EXCLUDED_FRACTION, Exclusions, univariate_exclusions
from berg_scale.rnc.sampling import sample_injection, sample_subsets
from berg_scale.rnc.stats import (
    benjamini_hochberg,
    binomial_tail,
    bootstrap_ci,
    mean_or_nan,
    pearson_r,
    permutation_p_value,
    same_folds,
)
from berg_scale.rnc.streams import stream

# condition name -> (sign for ROI 1, sign for ROI 2); +1 = "high", -1 = "low".
# Every condition ranks by s1*U1 + s2*U2, descending, which is the published ranking
# (U1+U2 desc, U1+U2 asc, U1-U2 desc, U1-U2 asc) with exact IEEE negation.
CONDITIONS: dict[str, tuple[int, int]] = {
    "high1-high2": (1, 1),
    "low1-low2": (-1, -1),
    "high1-low2": (1, -1),
    "low1-high2": (-1, 1),
}
BASELINE_CHUNK = 8192


@dataclass(frozen=True)
class Fold:
    """Train subjects for selection, and the held-out subject (None for the all-subjects run)."""

    train: tuple[int, ...]
    heldout: int | None

    @property
    def label(self) -> str:
        return "all" if self.heldout is None else f"sub-{self.heldout:02d}"

    @property
    def cv(self) -> int:
        return 0 if self.heldout is None else 1


def make_folds(subjects: Sequence[int], cross_validation: bool = True) -> list[Fold]:
    """Leave-one-subject-out folds (cv=1) followed by the all-subjects run (cv=0)."""
    subjects = tuple(subjects)
    folds = []
    if cross_validation and len(subjects) > 1:
        folds = [Fold(tuple(s for s in subjects if s != h), h) for h in subjects]
    folds.append(Fold(subjects, None))
    return folds


@dataclass(frozen=True)
class UnivariateParams:
    n_images: int = 25
    margin: float = 0.04
    baseline_batches: int = 1_000_000
    baseline_batch_size: int = 25
    n_bootstrap: int = 100_000
    n_permutations: int = 100_000
    alpha: float = 0.05
    chance: float = 0.05
    seed: int = 20200220
    max_excluded_fraction: float = DEFAULT_MAX_EXCLUDED_FRACTION


# -- train averages -----------------------------------------------------------------
def train_average(
    values: np.ndarray, subject_slots: Sequence[int], roi_slot: int, block: int = 65_536
) -> np.ndarray:
    """U_r(i): plain mean over train subjects, accumulated in float64 in a fixed order.

    The fixed elementwise order makes the result identical whether it is computed on
    all images at once or one shard at a time, so distributed selection is exact.
    Rows are processed in blocks so each image's row of the (N, S, R) array is read
    from memory once for all subjects.
    """
    n = values.shape[0]
    out = np.empty(n, dtype=np.float64)
    slots = list(subject_slots)
    for start in range(0, n, block):
        rows = values[start : start + block, :, roi_slot][:, slots].astype(np.float64)
        acc = rows[:, 0].copy()
        for j in range(1, len(slots)):
            acc += rows[:, j]
        out[start : start + block] = acc / len(slots)
    return out


# -- baseline ------------------------------------------------------------------------
@dataclass
class BaselineNull:
    """Per-subject means of the same random batches for every subject and ROI.

    Because averaging is linear, the train-average score of a batch for any fold is
    the mean of these per-subject batch means over the fold's train subjects, so one
    pass over the batches serves every fold and ROI (as the published code's reset
    seed makes every ROI see the same batches).
    """

    batch_means: np.ndarray  # float32 (B, S, R)
    n_images: int  # images the batches are drawn from
    batch_size: int
    seed: int
    chunk: int = BASELINE_CHUNK
    pool: np.ndarray | None = field(default=None, repr=False)  # their image numbers (None: 0..n_images-1)

    def batch(self, b: int) -> np.ndarray:
        chunk_id, row = divmod(int(b), self.chunk)
        count = min(self.chunk, self.batch_means.shape[0] - chunk_id * self.chunk)
        rng = np.random.default_rng([self.seed, chunk_id])
        batch = sample_subsets(rng, self.n_images, self.batch_size, count)[row].astype(np.int64)
        return batch if self.pool is None else self.pool[batch]


def baseline_null(
    values: np.ndarray, n_batches: int, batch_size: int, seed: int, chunk: int = BASELINE_CHUNK,
    pool: np.ndarray | None = None,
) -> BaselineNull:
    """Score `n_batches` uniform random batches on every subject and ROI at once.

    Batches are drawn among `pool` (sorted image numbers; None = all images). Each
    batch mean is accumulated in float64 over the batch positions in a fixed order, so
    a column's null does not depend on which other subjects or ROIs share the array
    (numpy's own reductions pick their summation order from the array's layout).
    """
    n, s, r = values.shape
    n_pool = n if pool is None else int(pool.size)
    flat = values.reshape(n, s * r)
    means = np.empty((n_batches, s * r), dtype=np.float32)
    for chunk_id, start in enumerate(range(0, n_batches, chunk)):
        count = min(chunk, n_batches - start)
        rng = np.random.default_rng([seed, chunk_id])
        batches = sample_subsets(rng, n_pool, batch_size, count)
        if pool is not None:
            batches = pool[batches]
        gathered = np.take(flat, batches.ravel(), axis=0).reshape(count, batch_size, s * r)
        acc = gathered[:, 0].astype(np.float64)
        for j in range(1, batch_size):
            acc += gathered[:, j]
        means[start : start + count] = acc / batch_size
    return BaselineNull(means.reshape(n_batches, s, r), n_pool, batch_size, seed, chunk, pool)


@dataclass(frozen=True)
class Baseline:
    roi: str
    fold: Fold
    batch_index: int
    images: np.ndarray
    score_train: float  # beta_r: the train-average mean of the baseline batch
    null_mean: float  # mean of the train null
    score_test: float  # held-out subject's mean over the baseline images (NaN for cv=0)
    null_train: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))


def choose_baseline(
    null: BaselineNull, values: np.ndarray, subject_slots: Sequence[int], heldout_slot: int | None,
    roi_slot: int, roi: str, fold: Fold,
) -> Baseline:
    """The batch whose train mean is closest to the mean of the train null (first on ties).

    Every batch mean must be finite: the null is drawn among images with finite
    responses, and a NaN here would silently make batch 0 the baseline.
    """
    slots = list(subject_slots)
    train_null = null.batch_means[:, slots[0], roi_slot].astype(np.float64)
    for slot in slots[1:]:  # fixed order: the same sum whatever the array holds besides
        train_null = train_null + null.batch_means[:, slot, roi_slot]
    train_null /= len(slots)
    if not np.isfinite(train_null).all():
        raise ValueError(
            f"baseline null of {roi} has non-finite batch means: draw it among images with finite "
            "responses (pool=, as run_univariate does)"
        )
    mu = float(train_null.mean())
    b = int(np.argmin(np.abs(train_null - mu)))
    images = null.batch(b)
    test = float("nan")
    if heldout_slot is not None:
        test = float(values[images, heldout_slot, roi_slot].astype(np.float64).mean())
    return Baseline(roi, fold, b, images, float(train_null[b]), mu, test, train_null)


# -- selection -----------------------------------------------------------------------
def top_k(score: np.ndarray, eligible: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first k eligible images by descending score, ties by ascending image number.

    Returns (image numbers + offset, scores). Fewer than k come back when fewer are
    eligible: there is no fallback.
    """
    candidates = np.flatnonzero(eligible)
    if candidates.size > k:
        cand_scores = score[candidates]
        kth_best = -np.partition(-cand_scores, k - 1)[k - 1]
        candidates = candidates[cand_scores >= kth_best]
    order = np.lexsort((candidates, -score[candidates]))[:k]
    chosen = candidates[order]
    return chosen.astype(np.int64) + offset, score[chosen]


def condition_scores(
    u1: np.ndarray, u2: np.ndarray, beta1: float, beta2: float, condition: str, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ranking score, eligibility) of every image for one of the four control conditions."""
    s1, s2 = CONDITIONS[condition]
    score = s1 * u1 + s2 * u2
    return score, _eligible(u1, u2, beta1, beta2, s1, s2, margin)


def _eligible(u1, u2, beta1, beta2, s1, s2, margin) -> np.ndarray:
    ok = u1 >= beta1 + margin if s1 > 0 else u1 <= beta1 - margin
    ok &= u2 >= beta2 + margin if s2 > 0 else u2 <= beta2 - margin
    return ok


def select_condition(
    u1: np.ndarray, u2: np.ndarray, beta1: float, beta2: float, condition: str, margin: float, k: int,
    offset: int = 0, excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k(*condition_scores(...))`, scoring only the eligible images (same values).

    `excluded` (positions in u1/u2) are never eligible: an image with an infinite
    response would otherwise top every "high" ranking.
    """
    s1, s2 = CONDITIONS[condition]
    eligible = _eligible(u1, u2, beta1, beta2, s1, s2, margin)
    if excluded is not None and excluded.size:
        eligible[excluded] = False
    candidates = np.flatnonzero(eligible)
    score = s1 * u1[candidates] + s2 * u2[candidates]
    chosen, scores = top_k(score, np.ones(candidates.size, dtype=bool), k)
    return candidates[chosen] + offset, scores


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact global top-k from per-shard top-k lists (score desc, image number asc)."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    images = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    order = np.lexsort((images, -scores))[:k]
    return images[order], scores[order]


@dataclass(frozen=True)
class Selection:
    fold: Fold
    pair: tuple[str, str]
    condition: str
    images: np.ndarray
    rank_scores: np.ndarray
    u1: np.ndarray
    u2: np.ndarray


# -- statistics ----------------------------------------------------------------------
def permutation_null(
    rng: np.random.Generator,
    u: np.ndarray,
    groups: Sequence[np.ndarray],
    contrasts: Sequence[tuple[int, int]],
    n_iter: int,
    chunk: int = 10_000,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Null of mean(group a) - mean(group b) under one shared permutation of all images.

    `u` is (N, C): one column per ROI, permuted together. Only the images in the
    union of the groups matter, and a uniform permutation maps them to a uniform
    random injection into range(N), which costs O(k) per iteration. Each contrast
    (a, b, column) uses its own ROI column: contrasts[j] = (group a, group b) evaluated
    on column j. Returns (n_iter, len(contrasts)). With `pool` (sorted image numbers)
    the permutation is of the pool's images only: the groups land among them.
    """
    n = u.shape[0] if pool is None else int(pool.size)
    union = np.unique(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]))
    slots = [np.searchsorted(union, np.asarray(g, dtype=np.int64)) for g in groups]
    out = np.empty((n_iter, len(contrasts)))
    for start in range(0, n_iter, chunk):
        count = min(chunk, n_iter - start)
        landed = sample_injection(rng, n, union.size, count).astype(np.int64)
        if pool is not None:
            landed = pool[landed]
        for j, (a, b) in enumerate(contrasts):
            col = u[:, j]
            mean_a = col[landed[:, slots[a]]].astype(np.float64).mean(axis=1)
            mean_b = col[landed[:, slots[b]]].astype(np.float64).mean(axis=1)
            out[start : start + count, j] = mean_a - mean_b
    return out


@dataclass
class UnivariateResult:
    params: UnivariateParams
    subjects: tuple[int, ...]
    rois: tuple[str, ...]
    pairs: list[tuple[str, str]]
    baselines: list[Baseline]
    selections: list[Selection]
    tests: list[dict]  # per (pair, condition, roi, held-out subject)
    summary: list[dict]  # per (pair, condition, roi): CI, k significant, binomial p
    correlations: list[dict]  # per (pair, subject): Pearson r
    exclusions: Exclusions | None = None  # images left out for non-finite responses


@dataclass(frozen=True)
class SelectionRequest:
    """One (fold, pair, condition) top-k, with the fold's train baselines."""

    fold: Fold
    pair: tuple[str, str]
    condition: str
    beta1: float
    beta2: float


# (requests, sorted image numbers to leave out) -> per request (image numbers, scores)
Selector = Callable[[Sequence[SelectionRequest], np.ndarray], list[tuple[np.ndarray, np.ndarray]]]


def in_memory_selector(
    values: np.ndarray, subjects: Sequence[int], rois: Sequence[str], n_images: int, margin: float
) -> Selector:
    """Top-k over all images held in memory (the reference the distributed path must equal).

    Requests are served fold by fold, and each fold's train average of every ROI its
    requests name is computed once: a study of R ROIs and F folds computes R x F train
    averages, whatever the number of pairs, and holds at most R of them at a time.
    """
    slot = {s: i for i, s in enumerate(subjects)}
    roi_slot = {r: i for i, r in enumerate(rois)}

    def select(requests: Sequence[SelectionRequest], excluded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(requests)
        by_fold: dict[Fold, list[int]] = {}
        for i, req in enumerate(requests):
            by_fold.setdefault(req.fold, []).append(i)
        for fold, indices in by_fold.items():
            train = [slot[s] for s in fold.train]
            needed = dict.fromkeys(r for i in indices for r in requests[i].pair)
            averages = {roi: train_average(values, train, roi_slot[roi]) for roi in needed}
            for i in indices:
                req = requests[i]
                out[i] = select_condition(averages[req.pair[0]], averages[req.pair[1]], req.beta1, req.beta2,
                                          req.condition, margin, n_images, excluded=excluded)
            del averages
        return out  # type: ignore[return-value]

    return select


def run_univariate(
    values: np.ndarray,
    subjects: Sequence[int],
    rois: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    params: UnivariateParams = UnivariateParams(),
    cross_validation: bool = True,
    selector: Selector | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> UnivariateResult:
    """Univariate RNC for every fold and ROI pair, with the cv=1 statistics.

    Order of work: the images with finite responses in every (subject, pair ROI), then
    the baseline null (needs all of them), then each fold's baselines, then all top-k
    selections in one call of `selector` (in memory by default; the distributed path
    filters and ranks per shard and merges exactly). Every step uses only the images
    with finite responses; too many without them is a NonFiniteResponsesError.
    """
    subjects = tuple(subjects)
    rois = tuple(rois)
    slot = {s: i for i, s in enumerate(subjects)}
    roi_slot = {r: i for i, r in enumerate(rois)}
    folds = make_folds(subjects, cross_validation)
    needed_rois = sorted({r for pair in pairs for r in pair}, key=rois.index)
    exclusions = univariate_exclusions(values, subjects, needed_rois, [roi_slot[r] for r in needed_rois])
    log(exclusions.message("univariate"))
    exclusions.check("univariate", params.max_excluded_fraction, max(params.baseline_batch_size, 1))
    if exclusions.n_used < params.baseline_batch_size:
        raise ConfigError(
            f"univariate: {exclusions.n_used:,} images cannot fill one baseline batch of "
            f"{params.baseline_batch_size}: generate responses for more images, or lower "
            "univariate.baseline_batch_size (--baseline-batch-size)"
        )
    pool = exclusions.pool
    log(f"baseline null: {params.baseline_batches:,} batches of {params.baseline_batch_size}")
    null = baseline_null(values, params.baseline_batches, params.baseline_batch_size, params.seed, pool=pool)

    baselines: list[Baseline] = []
    requests: list[SelectionRequest] = []
    for fold in folds:
        train_slots = [slot[s] for s in fold.train]
        held = None if fold.heldout is None else slot[fold.heldout]
        fold_baselines = {
            r: choose_baseline(null, values, train_slots, held, roi_slot[r], r, fold) for r in needed_rois
        }
        baselines.extend(fold_baselines.values())
        for pair in pairs:
            b1, b2 = fold_baselines[pair[0]].score_train, fold_baselines[pair[1]].score_train
            requests.extend(SelectionRequest(fold, (pair[0], pair[1]), c, b1, b2) for c in CONDITIONS)
    selector = selector or in_memory_selector(values, subjects, rois, params.n_images, params.margin)
    log(f"selecting {len(requests)} controlling sets")
    selections: list[Selection] = []
    for req, (images, scores) in zip(requests, selector(requests, exclusions.excluded)):
        train_slots = [slot[s] for s in req.fold.train]
        u1 = train_average(values[images], train_slots, roi_slot[req.pair[0]])
        u2 = train_average(values[images], train_slots, roi_slot[req.pair[1]])
        selections.append(Selection(req.fold, req.pair, req.condition, images, scores, u1, u2))

    log("statistics")
    tests, summary = _statistics(values, subjects, rois, pairs, params, folds, baselines, selections, pool)
    for row in tests:
        row["n_images_used"], row["n_images_excluded"] = exclusions.n_used, exclusions.n_excluded
    rows = slice(None) if pool is None else pool
    correlations = [
        {
            "roi_1": p[0],
            "roi_2": p[1],
            "subject": s,
            "pearson_r": pearson_r(values[rows, slot[s], roi_slot[p[0]]], values[rows, slot[s], roi_slot[p[1]]]),
            "n_images": exclusions.n_used,
        }
        for p in pairs
        for s in subjects
    ]
    return UnivariateResult(params, subjects, rois, [(p[0], p[1]) for p in pairs], baselines, selections, tests, summary,
                            correlations, exclusions)


def _statistics(
    values: np.ndarray,
    subjects: tuple[int, ...],
    rois: tuple[str, ...],
    pairs: Sequence[tuple[str, str]],
    params: UnivariateParams,
    folds: list[Fold],
    baselines: list[Baseline],
    selections: list[Selection],
    pool: np.ndarray | None = None,
) -> tuple[list[dict], list[dict]]:
    """Held-out test scores, permutation p-values, BH within subject, CIs and binomial tests.

    Each permutation null and each bootstrap has its own stream, keyed by the pair's ROI
    names, the subject, the condition and the ROI: a pair's statistics do not change when
    other pairs are added to the study or the pairs are reordered.
    """
    slot = {s: i for i, s in enumerate(subjects)}
    roi_slot = {r: i for i, r in enumerate(rois)}
    base = {(b.fold.heldout, b.roi): b for b in baselines}
    chosen = {(s.fold.heldout, tuple(s.pair), s.condition): s for s in selections}
    tests: list[dict] = []
    summary: list[dict] = []
    cv_folds = [f for f in folds if f.heldout is not None]
    for pair in pairs:
        for fold in cv_folds:
            assert fold.heldout is not None  # cv_folds keeps only held-out folds
            h = slot[fold.heldout]
            u = np.stack([values[:, h, roi_slot[pair[0]]], values[:, h, roi_slot[pair[1]]]], axis=1)
            rows = []
            for condition in CONDITIONS:
                sel = chosen[(fold.heldout, tuple(pair), condition)]
                base_sets = [base[(fold.heldout, r)].images for r in pair]
                observed = []
                for j, roi in enumerate(pair):
                    ctrl = u[sel.images, j].astype(np.float64).mean() if sel.images.size else np.nan
                    bscore = u[base_sets[j], j].astype(np.float64).mean()
                    observed.append((float(ctrl), float(bscore)))
                p_values = [float("nan"), float("nan")]
                if sel.images.size and params.n_permutations > 0:
                    rng = stream(params.seed, "univariate permutation", pair[0], pair[1], fold.heldout, condition)
                    null = permutation_null(
                        rng, u, [sel.images, base_sets[0], base_sets[1]], [(0, 1), (0, 2)], params.n_permutations,
                        pool=pool,
                    )
                    signs = CONDITIONS[condition]
                    for j in range(2):
                        direction = "greater" if signs[j] > 0 else "less"
                        p_values[j] = permutation_p_value(null[:, j], observed[j][0] - observed[j][1], direction)
                for j, roi in enumerate(pair):
                    rows.append(
                        {
                            "roi_1": pair[0], "roi_2": pair[1], "condition": condition, "roi": roi,
                            "roi_position": j + 1, "direction": "high" if CONDITIONS[condition][j] > 0 else "low",
                            "subject": fold.heldout, "n_controlling": int(sel.images.size),
                            "score": observed[j][0], "baseline_score": observed[j][1],
                            "difference": observed[j][0] - observed[j][1], "p_value": p_values[j],
                        }
                    )
            fdr = benjamini_hochberg(np.array([r["p_value"] for r in rows]), params.alpha)
            for r, q, sig in zip(rows, fdr.q_values, fdr.significant):
                r["q_value"] = float(q)
                r["significant"] = bool(sig)
            tests.extend(rows)
        if not cv_folds:
            continue
        for condition in CONDITIONS:
            for roi in pair:
                rows = [t for t in tests if t["roi_1"] == pair[0] and t["roi_2"] == pair[1]
                        and t["condition"] == condition and t["roi"] == roi]
                table = same_folds(np.array([[t["score"], t["baseline_score"], t["difference"]] for t in rows]))
                ci_rng = stream(params.seed, "univariate bootstrap", pair[0], pair[1], condition, roi)
                low, high = bootstrap_ci(table, params.n_bootstrap, ci_rng)
                k = sum(bool(t["significant"]) for t in rows)
                summary.append(
                    {
                        "roi_1": pair[0], "roi_2": pair[1], "condition": condition, "roi": roi,
                        "mean_score": mean_or_nan(table[:, 0]),
                        "mean_baseline": mean_or_nan(table[:, 1]),
                        "n_scored": int(np.isfinite(table[:, 0]).sum()),
                        "score_ci": [float(low[0]), float(high[0])],
                        "baseline_ci": [float(low[1]), float(high[1])],
                        "difference_ci": [float(low[2]), float(high[2])],
                        "n_subjects": len(rows), "n_significant": int(k),
                        "binomial_p": binomial_tail(int(k), len(rows), params.chance),
                    }
                )
    return tests, summary


def all_pairs(rois: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(rois, 2))
