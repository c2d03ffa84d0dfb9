"""Multivariate RNC over folds and ROI pairs: GA runs, baselines and statistics (the RNC paper).

Images whose voxel pattern is not finite for any subject in any ROI of the study are
left out of the search, the null and so of every statistic (see `finite`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from berg_scale.errors import ConfigError
from berg_scale.rnc.finite import DEFAULT_MAX_EXCLUDED_FRACTION, Exclusions, column_label, find_exclusions
from berg_scale.rnc.multivariate import (
    OBJECTIVES, GAParams, GAResult, PairScorer, choose_multivariate_baseline, difference_null,
    genetic_search, multivariate_null, mutation_sizes,
)
from berg_scale.rnc.patterns import PatternSet
from berg_scale.rnc.stats import (
    benjamini_hochberg,
    binomial_tail,
    bootstrap_ci,
    mean_or_nan,
    permutation_p_value,
    same_folds,
)
from berg_scale.rnc.streams import stream
from berg_scale.rnc.univariate import Fold, make_folds


@dataclass(frozen=True)
class MultivariateParams:
    ga: GAParams = GAParams()
    conditions: tuple[str, ...] = OBJECTIVES
    baseline_batches: int = 1_000_000
    n_bootstrap: int = 100_000
    n_permutations: int = 100_000
    alpha: float = 0.05
    chance: float = 0.05
    chunk: int | None = None
    log_every: int = 100
    max_excluded_fraction: float = DEFAULT_MAX_EXCLUDED_FRACTION


@dataclass
class MultivariateRun:
    pair: tuple[str, str]
    condition: str
    fold: Fold
    search: GAResult
    test_scores: np.ndarray  # held-out score of each generation's best batch (NaN for cv=0)


@dataclass
class MultivariateResult:
    params: MultivariateParams
    subjects: tuple[int, ...]
    pairs: list[tuple[str, str]]
    runs: list[MultivariateRun]
    baselines: list[dict]
    tests: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    exclusions: Exclusions | None = None  # images left out for non-finite patterns
    # per pair and held-out fold: the test scores of the random baseline batches, in draw
    # order, so that follow-ups can rebuild the slices of the difference null
    test_nulls: list[dict] = field(default_factory=list)


def pattern_exclusions(patterns: Mapping[str, PatternSet], rois: Sequence[str]) -> Exclusions:
    """Images whose voxel pattern was not finite for some subject of some ROI."""
    first = patterns[rois[0]]
    labels, bad = [], {}
    for subject in first.subjects:
        for roi in rois:
            label = column_label(subject, roi)
            labels.append(label)
            bad[label] = patterns[roi].nonfinite_rows(subject)
    return find_exclusions(first.n_images, labels, bad)


def images_needed(ga: GAParams) -> int:
    """Images a GA batch and its largest mutation draw from at once."""
    sizes = mutation_sizes(ga.batch_size, ga.mutation_fractions)[: ga.mutants_per_parent]
    return ga.batch_size + max(sizes)


def require_enough_images(n_images: int, ga: GAParams) -> None:
    """Refuse a multivariate search the images cannot fill, naming each way out."""
    if n_images < images_needed(ga):
        raise ConfigError(
            f"multivariate: {n_images:,} images are too few for batches of {ga.batch_size} (a batch "
            f"and its largest mutation need {images_needed(ga)}): generate responses for more images, "
            "lower multivariate.batch_size (rnc multivariate --batch-size), or turn multivariate off "
            "(multivariate.enabled: false; run_demo_rnc(multivariate=False); demo --no-rnc)"
        )


def run_multivariate(
    patterns: Mapping[str, PatternSet],
    pairs: Sequence[tuple[str, str]],
    params: MultivariateParams = MultivariateParams(),
    cross_validation: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> MultivariateResult:
    """One GA run per (pair, fold, condition); baseline null per pair serves every fold.

    Each GA run starts from a fresh generator seeded with the study seed, as the
    published scripts reset the seed per run. Bootstrap streams are keyed by the pair's
    ROI names and the condition, so a pair's results do not depend on the other pairs.
    """
    subjects = next(iter(patterns.values())).subjects
    folds = make_folds(subjects, cross_validation)
    rois = sorted({r for pair in pairs for r in pair}, key=list(patterns).index)
    exclusions = pattern_exclusions(patterns, rois)
    log(exclusions.message("multivariate"))
    needed = images_needed(params.ga)
    exclusions.check("multivariate", params.max_excluded_fraction, needed)
    require_enough_images(exclusions.n_used, params.ga)
    pool = exclusions.pool
    n_used = exclusions.n_used
    runs: list[MultivariateRun] = []
    baselines: list[dict] = []
    tests: list[dict] = []
    summary: list[dict] = []
    test_nulls: list[dict] = []
    seed = params.ga.seed
    for pair in pairs:
        p1, p2 = patterns[pair[0]], patterns[pair[1]]
        scorer = PairScorer(p1, p2, params.chunk)
        log(f"{pair[0]}-{pair[1]}: baseline null of {params.baseline_batches:,} batches")
        null = multivariate_null(
            p1, p2, [(f.train, f.heldout) for f in folds], params.baseline_batches, params.ga.batch_size, seed,
            pool=pool,
        )
        fold_baseline = {}
        for fold in folds:
            if fold.heldout is not None:
                test_nulls.append({"roi_1": pair[0], "roi_2": pair[1], "fold": fold.label,
                                   "heldout_subject": fold.heldout, "batch_size": params.ga.batch_size,
                                   "test_null": np.asarray(null.test[fold.heldout], dtype=np.float32)})
        for fold in folds:
            b, train_score, test_score = choose_multivariate_baseline(null, fold.heldout)
            fold_baseline[fold.heldout] = test_score
            baselines.append(
                {"roi_1": pair[0], "roi_2": pair[1], "fold": fold.label, "heldout_subject": fold.heldout,
                 "batch": b, "images": null.batch(b), "train_score": train_score, "test_score": test_score,
                 "null_train_mean": float(np.nanmean(null.train[fold.heldout])),
                 "n_null_defined": int(np.isfinite(null.train[fold.heldout]).sum()),
                 "n_images_used": n_used, "n_images_excluded": exclusions.n_excluded}
            )
        for fold in folds:
            for condition in params.conditions:
                every = max(1, params.log_every)

                def report(generation: int, best: float, _c=condition, _f=fold) -> None:
                    if (generation + 1) % every == 0 or generation + 1 == params.ga.generations:
                        log(f"{pair[0]}-{pair[1]} {_c} {_f.label}: generation {generation + 1}, best {best:+.4f}")

                search = genetic_search(
                    functools.partial(scorer.score, subjects=fold.train),
                    n_used, condition, params.ga, np.random.default_rng(seed), report, images=pool,
                )
                test_scores = np.full(search.best_scores.shape, np.nan)
                if fold.heldout is not None:
                    test_scores = scorer.score(search.best_batches, [fold.heldout])
                runs.append(MultivariateRun((pair[0], pair[1]), condition, fold, search, test_scores))
        cv_folds = [f for f in folds if f.heldout is not None]
        pair_tests = []
        for fold in cv_folds:
            rows = []
            for condition in params.conditions:
                run = next(r for r in runs if r.pair == tuple(pair) and r.condition == condition and r.fold == fold)
                score = float(run.test_scores[-1])
                delta = score - fold_baseline[fold.heldout]
                diff_null = difference_null(null.test[fold.heldout], condition, params.n_permutations)
                direction = "greater" if condition == "align" else "less"
                rows.append(
                    {"roi_1": pair[0], "roi_2": pair[1], "condition": condition, "subject": fold.heldout,
                     "score": score, "baseline_score": fold_baseline[fold.heldout], "difference": delta,
                     "p_value": permutation_p_value(diff_null, delta, direction), "n_null": int(diff_null.size),
                     "n_images_used": n_used, "n_images_excluded": exclusions.n_excluded}
                )
            fdr = benjamini_hochberg(np.array([r["p_value"] for r in rows]), params.alpha)
            for r, q, sig in zip(rows, fdr.q_values, fdr.significant):
                r["q_value"], r["significant"] = float(q), bool(sig)
            pair_tests.extend(rows)
        tests.extend(pair_tests)
        if cv_folds:
            for condition in params.conditions:
                rows = [t for t in pair_tests if t["condition"] == condition]
                table = same_folds(np.array([[t["score"], t["baseline_score"], t["difference"]] for t in rows]))
                rng = stream(seed, "multivariate bootstrap", pair[0], pair[1], condition)
                low, high = bootstrap_ci(table, params.n_bootstrap, rng)
                k = int(sum(bool(t["significant"]) for t in rows))
                summary.append(
                    {"roi_1": pair[0], "roi_2": pair[1], "condition": condition,
                     "mean_score": mean_or_nan(table[:, 0]), "mean_baseline": mean_or_nan(table[:, 1]),
                     "n_scored": int(np.isfinite(table[:, 0]).sum()),
                     "score_ci": [float(low[0]), float(high[0])], "baseline_ci": [float(low[1]), float(high[1])],
                     "difference_ci": [float(low[2]), float(high[2])], "n_subjects": len(rows),
                     "n_significant": k, "binomial_p": binomial_tail(k, len(rows), params.chance)}
                )
    return MultivariateResult(params, tuple(subjects), [(p[0], p[1]) for p in pairs], runs, baselines, tests, summary,
                              exclusions, test_nulls)
