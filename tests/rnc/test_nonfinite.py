"""Non-finite responses: left out of every RNC step, counted and reported, or refused.

The reference for "left out" is the same study on an output where those images were
never generated: with the non-finite images removed, every result must be identical
(image numbers shifted back), so a NaN cannot move a baseline, a selection or a p-value.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main as cli_main
from berg_scale.rnc.config import parse_config
from berg_scale.rnc.finite import NonFiniteResponsesError, univariate_exclusions
from berg_scale.rnc.multivariate import GAParams
from berg_scale.rnc.multivariate_study import MultivariateParams, run_multivariate
from berg_scale.rnc.patterns import PatternSet
from berg_scale.rnc.responses import mean_column
from berg_scale.rnc.study import run_study
from berg_scale.rnc.synthetic import image_key, write_synthetic_output
from berg_scale.rnc.univariate import UnivariateParams, run_univariate

from rnc_planted import MODEL

PARAMS = UnivariateParams(baseline_batches=4000, n_bootstrap=300, n_permutations=300, max_excluded_fraction=0.05)


def _values(n=600, subjects=3, rois=2, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 1, rois))
    return (latent + 0.3 * rng.normal(size=(n, subjects, rois))).astype(np.float32)


def _shift(images, removed):
    """Image numbers of the reduced output -> numbers in the full output."""
    images = np.asarray(images, dtype=np.int64)
    full = np.delete(np.arange(images.max(initial=0) + len(removed) + 1), removed)
    return full[images]


def _assert_same_univariate(with_bad, reduced, removed):
    for a, b in zip(with_bad.baselines, reduced.baselines):
        assert (a.roi, a.fold, a.batch_index) == (b.roi, b.fold, b.batch_index)
        assert a.score_train == b.score_train and a.null_mean == b.null_mean
        assert (a.score_test == b.score_test) or (np.isnan(a.score_test) and np.isnan(b.score_test))
        assert a.images.tolist() == _shift(b.images, removed).tolist()
    for a, b in zip(with_bad.selections, reduced.selections):
        assert a.images.tolist() == _shift(b.images, removed).tolist()
        assert np.array_equal(a.rank_scores, b.rank_scores)
    strip = ("n_images_used", "n_images_excluded")
    assert [{k: v for k, v in t.items() if k not in strip} for t in with_bad.tests] == [
        {k: v for k, v in t.items() if k not in strip} for t in reduced.tests
    ]
    assert with_bad.summary == reduced.summary
    assert [c["pearson_r"] for c in with_bad.correlations] == [c["pearson_r"] for c in reduced.correlations]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_univariate_non_finite_image_is_left_out_of_every_step(bad_value):
    values = _values()
    removed = [3, 250]
    bad = values.copy()
    bad[3, 1, 0] = bad_value  # subject 2 (a held-out subject in one fold), V1
    bad[250, 0, 1] = np.nan  # subject 1, hV4
    pairs = [("V1", "hV4")]
    with_bad = run_univariate(bad, [1, 2, 3], ["V1", "hV4"], pairs, PARAMS)
    reduced = run_univariate(np.delete(values, removed, axis=0), [1, 2, 3], ["V1", "hV4"], pairs, PARAMS)
    _assert_same_univariate(with_bad, reduced, removed)
    ex = with_bad.exclusions
    assert ex.excluded.tolist() == removed and ex.n_used == 598
    assert ex.by_column() == {"sub-02/V1": 1, "sub-01/hV4": 1}
    assert ex.columns_of(0) == ["sub-02/V1"]
    assert all(t["n_images_excluded"] == 2 and t["n_images_used"] == 598 for t in with_bad.tests)
    clean = run_univariate(values, [1, 2, 3], ["V1", "hV4"], pairs, PARAMS)
    for a, b in zip(with_bad.baselines, clean.baselines):  # one image less barely moves a baseline
        assert abs(a.score_train - b.score_train) < 0.05


def test_univariate_infinite_image_is_never_selected():
    values = _values()
    values[7] = 5.0  # the best high1-high2 image of every fold...
    values[7, 2, 0] = np.inf  # ...until one of its responses is infinite
    result = run_univariate(values, [1, 2, 3], ["V1", "hV4"], [("V1", "hV4")], PARAMS)
    assert all(7 not in s.images for s in result.selections)
    assert all(7 not in b.images for b in result.baselines)
    assert all(np.isfinite([t["score"], t["baseline_score"]]).all() for t in result.tests)


def test_only_the_columns_a_study_reads_are_checked():
    values = _values(rois=3)
    values[5, 0, 2] = np.nan  # PPA: not in any pair
    result = run_univariate(values, [1, 2, 3], ["V1", "hV4", "PPA"], [("V1", "hV4")], PARAMS)
    assert result.exclusions.n_excluded == 0 and result.exclusions.pool is None
    found = univariate_exclusions(values, [1, 2, 3], ["V1", "PPA"], [0, 2], block=4)  # block edges
    assert found.excluded.tolist() == [5] and found.by_column() == {"sub-01/PPA": 1}


def test_too_many_non_finite_images_are_refused_in_one_line():
    values = _values()
    values[:40, 2, 1] = np.nan  # 40 of 600 = 6.7% > 5%
    with pytest.raises(NonFiniteResponsesError) as info:
        run_univariate(values, [1, 2, 3], ["V1", "hV4"], [("V1", "hV4")], PARAMS)
    message = str(info.value)
    assert "\n" not in message
    assert "40 of 600 images" in message and "sub-03/hV4 (40 images)" in message
    assert "max_excluded_fraction=0.05" in message and "regenerate" in message


def test_too_few_finite_images_for_the_baseline_are_refused():
    values = _values(n=30)
    values[:6, 0, 0] = np.nan  # 24 left, batches need 25
    params = UnivariateParams(baseline_batches=100, n_bootstrap=10, n_permutations=10, max_excluded_fraction=1.0)
    with pytest.raises(NonFiniteResponsesError, match="only 24 of 30 images have finite responses.*at least 25"):
        run_univariate(values, [1, 2, 3], ["V1", "hV4"], [("V1", "hV4")], params)


# -- multivariate ------------------------------------------------------------------
def _raw_patterns(n=130, subjects=(1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 5))
    raw1 = [(shared @ rng.normal(size=(5, 11)) + rng.normal(size=(n, 11))).astype(np.float32) for _ in subjects]
    raw2 = [(shared @ rng.normal(size=(5, 8)) + rng.normal(size=(n, 8))).astype(np.float32) for _ in subjects]
    return list(subjects), raw1, raw2


def _multivariate(raw1, raw2, subjects, max_fraction=0.05):
    patterns = {"V1": PatternSet.from_arrays(subjects, raw1, "cpu"), "hV4": PatternSet.from_arrays(subjects, raw2, "cpu")}
    params = MultivariateParams(ga=GAParams(population=20, generations=3), baseline_batches=600, n_bootstrap=300,
                                n_permutations=150, max_excluded_fraction=max_fraction)
    return run_multivariate(patterns, [("V1", "hV4")], params)


def test_multivariate_non_finite_pattern_is_left_out_of_search_null_and_statistics():
    subjects, raw1, raw2 = _raw_patterns()
    removed = [0, 77]
    bad1 = [r.copy() for r in raw1]
    bad2 = [r.copy() for r in raw2]
    bad1[1][0, 4] = np.nan  # subject 2, one voxel of V1
    bad2[2][77, 0] = np.inf  # subject 3, one voxel of hV4
    with_bad = _multivariate(bad1, bad2, subjects)
    reduced = _multivariate([np.delete(r, removed, 0) for r in raw1], [np.delete(r, removed, 0) for r in raw2],
                            subjects)
    assert with_bad.exclusions.excluded.tolist() == removed
    assert with_bad.exclusions.by_column() == {"sub-02/V1": 1, "sub-03/hV4": 1}
    for a, b in zip(with_bad.runs, reduced.runs):
        assert np.array_equal(a.search.best_batches, _shift(b.search.best_batches.ravel(), removed).reshape(
            b.search.best_batches.shape))
        assert np.array_equal(a.search.best_scores, b.search.best_scores)
        assert np.array_equal(a.test_scores, b.test_scores, equal_nan=True)
    for a, b in zip(with_bad.baselines, reduced.baselines):
        assert a["images"].tolist() == _shift(b["images"], removed).tolist()
        assert a["train_score"] == b["train_score"] and a["n_images_excluded"] == 2
    strip = ("n_images_used", "n_images_excluded")
    assert [{k: v for k, v in t.items() if k not in strip} for t in with_bad.tests] == [
        {k: v for k, v in t.items() if k not in strip} for t in reduced.tests
    ]
    assert with_bad.summary == reduced.summary
    assert all(np.isfinite(t["score"]) and np.isfinite(t["p_value"]) for t in with_bad.tests)


def test_multivariate_refuses_mostly_non_finite_patterns():
    subjects, raw1, raw2 = _raw_patterns()
    raw1[0][:20] = np.nan
    with pytest.raises(NonFiniteResponsesError, match=r"20 of 130 images .*sub-01/V1 \(20 images\)"):
        _multivariate(raw1, raw2, subjects)


def test_a_float32_overflowing_pattern_counts_as_non_finite():
    raw = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    raw[4] = [3e38, -3e38, 0, 0, 0, 0]  # finite, but centring and the norm overflow
    patterns = PatternSet.from_arrays([1], [raw], "cpu", chunk=3)
    assert patterns.nonfinite_rows(1).tolist() == [4]
    assert (patterns.blocks[0][4] == 0).all() and patterns.blocks[0].isfinite().all()


# -- study outputs -----------------------------------------------------------------
def _output_with_nan(root, n=300, subjects=(1, 2, 3), bad_image=17):
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(n, 2))
    columns = {}
    for s in subjects:
        for r, roi in enumerate(("V1", "hV4")):
            columns[mean_column(MODEL, s, roi)] = latent[:, r] + 0.3 * rng.normal(size=n)
    columns[mean_column(MODEL, 2, "V1")][bad_image] = np.nan
    write_synthetic_output(str(root), columns, n_shards=3)
    return list(subjects)


def test_study_reports_excluded_images_in_console_tables_and_summary(tmp_path, capsys):
    subjects = _output_with_nan(tmp_path / "out")
    code = cli_main([
        "rnc", "univariate", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "rnc"),
        "--subjects", *map(str, subjects), "--rois", "V1", "hV4", "--baseline-batches", "3000",
        "--permutations", "200", "--bootstrap", "200", "--no-plots",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[rnc] univariate: excluded 1 of 300 images with NaN or infinite responses (sub-02/V1 1)" in printed
    assert "univariate: 1 of 300 images excluded for NaN or infinite responses (sub-02/V1 1)" in printed
    out = tmp_path / "rnc" / "univariate"
    excluded = pq.read_table(out / "excluded.parquet").to_pylist()
    assert excluded == [{"image": 17, "key": image_key(17), "shard": "000000", "index": 17,
                         "nonfinite_columns": ["sub-02/V1"], "n_images": 300, "n_images_excluded": 1}]
    for name in ("tests", "baselines"):
        rows = pq.read_table(out / f"{name}.parquet").to_pylist()
        assert {(r["n_images_used"], r["n_images_excluded"]) for r in rows} == {(299, 1)}, name
    assert image_key(17) not in {r["key"] for r in pq.read_table(out / "controlling.parquet").to_pylist()}
    summary = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    exclusions = summary["univariate"]["exclusions"]
    assert (exclusions["n_images"], exclusions["n_used"], exclusions["n_excluded"]) == (300, 299, 1)
    assert exclusions["by_column"] == {"sub-02/V1": 1}


def test_study_refusal_is_a_one_line_cli_error(tmp_path, capsys):
    subjects = _output_with_nan(tmp_path / "out")
    study = tmp_path / "study.yaml"
    study.write_text(f"responses: {tmp_path / 'out'}\nout_dir: {tmp_path / 'rnc'}\nsubjects: {subjects}\n"
                     "max_excluded_fraction: 0.001\nplots:\n  enabled: false\n")
    code = cli_main(["rnc", "univariate", "--config", str(study), "--baseline-batches", "300"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("berg-scale rnc: error: univariate: 1 of 300 images") and "\n" not in err
    assert "most in sub-02/V1 (1 image)" in err and "max_excluded_fraction=0.001" in err
    assert not (tmp_path / "rnc" / "univariate").exists()


def test_a_clean_output_reports_no_exclusions(planted, tmp_path):
    config = parse_config({"responses": planted.url, "out_dir": str(tmp_path / "rnc"), "subjects": planted.subjects,
                           "univariate": {"baseline_batches": 2000, "n_bootstrap": 100, "n_permutations": 100},
                           "plots": {"enabled": False}})
    summary = run_study(config, log=lambda m: None)
    assert summary["univariate"]["exclusions"]["n_excluded"] == 0
    assert pq.read_table(tmp_path / "rnc" / "univariate" / "excluded.parquet").num_rows == 0
