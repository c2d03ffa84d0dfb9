"""Multivariate RNC: scores equal the full-RSM definition; the GA follows the RNC paper (Gifford et al. 2025)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from berg_scale.errors import ConfigError
from berg_scale.rnc.multivariate import (
    GAParams, PairScorer, choose_multivariate_baseline, difference_null, fitness_key, genetic_search,
    multivariate_null, mutate, mutation_sizes,
)
from berg_scale.rnc.multivariate_study import MultivariateParams, run_multivariate
from berg_scale.rnc.patterns import PatternSet
from berg_scale.rnc.sampling import sample_subsets


def _full_rsm_score(raw1, raw2, train, batch):
    """The definition: per-subject Pearson RSMs over all N images, averaged (no Fisher z),
    the batch's 50 x 50 sub-blocks, their strict lower triangles, Pearson r."""
    rsm1 = np.mean([np.corrcoef(raw1[s]) for s in train], axis=0)
    rsm2 = np.mean([np.corrcoef(raw2[s]) for s in train], axis=0)
    rows, cols = np.tril_indices(len(batch), -1)
    a = rsm1[np.ix_(batch, batch)][rows, cols]
    b = rsm2[np.ix_(batch, batch)][rows, cols]
    return np.corrcoef(a, b)[0, 1]


@pytest.fixture(scope="module")
def small_patterns():
    rng = np.random.default_rng(0)
    n, subjects = 150, (1, 2, 3)
    shared = rng.normal(size=(n, 12))
    raw1 = [shared @ rng.normal(size=(12, 30)) + rng.normal(size=(n, 30)) for _ in subjects]
    raw2 = [shared @ rng.normal(size=(12, 17)) + 2 * rng.normal(size=(n, 17)) for _ in subjects]
    return subjects, raw1, raw2


def test_batch_scores_equal_a_direct_full_matrix_computation(small_patterns):
    subjects, raw1, raw2 = small_patterns
    p1 = PatternSet.from_arrays(subjects, [r.astype(np.float32) for r in raw1], "cpu")
    p2 = PatternSet.from_arrays(subjects, [r.astype(np.float32) for r in raw2], "cpu")
    scorer = PairScorer(p1, p2, chunk=7)  # odd chunk size exercises chunk boundaries
    batches = sample_subsets(np.random.default_rng(1), 150, 50, 20)
    for train in [(0, 1, 2), (1, 2), (0,)]:
        fast = scorer.score(batches, [subjects[i] for i in train])
        direct = [_full_rsm_score(raw1, raw2, train, b) for b in batches]
        assert np.allclose(fast, direct, atol=2e-5)


@pytest.mark.parametrize("storage,tolerance", [("bfloat16", 0.03), ("float16", 0.005)])
def test_reduced_precision_storage_stays_close(small_patterns, storage, tolerance):
    subjects, raw1, raw2 = small_patterns
    exact = PairScorer(PatternSet.from_arrays(subjects, raw1, "cpu"), PatternSet.from_arrays(subjects, raw2, "cpu"))
    reduced = PairScorer(
        PatternSet.from_arrays(subjects, raw1, "cpu", storage), PatternSet.from_arrays(subjects, raw2, "cpu", storage)
    )
    batches = sample_subsets(np.random.default_rng(2), 150, 50, 50)
    assert np.abs(exact.score(batches, subjects) - reduced.score(batches, subjects)).max() < tolerance


def test_constant_patterns_do_not_produce_errors():
    raw = np.ones((60, 5), np.float32)
    p = PatternSet.from_arrays([1], [raw], "cpu")
    assert torch.count_nonzero(p.blocks[0]) == 0
    scores = PairScorer(p, p).score(sample_subsets(np.random.default_rng(0), 60, 10, 3), [1])
    assert np.isnan(scores).all()
    assert (fitness_key(scores, "align") == np.inf).all()


