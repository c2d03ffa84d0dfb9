"""Cortical distance and categorical selectivity over multivariate RNC: planted geometry is recovered.

Voxel patterns are laid out in the engine's format, a small cross-validated multivariate
RNC study runs over them (`berg-scale rnc multivariate`) and the follow-up commands read
its tables. ROI r's voxels read out cos(30 r) a(i) + sin(30 r) b(i) for two independent
latent feature sets a and b, so neighbouring areas share most of their representational
geometry and V1 and hV4 none; a control has independent ROIs.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main
from berg_scale.experiments.cortical_distance import GROUPING as DISTANCE
from berg_scale.experiments.roi_groups import group_means, group_statistic
from berg_scale.experiments.roi_groups_multivariate import shuffled_null_statistics
from berg_scale.rnc.multivariate import difference_null
from berg_scale.rnc.responses import mean_column, response_column
from berg_scale.rnc.stats import binomial_tail, permutation_p_value
from berg_scale.rnc.synthetic import write_synthetic_output

MODEL = "fmri-nsd-fwrf"
SUBJECTS = (1, 2, 3)
N_IMAGES = 240
BASELINE_BATCHES = 3000
PERMUTATIONS = 1000


def write_patterns(root, rois, angles, seed=0, voxels=16, latent=5, noise=0.3):
    """ROI r of every subject: (cos t_r a + sin t_r b) W_r + noise, for shared latents a, b."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, N_IMAGES, latent))
    patterns, ncsnr, means = {}, {}, {}
    for s in SUBJECTS:
        for roi, t in zip(rois, angles):
            signal = np.cos(t) * a + np.sin(t) * b
            y = signal @ rng.standard_normal((latent, voxels)) + noise * rng.standard_normal((N_IMAGES, voxels))
            column = response_column(MODEL, s, roi)
            patterns[column], ncsnr[column] = y, np.ones(voxels)
            means[mean_column(MODEL, s, roi)] = y.mean(axis=1)
    write_synthetic_output(str(root), means, patterns, ncsnr, n_shards=2)


def run_study(responses, out, rois):
    code = main(["rnc", "multivariate", "--responses", str(responses), "--out", str(out),
                 "--subjects", *map(str, SUBJECTS), "--rois", *rois, "--baseline-batches", str(BASELINE_BATCHES),
                 "--generations", "4", "--population", "12", "--batch-size", "20", "--permutations", "500",
                 "--bootstrap", "50", "--device", "cpu", "--no-plots"])
    assert code == 0


def run_followup(name, study, out, *extra):
    return main(["experiment", name, "--study", str(study), "--out", str(out), "--permutations", str(PERMUTATIONS),
                 "--bootstrap", "300", *extra])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvchain")
    write_patterns(root / "out", DISTANCE.rois, np.deg2rad(30 * np.arange(4)))
    run_study(root / "out", root / "study", DISTANCE.rois)
    assert run_followup("cortical-distance", root / "study", root / "cd") == 0  # kind detected
    return root


def test_study_saves_every_pair_and_folds_test_null(chain):
    study = chain / "study" / "multivariate"
    nulls = pq.read_table(study / "nulls.parquet")
    assert nulls.schema.field("test_null").type.value_type == "float"  # float32
    rows = nulls.to_pylist()
    assert len(rows) == 6 * len(SUBJECTS)
    assert {(r["roi_1"], r["roi_2"]) for r in rows} == set(DISTANCE.pairs)
    assert all(r["n_batches"] == BASELINE_BATCHES == len(r["test_null"]) for r in rows)
    # the saved null is the one the study's own p-values came from
    tests = pq.read_table(study / "tests.parquet").to_pylist()
    for t in tests:
        null = next(np.array(r["test_null"], dtype=np.float32) for r in rows
                    if (r["roi_1"], r["roi_2"]) == (t["roi_1"], t["roi_2"]) and r["heldout_subject"] == t["subject"])
        direction = "greater" if t["condition"] == "align" else "less"
        diff = difference_null(null, t["condition"], 500)
        assert permutation_p_value(diff, t["difference"], direction) == pytest.approx(t["p_value"])


def test_distance_gradient_is_recovered_for_align_and_baseline(chain):
    summary = json.loads((chain / "cd" / "summary.json").read_text())
    assert summary["kind"] == "multivariate" and summary["heldout_subjects"] == list(SUBJECTS)
    assert summary["parameters"]["permutations"] == PERMUTATIONS
    assert list(summary["conditions"]) == ["align", "disentangle", "baseline"]
    trend = pq.read_table(chain / "cd" / "statistics.parquet").to_pylist()
    for condition in ("align", "baseline"):
        stats = summary["conditions"][condition]
        g = stats["groups"]
        assert g["d1"]["mean"] > g["d2"]["mean"] > g["d3"]["mean"]
        assert stats["statistic"]["ci"][0] > 0
        rows = [t for t in trend if t["condition"] == condition]
        # six pairs: the null reaches T this large only when V1-hV4's null lands in d3 and the three
        # largest in d1 (about 1 in 60 shuffles), so p cannot go much below 1/60
        assert all(1 / 60 - 0.01 <= t["p_value"] <= (0.03 if condition == "baseline" else 0.15) for t in rows)
        assert all(t["statistic"] > t["null_mean"] + t["null_sd"] for t in rows)
        k = sum(t["significant"] for t in rows)
        assert stats["n_significant"] == k
        assert stats["binomial_p"] == pytest.approx(binomial_tail(k, len(SUBJECTS), 0.05))
    # V1 and hV4 share no geometry: random batches score about 0 there
    assert summary["conditions"]["baseline"]["groups"]["d3"]["mean"] == pytest.approx(0, abs=0.15)
    # aligning helps most where geometry is shared
    assert summary["conditions"]["align"]["groups"]["d1"]["mean"] > summary["conditions"]["baseline"]["groups"]["d1"]["mean"]


