"""A pair's random streams depend on the seed and the pair's identity, not on the study around it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from berg_scale.errors import ConfigError
from berg_scale.rnc.multivariate import GAParams
from berg_scale.rnc.multivariate_study import MultivariateParams, run_multivariate
from berg_scale.rnc.patterns import PatternSet
from berg_scale.rnc.streams import stream
from berg_scale.rnc.univariate import UnivariateParams, run_univariate

# the first draw of stream(20200220, "univariate permutation", "V1", "hV4", 1, "high1-high2"),
# computed once; a change means every published-seed p-value of a study changed
PINNED_FIRST_DRAW = 2626426416


def test_streams_are_stable_across_processes_and_keyed_by_identity():
    first = int(stream(20200220, "univariate permutation", "V1", "hV4", 1, "high1-high2").integers(0, 2**32))
    code = ("from berg_scale.rnc.streams import stream; "
            "print(int(stream(20200220, 'univariate permutation', 'V1', 'hV4', 1, 'high1-high2').integers(0, 2**32)))")
    for hash_seed in ("1", "2"):  # Python's str hash is salted per process; the stream must not be
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == first
    assert first == PINNED_FIRST_DRAW
    draws = {
        int(stream(*key).integers(0, 2**32))
        for key in [(20200220, "univariate permutation", "V1", "hV4", 1, "high1-high2"),
                    (20200221, "univariate permutation", "V1", "hV4", 1, "high1-high2"),
                    (20200220, "univariate bootstrap", "V1", "hV4", 1, "high1-high2"),
                    (20200220, "univariate permutation", "hV4", "V1", 1, "high1-high2"),
                    (20200220, "univariate permutation", "V1", "hV4", 2, "high1-high2"),
                    (20200220, "univariate permutation", "V1", "hV4", None, "high1-high2"),
                    (20200220, "univariate permutation", "V1", "hV", "4", 1, "high1-high2")]
    }
    assert len(draws) == 7
    with pytest.raises(ConfigError, match="non-negative"):
        stream(-1, "x")


def _univariate_values(n=500, subjects=3, seed=2):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 1, 4))
    return (latent + 0.4 * rng.normal(size=(n, subjects, 4))).astype(np.float32)


def _pair_rows(rows, pair):
    return [r for r in rows if (r["roi_1"], r["roi_2"]) == pair]


def test_univariate_pair_statistics_do_not_depend_on_other_pairs():
    values = _univariate_values()  # ROIs A, B, C, D in slots 0..3
    params = UnivariateParams(baseline_batches=3000, n_bootstrap=500, n_permutations=500)
    alone = run_univariate(values[:, :, :2], [1, 2, 3], ["A", "B"], [("A", "B")], params)
    # another pair first, and the ROIs in another order in the array
    study = run_univariate(values[:, :, [2, 3, 0, 1]], [1, 2, 3], ["C", "D", "A", "B"], [("C", "D"), ("A", "B")],
                           params)
    assert alone.tests == _pair_rows(study.tests, ("A", "B"))
    assert alone.summary == _pair_rows(study.summary, ("A", "B"))
    assert len(alone.summary) == 8 and all(np.isfinite(r["difference_ci"]).all() for r in alone.summary)
    base = {(b.roi, b.fold): b for b in study.baselines}
    for b in alone.baselines:
        other = base[(b.roi, b.fold)]
        assert (b.batch_index, b.score_train, b.null_mean) == (other.batch_index, other.score_train, other.null_mean)
    pick = {(s.pair, s.fold, s.condition): s.images.tolist() for s in study.selections}
    assert all(s.images.tolist() == pick[(s.pair, s.fold, s.condition)] for s in alone.selections)


def test_multivariate_pair_statistics_do_not_depend_on_other_pairs():
    rng = np.random.default_rng(3)
    n, subjects = 120, (1, 2, 3)
    shared = rng.normal(size=(n, 5))

    def roi(v):
        return PatternSet.from_arrays(subjects, [shared @ rng.normal(size=(5, v)) + rng.normal(size=(n, v))
                                                 for _ in subjects], "cpu")

    patterns = {name: roi(v) for name, v in (("A", 9), ("B", 7), ("C", 8), ("D", 6))}
    params = MultivariateParams(ga=GAParams(population=16, generations=2), baseline_batches=450, n_bootstrap=400,
                                n_permutations=100)
    alone = run_multivariate({r: patterns[r] for r in ("A", "B")}, [("A", "B")], params)
    study = run_multivariate({r: patterns[r] for r in ("C", "D", "A", "B")}, [("C", "D"), ("A", "B")], params)
    assert alone.tests == _pair_rows(study.tests, ("A", "B"))
    assert alone.summary == _pair_rows(study.summary, ("A", "B"))
    only_disentangle = run_multivariate({r: patterns[r] for r in ("A", "B")}, [("A", "B")],
                                  MultivariateParams(ga=params.ga, conditions=("disentangle",), baseline_batches=450,
                                                     n_bootstrap=400, n_permutations=100))
    # a condition's intervals do not depend on which other conditions ran (its BH family does)
    intervals = ("score_ci", "baseline_ci", "difference_ci")
    assert [{k: r[k] for k in intervals} for r in only_disentangle.summary] == [
        {k: r[k] for k in intervals} for r in alone.summary if r["condition"] == "disentangle"
    ]