def test_mutation_sizes_follow_python_rounding():
    assert mutation_sizes(50) == [1, 5, 12, 25, 38]  # round(12.5) = 12, round(37.5) = 38
    assert mutation_sizes(10) == [1, 1, 2, 5, 8]  # round(2.5) = 2, round(7.5) = 8


def test_mutants_replace_exactly_q_images_with_images_not_in_the_parent():
    rng = np.random.default_rng(0)
    parents = sample_subsets(rng, 1000, 50, 40).astype(np.int64)
    mutants = mutate(rng, parents, [1, 5, 12, 25, 38], 1000)
    assert mutants.shape == (200, 50)
    assert (np.diff(mutants, axis=1) > 0).all()  # sorted, distinct (canonical form)
    for m, mutant in enumerate(mutants):
        parent = parents[m // 5]
        assert len(set(mutant) - set(parent)) == [1, 5, 12, 25, 38][m % 5]


def test_fitness_ranks_align_by_r_and_disentangle_by_absolute_r():
    scores = np.array([0.5, -0.9, 0.1, np.nan])
    assert np.argsort(fitness_key(scores, "align"), kind="stable").tolist() == [0, 2, 1, 3]
    assert np.argsort(fitness_key(scores, "disentangle"), kind="stable").tolist() == [2, 0, 1, 3]
    with pytest.raises(ConfigError):
        fitness_key(scores, "maximise")


def test_ga_is_elitist_deterministic_and_scores_2400_candidates(small_patterns):
    subjects, raw1, raw2 = small_patterns
    scorer = PairScorer(PatternSet.from_arrays(subjects, raw1, "cpu"), PatternSet.from_arrays(subjects, raw2, "cpu"))
    counted = []

    def score(batches):
        counted.append(len(batches))
        assert (np.diff(batches, axis=1) > 0).all()
        return scorer.score(batches, subjects)

    params = GAParams(generations=3)
    a = genetic_search(score, 150, "align", params)
    # initial 200, then per generation 1000 mutants + 1200 immigrants (parents' scores are cached)
    assert counted == [200] + [2200] * 3
    assert (np.diff(a.best_scores) >= 0).all()
    b = genetic_search(lambda x: scorer.score(x, subjects), 150, "align", params)
    assert np.array_equal(a.best_batches, b.best_batches)
    d = genetic_search(lambda x: scorer.score(x, subjects), 150, "disentangle", params)
    assert (np.diff(np.abs(d.best_scores)) <= 0).all()
    with pytest.raises(ConfigError, match="too few"):
        genetic_search(score, 80, "align", params)  # 38 replacements need 88 images


def _planted_pair(objective, n=100, v=20, subjects=(1, 2), seed=1):
    rng = np.random.default_rng(seed)
    planted = np.sort(rng.choice(n, 50, replace=False))
    raw1, raw2 = [], []
    for _ in subjects:
        y1 = rng.normal(size=(n, v))
        if objective == "align":  # planted images: identical patterns in both ROIs -> r = 1
            y2 = rng.normal(size=(n, v))
            y2[planted] = y1[planted]
        else:  # everything identical except the planted images, which are independent
            y2 = y1.copy()
            y2[planted] = rng.normal(size=(50, v))
        raw1.append(y1.astype(np.float32))
        raw2.append(y2.astype(np.float32))
    scorer = PairScorer(PatternSet.from_arrays(subjects, raw1, "cpu"), PatternSet.from_arrays(subjects, raw2, "cpu"))
    return planted, scorer, list(subjects)


def test_ga_finds_a_planted_aligned_set():
    planted, scorer, subjects = _planted_pair("align")
    assert scorer.score(planted, subjects)[0] == pytest.approx(1.0, abs=1e-5)
    random_best = scorer.score(sample_subsets(np.random.default_rng(9), 100, 50, 2400), subjects).max()
    result = genetic_search(lambda b: scorer.score(b, subjects), 100, "align", GAParams(generations=40))
    overlap = len(set(result.best_batches[-1]) & set(planted))
    assert overlap >= 40  # chance level is 25 (hypergeometric sd about 2.5)
    assert result.best_scores[-1] > random_best + 0.1


@pytest.mark.slow
def test_ga_recovers_the_whole_planted_aligned_set():
    """With the published settings the search converges on the planted batch itself
    (on the development machine: all 50 images from generation 187 on)."""
    planted, scorer, subjects = _planted_pair("align")
    result = genetic_search(lambda b: scorer.score(b, subjects), 100, "align", GAParams(generations=200))
    assert len(set(result.best_batches[-1]) & set(planted)) >= 49
    assert result.best_scores[-1] >= 0.99


def test_ga_recovers_a_planted_disentangled_set():
    planted, scorer, subjects = _planted_pair("disentangle")
    random_scores = scorer.score(sample_subsets(np.random.default_rng(9), 100, 50, 2400), subjects)
    assert np.abs(random_scores).min() > 0.05  # no random batch is disentangled
    result = genetic_search(lambda b: scorer.score(b, subjects), 100, "disentangle", GAParams(generations=25))
    assert abs(result.best_scores[-1]) < 0.01
    # any batch with r near 0 is a valid answer, so the planted set is enriched, not required
    assert len(set(result.best_batches[-1]) & set(planted)) >= 32  # chance level 25, sd about 2.5


def test_multivariate_null_serves_every_fold(small_patterns):
    subjects, raw1, raw2 = small_patterns
    p1, p2 = PatternSet.from_arrays(subjects, raw1, "cpu"), PatternSet.from_arrays(subjects, raw2, "cpu")
    folds = [((2, 3), 1), ((1, 3), 2), ((1, 2), 3), ((1, 2, 3), None)]
    null = multivariate_null(p1, p2, folds, 300, 50, seed=5, chunk=128)
    scorer = PairScorer(p1, p2)
    picks = [0, 127, 128, 299]
    batches = np.stack([null.batch(b) for b in picks])
    for train, heldout in folds:
        assert np.allclose(null.train[heldout][picks], scorer.score(batches, train), atol=1e-5)
        if heldout is not None:
            assert np.allclose(null.test[heldout][picks], scorer.score(batches, [heldout]), atol=1e-5)
    b, train_score, test_score = choose_multivariate_baseline(null, 2)
    mu = null.train[2].astype(np.float64).mean()
    assert b == int(np.argmin(np.abs(null.train[2] - mu)))
    assert test_score == pytest.approx(float(null.test[2][b]))


def test_difference_null_uses_the_published_slices():
    null = np.arange(12, dtype=np.float64)
    assert difference_null(null, "align", 4).tolist() == [4.0] * 4  # null[4:8] - null[0:4]
    assert difference_null(null, "disentangle", 4).tolist() == [8.0] * 4  # null[8:12] - null[0:4]
    assert difference_null(null, "align", 100).size == 4  # capped at a third of the null


def test_run_multivariate_produces_cv_statistics(small_patterns):
    subjects, raw1, raw2 = small_patterns
    patterns = {"V1": PatternSet.from_arrays(subjects, raw1, "cpu"), "hV4": PatternSet.from_arrays(subjects, raw2, "cpu")}
    params = MultivariateParams(ga=GAParams(population=20, generations=3), baseline_batches=600,
                                n_bootstrap=500, n_permutations=200)
    result = run_multivariate(patterns, [("V1", "hV4")], params)
    assert len(result.runs) == 4 * 2  # (3 LOSO folds + all) x 2 conditions
    assert len(result.tests) == 3 * 2 and len(result.summary) == 2
    for test in result.tests:
        assert 1 / 201 <= test["p_value"] <= 1
        assert test["difference"] == pytest.approx(test["score"] - test["baseline_score"])
    all_run = next(r for r in result.runs if r.fold.heldout is None and r.condition == "align")
    assert np.isnan(all_run.test_scores).all() and all_run.search.best_scores.size == 3
