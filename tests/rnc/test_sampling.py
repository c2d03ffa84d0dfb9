"""O(k) sampling must be exactly uniform over the allowed subsets, and valid."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from berg_scale.errors import ConfigError
from berg_scale.rnc.sampling import sample_excluding, sample_injection, sample_subsets


@pytest.mark.parametrize("n,k", [(10_000_000, 25), (1000, 25), (60, 50), (6, 3)])
def test_subsets_are_sorted_distinct_and_in_range(n, k):
    draws = sample_subsets(np.random.default_rng(0), n, k, 3000)
    assert draws.shape == (3000, k)
    assert (np.diff(draws, axis=1) > 0).all()
    assert draws.min() >= 0 and draws.max() < n


@pytest.mark.parametrize("n,k", [(6, 3), (40, 3)])
def test_subsets_are_uniform(n, k):
    """Every k-subset is equally likely, both on the rejection and the dense path."""
    draws = 60_000
    counts = Counter(map(tuple, sample_subsets(np.random.default_rng(1), n, k, draws)))
    if n == 6:
        expected = draws / 20  # C(6, 3)
        assert set(counts) == set(itertools.combinations(range(6), 3))
        assert max(abs(c - expected) for c in counts.values()) < 5 * np.sqrt(expected)
    else:
        # rejection path: each image appears with probability k/n
        freq = np.bincount(np.concatenate([list(c) * m for c, m in counts.items()]), minlength=n) / draws
        assert np.allclose(freq, k / n, atol=0.01)


def test_subsets_refuse_impossible_draws():
    with pytest.raises(ConfigError, match="cannot draw"):
        sample_subsets(np.random.default_rng(0), 10, 11, 1)


@pytest.mark.parametrize("n", [12, 200])
def test_excluding_never_returns_parent_images_and_is_uniform(n):
    rng = np.random.default_rng(2)
    parent = np.array([[0, 1, 2, 3]] * 20_000)
    counts = np.full(20_000, 2)
    out = sample_excluding(rng, n, parent, counts)
    assert out.shape == (20_000, 2)
    assert not np.isin(out, parent[0]).any()
    assert (out[:, 0] != out[:, 1]).all()
    freq = np.bincount(out.ravel(), minlength=n)[4:] / out.size
    assert np.allclose(freq, 1 / (n - 4), atol=0.01 if n == 12 else 0.002)


def test_excluding_marks_unused_positions():
    out = sample_excluding(np.random.default_rng(0), 100, np.array([[5, 6], [7, 8]]), np.array([1, 3]))
    assert out[0, 1] == -1 and out[0, 2] == -1
    assert (out[1] >= 0).all()


def test_injection_is_a_uniform_ordered_placement():
    """Ordered pairs of distinct images: 5 * 4 = 20 outcomes, equally likely."""
    out = sample_injection(np.random.default_rng(3), 5, 2, 40_000)
    counts = Counter(map(tuple, out))
    assert set(counts) == {(a, b) for a in range(5) for b in range(5) if a != b}
    assert max(abs(c / 40_000 - 1 / 20) for c in counts.values()) < 0.006


def test_injection_row_rejection_path_is_uniform_and_distinct():
    """m^2 << n: rows of i.i.d. draws with a repeat are redrawn whole."""
    out = sample_injection(np.random.default_rng(4), 400, 3, 60_000)
    assert (out[:, 0] != out[:, 1]).all() and (out[:, 1] != out[:, 2]).all() and (out[:, 0] != out[:, 2]).all()
    for position in range(3):
        freq = np.bincount(out[:, position], minlength=400) / 60_000
        assert np.allclose(freq, 1 / 400, atol=0.0012)
    # ordered: the first position is below the second as often as above
    assert abs((out[:, 0] < out[:, 1]).mean() - 0.5) < 0.01
