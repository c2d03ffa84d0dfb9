"""Statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from berg_scale.rnc.stats import benjamini_hochberg, binomial_tail, bootstrap_ci, pearson_r, permutation_p_value


def test_permutation_p_counts_strictly_and_adds_one():
    null = np.array([1.0, 2.0, 3.0, 4.0])
    assert permutation_p_value(null, 2.5, "greater") == pytest.approx(3 / 5)
    assert permutation_p_value(null, 2.5, "less") == pytest.approx(3 / 5)
    assert permutation_p_value(null, 4.0, "greater") == pytest.approx(1 / 5)  # ties do not beat
    assert permutation_p_value(null, 0.0, "greater") == pytest.approx(5 / 5)
    assert math.isnan(permutation_p_value(null, float("nan"), "greater"))
    with pytest.raises(ValueError):
        permutation_p_value(null, 1.0, "two-sided")


def test_bh_all_rejected_with_monotone_q_values():
    # sorted 0.005, 0.01, 0.03, 0.04 vs thresholds 0.0125, 0.025, 0.0375, 0.05: all pass
    result = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005]), 0.05)
    assert result.significant.tolist() == [True, True, True, True]
    assert np.allclose(result.q_values, [0.02, 0.04, 0.04, 0.02])


def test_bh_none_rejected():
    # 0.02 > 0.0125, 0.03 > 0.025, 0.04 > 0.0375, 0.5 > 0.05
    result = benjamini_hochberg(np.array([0.02, 0.03, 0.5, 0.04]), 0.05)
    assert not result.significant.any()
    assert np.allclose(result.q_values, [0.16 / 3, 0.16 / 3, 0.5, 0.16 / 3])


def test_bh_is_step_up():
    # 0.02 fails its own threshold (0.0125) but is rejected because 0.024 <= 2 * 0.05 / 4
    result = benjamini_hochberg(np.array([0.02, 0.024, 0.9, 0.9]), 0.05)
    assert result.significant.tolist() == [True, True, False, False]


def test_bh_leaves_nan_out_of_the_family():
    result = benjamini_hochberg(np.array([0.02, np.nan, 0.024]), 0.05)
    # family of 2: thresholds 0.025, 0.05 -> both rejected
    assert result.significant.tolist() == [True, False, True]
    assert math.isnan(result.q_values[1])


def test_binomial_tail_known_values():
    q = 0.95
    assert binomial_tail(0, 8, 0.05) == 1.0
    assert binomial_tail(1, 8, 0.05) == pytest.approx(1 - q**8)
    assert binomial_tail(2, 8, 0.05) == pytest.approx(1 - q**8 - 8 * 0.05 * q**7)
    assert binomial_tail(2, 8, 0.05) == pytest.approx(0.0572447, abs=1e-7)
    assert binomial_tail(8, 8, 0.05) == pytest.approx(0.05**8)
    assert binomial_tail(9, 8, 0.05) == 0.0


def test_bootstrap_ci_of_two_values_is_the_full_range():
    """Means of 2 resampled subjects from {0, 1}: 0, 0.5, 1 with probability 1/4, 1/2, 1/4."""
    low, high = bootstrap_ci(np.array([0.0, 1.0]), 100_000, np.random.default_rng(0))
    assert (low, high) == (0.0, 1.0)


def test_bootstrap_ci_matches_normal_theory_and_shares_resamples():
    values = np.random.default_rng(5).normal(size=(8, 1))
    values = np.concatenate([values, values + 3.0], axis=1)
    low, high = bootstrap_ci(values, 100_000, np.random.default_rng(1))
    se = values[:, 0].std() / math.sqrt(8)  # bootstrap SE of the mean uses the population sd
    assert high[0] - low[0] == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert np.allclose(low[1] - low[0], 3.0) and np.allclose(high[1] - high[0], 3.0)


def test_bootstrap_ci_ignores_nan_subjects():
    low, high = bootstrap_ci(np.array([2.0, np.nan, 2.0]), 1000, np.random.default_rng(0))
    assert (low, high) == (2.0, 2.0)


def test_pearson_r():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson_r(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson_r(x, -x) == pytest.approx(-1.0)
    assert pearson_r(x, np.array([1.0, -1.0, -1.0, 1.0])) == pytest.approx(0.0)
    assert math.isnan(pearson_r(x, np.ones(4)))


def test_a_fold_without_a_score_leaves_the_baseline_too():
    from berg_scale.rnc.stats import bootstrap_ci, mean_or_nan, same_folds

    folds = np.array([[np.nan, 1.0, np.nan], [1.9, 1.0, 0.9], [1.7, 0.9, 0.8]])
    table = same_folds(folds)
    score, baseline = mean_or_nan(table[:, 0]), mean_or_nan(table[:, 1])
    assert score == pytest.approx(1.8) and baseline == pytest.approx(0.95)
    low, high = bootstrap_ci(table, 500, np.random.default_rng(0))
    assert low[2] <= score - baseline <= high[2], "the printed difference lies inside its own CI"
    assert np.isnan(mean_or_nan(np.array([np.nan, np.nan])))
    assert np.isnan(folds[0, 0]) and folds[0, 1] == 1.0, "the input is not changed"
