"""Univariate RNC (Gifford et al. 2025), rule by rule, on small hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from berg_scale.rnc.univariate import (
    BaselineNull, Fold, UnivariateParams, baseline_null, choose_baseline, condition_scores, make_folds,
    merge_top_k, permutation_null, run_univariate, top_k, train_average,
)


def test_folds_are_leave_one_out_then_all_subjects():
    folds = make_folds([1, 2, 3])
    assert [(f.train, f.heldout, f.cv) for f in folds] == [
        ((2, 3), 1, 1), ((1, 3), 2, 1), ((1, 2), 3, 1), ((1, 2, 3), None, 0)
    ]
    assert [f.label for f in make_folds([4], cross_validation=True)] == ["all"]


def test_train_average_is_a_plain_mean_over_train_subjects():
    values = np.arange(24, dtype=np.float32).reshape(4, 3, 2)  # (N, S, R)
    assert np.allclose(train_average(values, [0, 2], 1), (values[:, 0, 1] + values[:, 2, 1]) / 2)


@pytest.mark.parametrize(
    "condition,expected_score,expected_eligible",
    [
        # u1 = [0.04, 0.0399, -0.04, 0.5], u2 = [0.04, 0.5, -0.04, -0.0399], beta = 0, margin = 0.04
        ("high1-high2", [0.08, 0.5399, -0.08, 0.4601], [True, False, False, False]),
        ("low1-low2", [-0.08, -0.5399, 0.08, -0.4601], [False, False, True, False]),
        ("high1-low2", [0.0, -0.4601, 0.0, 0.5399], [False, False, False, False]),
        ("low1-high2", [0.0, 0.4601, 0.0, -0.5399], [False, False, False, False]),
    ],
)
def test_condition_ranking_and_margins_are_inclusive(condition, expected_score, expected_eligible):
    u1 = np.array([0.04, 0.0399, -0.04, 0.5])
    u2 = np.array([0.04, 0.5, -0.04, -0.0399])
    score, eligible = condition_scores(u1, u2, 0.0, 0.0, condition, 0.04)
    assert np.allclose(score, expected_score)
    assert eligible.tolist() == expected_eligible


def test_margins_are_relative_to_each_rois_baseline():
    u1 = np.array([1.05, 1.03, 0.95])
    u2 = np.array([-1.05, -1.05, -0.95])
    # beta1 = 1, beta2 = -1: high1 needs u1 >= 1.04, low2 u2 <= -1.04; low1 u1 <= 0.96, high2 u2 >= -0.96
    _, eligible = condition_scores(u1, u2, 1.0, -1.0, "high1-low2", 0.04)
    assert eligible.tolist() == [True, False, False]
    _, eligible = condition_scores(u1, u2, 1.0, -1.0, "low1-high2", 0.04)
    assert eligible.tolist() == [False, False, True]


def test_top_k_takes_first_eligible_in_rank_order_with_ties_by_image_number():
    score = np.array([5.0, 9.0, 7.0, 9.0, 1.0, 8.0])
    eligible = np.array([True, True, True, True, True, False])
    images, scores = top_k(score, eligible, 3)
    assert images.tolist() == [1, 3, 2]  # 9 (image 1), 9 (image 3), 7; image 5 (8.0) is ineligible
    assert scores.tolist() == [9.0, 9.0, 7.0]


def test_top_k_returns_fewer_when_fewer_are_eligible_and_no_fallback():
    score = np.array([3.0, 2.0, 1.0])
    images, _ = top_k(score, np.array([False, True, False]), 25)
    assert images.tolist() == [1]
    images, _ = top_k(score, np.zeros(3, bool), 25)
    assert images.size == 0


def test_merge_of_per_shard_top_k_is_exact():
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=1000), 1)  # many ties
    eligible = rng.random(1000) > 0.3
    expected = top_k(score, eligible, 25)
    parts = [top_k(score[a:b], eligible[a:b], 25, offset=a) for a, b in [(0, 100), (100, 550), (550, 1000)]]
    merged = merge_top_k(parts, 25)
    assert merged[0].tolist() == expected[0].tolist()


def test_baseline_is_batch_nearest_to_null_mean():
    # batch means 0, 1, 2, 10: mu = 3.25, distances 3.25, 2.25, 1.25, 6.75 -> batch 2
    null = BaselineNull(np.array([0.0, 1.0, 2.0, 10.0], np.float32).reshape(4, 1, 1), 100, 25, seed=7)
    values = np.zeros((100, 1, 1), np.float32)
    fold = Fold((1,), None)
    base = choose_baseline(null, values, [0], None, 0, "V1", fold)
    assert base.batch_index == 2 and base.score_train == 2.0 and base.null_mean == pytest.approx(3.25)
    assert base.images.size == 25 and np.isnan(base.score_test)


def test_baseline_null_scores_the_same_batches_for_every_subject_and_roi():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(500, 3, 2)).astype(np.float32)
    null = baseline_null(values, 3000, 25, seed=11, chunk=1024)
    for b in (0, 1023, 1024, 2999):  # chunk boundaries
        batch = null.batch(b)
        assert batch.size == 25 and np.unique(batch).size == 25
        assert np.allclose(null.batch_means[b], values[batch].mean(axis=0), atol=1e-6)
    # the train null of a fold is the mean of per-subject batch means (linearity)
    fold = Fold((1, 3), 2)
    base = choose_baseline(null, values, [0, 2], 1, 1, "hV4", fold)
    train_u = train_average(values, [0, 2], 1)
    assert base.score_train == pytest.approx(train_u[base.images].mean(), abs=1e-6)
    assert base.score_test == pytest.approx(values[base.images, 1, 1].mean(), abs=1e-6)
    direct = np.array([train_u[null.batch(b)].mean() for b in range(0, 3000, 97)])
    assert np.allclose(base.null_train[::97], direct, atol=1e-6)


def test_baseline_is_reproducible_from_the_seed():
    values = np.random.default_rng(2).normal(size=(300, 2, 1)).astype(np.float32)
    a = baseline_null(values, 2000, 25, seed=20200220)
    b = baseline_null(values, 2000, 25, seed=20200220)
    c = baseline_null(values, 2000, 25, seed=1)
    assert np.array_equal(a.batch_means, b.batch_means)
    assert not np.array_equal(a.batch_means, c.batch_means)


def test_permutation_null_is_exact_for_one_image_sets():
    """ctrl={0}, base={1}: null = u[x] - u[y] over ordered pairs of distinct images."""
    u = np.array([[0.0], [1.0], [3.0], [7.0]])
    null = permutation_null(np.random.default_rng(0), u, [np.array([0]), np.array([1])], [(0, 1)], 48_000)
    exact = sorted(a - b for a, b in itertools.permutations(u[:, 0], 2))
    values, counts = np.unique(null[:, 0], return_counts=True)
    assert sorted(values.tolist()) == sorted(set(exact))
    for v, c in zip(values, counts):
        assert c / 48_000 == pytest.approx(exact.count(v) / 12, abs=0.01)


def test_permutation_null_keeps_overlapping_images_together():
    """ctrl={0,1}, base={1,2}: the shared image cancels, null = (u[x] - u[z]) / 2."""
    u = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    null = permutation_null(np.random.default_rng(1), u, [np.array([0, 1]), np.array([1, 2])], [(0, 1)], 20_000)
    possible = {(a - b) / 2 for a, b in itertools.permutations(u[:, 0], 2)}
    assert set(np.round(null[:, 0], 9)) <= {round(p, 9) for p in possible}
    assert abs(null[:, 0].mean()) < 0.1  # symmetric around 0


def _hand_case(n_high_high: int):
    """Two subjects; `n_high_high` images sit in the high-high quadrant, others near 0."""
    rng = np.random.default_rng(3)
    n = 400
    values = rng.uniform(-0.02, 0.02, size=(n, 2, 2)).astype(np.float32)
    values[:n_high_high] = 1.0 + 0.01 * np.arange(n_high_high, dtype=np.float32)[:, None, None]
    return values


def test_fewer_than_25_eligible_images_returns_fewer():
    values = _hand_case(3)
    params = UnivariateParams(baseline_batches=2000, n_bootstrap=100, n_permutations=100)
    result = run_univariate(values, [1, 2], ["V1", "hV4"], [("V1", "hV4")], params, cross_validation=False)
    chosen = {s.condition: s.images.tolist() for s in result.selections}
    assert chosen["high1-high2"] == [2, 1, 0]  # ranked by u1 + u2, descending
    # background lies within +-0.02 of ~0: never beyond baseline -+ 0.04
    assert chosen["low1-low2"] == [] and chosen["high1-low2"] == [] and chosen["low1-high2"] == []


def test_an_image_can_serve_several_conditions():
    values = np.zeros((200, 1, 2), np.float32)
    values[0] = [[2.0, 0.0]]  # u1 high, u2 at baseline: neither high2 nor low2
    values[1] = [[2.0, 2.0]]
    values[2] = [[2.0, -2.0]]
    params = UnivariateParams(baseline_batches=500, n_bootstrap=10, n_permutations=10)
    result = run_univariate(values, [1], ["V1", "hV4"], [("V1", "hV4")], params, cross_validation=False)
    chosen = {s.condition: s.images.tolist() for s in result.selections}
    assert chosen["high1-high2"] == [1] and chosen["high1-low2"] == [2]
    assert 0 not in sum(chosen.values(), [])