def test_group_values_match_the_study_scores(chain):
    tests = pq.read_table(chain / "study" / "multivariate" / "tests.parquet").to_pylist()
    groups = pq.read_table(chain / "cd" / "groups.parquet").to_pylist()
    trend = pq.read_table(chain / "cd" / "statistics.parquet").to_pylist()
    for subject in SUBJECTS:
        for condition in ("align", "disentangle", "baseline"):
            field, source = ("baseline_score", "align") if condition == "baseline" else ("score", condition)
            score = {(t["roi_1"], t["roi_2"]): t[field] for t in tests
                     if t["subject"] == subject and t["condition"] == source}
            means = [np.mean([score[p] for p in members]) for _, members in DISTANCE.groups]
            written = sorted((g for g in groups if g["subject"] == subject and g["condition"] == condition),
                             key=lambda g: g["position"])
            assert [g["value"] for g in written] == pytest.approx(means)
            row = next(t for t in trend if t["subject"] == subject and t["condition"] == condition)
            assert row["statistic"] == pytest.approx(means[0] - means[2])
            assert row["n_permutations"] == PERMUTATIONS


def test_outputs_and_figure(chain):
    summary = json.loads((chain / "cd" / "summary.json").read_text())
    names = {f.rsplit("/", 1)[-1] for f in summary["files"]}
    assert {"pair_scores.parquet", "groups.parquet", "statistics.parquet", "summary.json",
            "cortical-distance-multivariate.png", "cortical-distance-multivariate.svg"} <= names
    assert (chain / "cd" / "cortical-distance-multivariate.png").read_bytes()[:4] == b"\x89PNG"


def test_independent_rois_show_no_ordering(tmp_path):
    rois = ("EBA", "FFA", "PPA", "RSC")
    rng = np.random.default_rng(5)
    patterns, ncsnr, means = {}, {}, {}
    for s in SUBJECTS:
        for roi in rois:
            y = rng.standard_normal((N_IMAGES, 12))
            column = response_column(MODEL, s, roi)
            patterns[column], ncsnr[column] = y, np.ones(12)
            means[mean_column(MODEL, s, roi)] = y.mean(axis=1)
    write_synthetic_output(str(tmp_path / "out"), means, patterns, ncsnr, n_shards=2)
    run_study(tmp_path / "out", tmp_path / "study", rois)
    assert run_followup("categorical-selectivity", tmp_path / "study", tmp_path / "cs", "--kind", "multivariate") == 0
    summary = json.loads((tmp_path / "cs" / "summary.json").read_text())
    for stats in summary["conditions"].values():
        assert stats["n_significant"] <= 1
        assert stats["statistic"]["ci"][0] < 0.05 and stats["statistic"]["ci"][1] > -0.05


def test_shuffled_null_uses_the_three_slices_and_one_permutation_per_iteration():
    n, n_pairs = 5000, 6
    slice_of_column = np.arange(3 * n) // n  # 0 baseline, 1 align, 2 disentangle
    nulls = (np.arange(n_pairs)[:, None] * (1 + slice_of_column)[None, :]).astype(np.float32)
    membership = [[0, 1, 2], [3, 4], [5]]
    out = shuffled_null_statistics(np.random.default_rng(0), nulls, n, membership,
                                   ("baseline", "align", "disentangle"))
    assert out.shape == (n, 3)
    np.testing.assert_allclose(out[:, 1], 2 * out[:, 0])
    np.testing.assert_allclose(out[:, 2], 3 * out[:, 0])
    exact = np.array([group_statistic(group_means(np.array(p, dtype=float), membership))
                      for p in itertools.permutations(range(n_pairs))])
    assert out[:, 0].mean() == pytest.approx(exact.mean(), abs=0.1)
    top = exact.max()
    assert np.mean(np.isclose(out[:, 0], top)) == pytest.approx(np.mean(np.isclose(exact, top)), abs=0.01)


def test_study_without_saved_nulls_is_refused(chain, tmp_path, capsys):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(chain / "study", copy)
    (copy / "multivariate" / "nulls.parquet").unlink()
    assert run_followup("cortical-distance", copy, tmp_path / "cd", "--kind", "multivariate") != 0
    err = capsys.readouterr().err
    assert "nulls.parquet" in err and "rnc multivariate" in err
