"""Cortical distance and categorical selectivity: planted ROI geometry is recovered.

Responses are laid out in the engine's format, a cross-validated univariate RNC study runs
over them (`berg-scale rnc univariate`, small sample counts) and the follow-up commands read
that study. Expected effects are planted in the responses' structure:

- cortical distance: ROI r responds to cos(30 r) a(i) + sin(30 r) b(i), so neighbouring
  areas share most of their signal and V1 and hV4 none (r = cos 30, cos 60, cos 90 by distance);
- categorical selectivity: EBA and FFA share one signal, PPA and RSC another;
- a control with independent ROIs, where no ordering exists.

Scores are recomputed here from the written arrays and the study's image tables.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main
from berg_scale.experiments import roi_groups
from berg_scale.experiments.cortical_distance import GROUPING as DISTANCE
from berg_scale.rnc.responses import mean_column
from berg_scale.rnc.stats import binomial_tail
from berg_scale.rnc.synthetic import write_synthetic_output

MODEL = "fmri-nsd-fwrf"
SUBJECTS = (1, 2, 3)
N_IMAGES = 900
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_responses(root, rois, signal, seed=0, noise=0.1):
    """u[s, r](i) = signal[i, r] + subject noise; returns the (N, S, R) array as written."""
    rng = np.random.default_rng(seed)
    u = signal[:, None, :] + noise * rng.standard_normal((signal.shape[0], len(SUBJECTS), len(rois)))
    columns = {mean_column(MODEL, s, roi): u[:, si, ri] for si, s in enumerate(SUBJECTS) for ri, roi in enumerate(rois)}
    write_synthetic_output(str(root), columns, n_shards=3)
    return u.astype(np.float32)


def run_study(responses, out, rois):
    code = main(["rnc", "univariate", "--responses", str(responses), "--out", str(out),
                 "--subjects", *map(str, SUBJECTS), "--rois", *rois, "--baseline-batches", "1000",
                 "--permutations", "20", "--bootstrap", "20", "--no-plots"])
    assert code == 0


def run_followup(name, study, out, *extra):
    return main(["experiment", name, "--study", str(study), "--out", str(out), "--permutations", "1000",
                 "--correlation-permutations", "100", "--bootstrap", "500", *extra])


def chain_signal(n, seed=1):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, n))
    angles = np.deg2rad(30 * np.arange(4))
    return np.column_stack([np.cos(t) * a + np.sin(t) * b for t in angles])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    u = write_responses(root / "out", DISTANCE.rois, chain_signal(N_IMAGES))
    run_study(root / "out", root / "study", DISTANCE.rois)
    assert run_followup("cortical-distance", root / "study", root / "cd") == 0
    return root, u


def test_cortical_distance_recovers_the_planted_gradient(chain):
    root, _ = chain
    summary = json.loads((root / "cd" / "summary.json").read_text())
    assert summary["heldout_subjects"] == list(SUBJECTS)
    all_significant = binomial_tail(len(SUBJECTS), len(SUBJECTS), 0.05)
    for condition in ("high1-high2", "low1-low2"):  # aligning: weaker with distance
        stats = summary["conditions"][condition]
        g = stats["groups"]
        assert g["d1"]["mean"] > g["d2"]["mean"] > g["d3"]["mean"]
        assert stats["statistic"]["ci"][0] > 0
        assert stats["n_significant"] == len(SUBJECTS) and stats["binomial_p"] == pytest.approx(all_significant)
    for condition in ("high1-low2", "low1-high2"):  # disentangling: stronger with distance
        stats = summary["conditions"][condition]
        g = stats["groups"]
        assert g["d1"]["mean"] < g["d2"]["mean"] < g["d3"]["mean"]
        assert stats["statistic"]["ci"][1] < 0
        assert stats["n_significant"] == len(SUBJECTS)
    corr = summary["correlation"]["groups"]
    # planted r = cos 30, cos 60, cos 90 (shrunk slightly by the subject noise)
    for group, planted in (("d1", math.cos(math.pi / 6)), ("d2", 0.5), ("d3", 0.0)):
        assert corr[group]["mean"] == pytest.approx(planted, abs=0.06)
    assert summary["correlation"]["n_significant"] == len(SUBJECTS)
    stats = pq.read_table(root / "cd" / "statistics.parquet").to_pylist()
    for row in stats:
        assert row["p_value"] == pytest.approx(1 / 1001 if row["measure"] == "score" else 1 / 101)
        assert abs(row["null_mean"]) < abs(row["statistic"])


def test_scores_match_a_direct_recomputation(chain):
    """|u(ctrl) - mean u(baseline)| from the written arrays and the study's image tables."""
    root, u = chain
    controlling = pq.read_table(root / "study" / "univariate" / "controlling.parquet").to_pylist()
    baselines = pq.read_table(root / "study" / "univariate" / "baselines.parquet").to_pylist()
    pair_rows = pq.read_table(root / "cd" / "pair_scores.parquet").to_pylist()
    groups = pq.read_table(root / "cd" / "groups.parquet").to_pylist()
    trend = pq.read_table(root / "cd" / "statistics.parquet").to_pylist()
    roi_slot = {r: i for i, r in enumerate(DISTANCE.rois)}
    checked = 0
    for subject in SUBJECTS:
        s = SUBJECTS.index(subject)
        base = {r: np.mean([u[b["image"], s, roi_slot[r]] for b in baselines
                            if b["roi"] == r and b["heldout_subject"] == subject]) for r in DISTANCE.rois}
        for condition in ("high1-high2", "high1-low2"):
            scores = {}
            for a, b in DISTANCE.pairs:
                images = [c["image"] for c in controlling if (c["roi_1"], c["roi_2"]) == (a, b)
                          and c["condition"] == condition and c["heldout_subject"] == subject]
                assert len(images) == 25
                expected = [np.mean(np.abs(u[images, s, roi_slot[r]] - base[r])) for r in (a, b)]
                row = next(p for p in pair_rows if p["subject"] == subject and p["condition"] == condition
                           and (p["roi_1"], p["roi_2"]) == (a, b))
                assert [row["score_roi_1"], row["score_roi_2"]] == pytest.approx(expected, rel=1e-5)
                scores[(a, b)] = np.mean(expected)
                checked += 1
            means = [np.mean([scores[p] for p in pairs]) for _, pairs in DISTANCE.groups]
            written = sorted((g for g in groups if g["measure"] == "score" and g["subject"] == subject
                              and g["condition"] == condition), key=lambda g: g["position"])
            assert [g["value"] for g in written] == pytest.approx(means, rel=1e-5)
            statistic = next(t["statistic"] for t in trend if t["subject"] == subject and t["condition"] == condition)
            assert statistic == pytest.approx((means[0] - means[1]) + (means[1] - means[2]), rel=1e-5)
    assert checked == 2 * 6 * len(SUBJECTS)
    correlations = pq.read_table(root / "cd" / "correlations.parquet").to_pylist()
    row = next(c for c in correlations if c["subject"] == 2 and (c["roi_1"], c["roi_2"]) == ("V2", "hV4"))
    assert row["pearson_r"] == pytest.approx(np.corrcoef(u[:, 1, 1], u[:, 1, 3])[0, 1], rel=1e-5)


def test_outputs_and_figure_files(chain):
    root, _ = chain
    out = root / "cd"
    for name in ("pair_scores", "groups", "statistics", "correlations"):
        assert pq.read_table(out / f"{name}.parquet").num_rows > 0
    assert (out / "cortical-distance.png").read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in (out / "cortical-distance.svg").read_bytes()[:400]
    files = json.loads((out / "summary.json").read_text())["files"]
    assert any(f.endswith("cortical-distance.svg") for f in files)


def _set_shard_commits(study, responses=None):
    """Record in a study's summary.json each shard's commit (run and time) of `responses`,
    as an RNC study records the responses it read; without `responses`, drop the record
    (a study written before it existed)."""
    summary_path = study / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.pop("shard_commits", None)
    if responses is not None:
        summary["responses"] = str(responses)
        commits = {}
        for marker_path in sorted((responses / "_done").glob("*.json")):
            marker = json.loads(marker_path.read_text())
            commits[marker["shard"]] = {"run_id": marker.get("run_id"), "committed_at": marker["committed_at"]}
        summary["shard_commits"] = commits
    summary_path.write_text(json.dumps(summary))


def quick_followup(name, study, out, *extra):
    return main(["experiment", name, "--study", str(study), "--out", str(out), "--permutations", "50",
                 "--correlation-permutations", "10", "--bootstrap", "50", *extra])


def test_responses_committed_again_after_the_study_are_refused(chain, tmp_path, capsys):
    root, _ = chain
    study, older = tmp_path / "study", tmp_path / "older"
    shutil.copytree(root / "study", study)
    shutil.copytree(root / "study", older)
    _set_shard_commits(study, root / "out")
    _set_shard_commits(older)
    regenerated = tmp_path / "regenerated"
    shutil.copytree(root / "out", regenerated)
    # the same images and keys, responses of other weights: only the commits tell them apart
    write_responses(regenerated, DISTANCE.rois, chain_signal(N_IMAGES, seed=9), seed=4)
    assert quick_followup("cortical-distance", study, tmp_path / "same", "--responses", str(root / "out"),
                          "--no-figures") == 0
    capsys.readouterr()
    assert quick_followup("cortical-distance", study, tmp_path / "cd", "--responses", str(regenerated)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"responses {regenerated} are not the output study" in err and f"point --responses at {root / 'out'}" in err
    assert not (tmp_path / "cd").exists()
    # the output the study read, regenerated in place
    in_place = tmp_path / "in_place"
    shutil.copytree(root / "out", in_place)
    _set_shard_commits(study, in_place)
    write_responses(in_place, DISTANCE.rois, chain_signal(N_IMAGES, seed=9), seed=4)
    assert quick_followup("cortical-distance", study, tmp_path / "cd", "--responses", str(in_place)) == 2
    err = capsys.readouterr().err.strip()
    assert "shard 000000 was committed again after study" in err
    assert "rerun the RNC study on the new responses, or point --responses at the original output" in err
    # a study without the record keeps the key check alone, which a regeneration passes
    assert quick_followup("cortical-distance", older, tmp_path / "old", "--responses", str(regenerated),
                          "--no-figures") == 0


def test_a_rerun_without_figures_removes_the_earlier_figures(chain, tmp_path, capsys):
    root, _ = chain
    out = tmp_path / "cd"
    shutil.copytree(root / "cd", out)
    (out / "my-notes.txt").write_text("kept")
    capsys.readouterr()
    assert quick_followup("cortical-distance", root / "study", out, "--no-plots") == 0
    console = capsys.readouterr().out
    assert "removed 2 files of an earlier cortical-distance run that this run does not write: " \
           "cortical-distance.png, cortical-distance.svg" in console
    assert sorted(p.name for p in out.iterdir()) == ["correlations.parquet", "groups.parquet", "my-notes.txt",
                                                     "pair_scores.parquet", "statistics.parquet", "summary.json"]
    files = json.loads((out / "summary.json").read_text())["files"]
    assert not any(f.endswith((".png", ".svg")) for f in files)


def test_independent_rois_show_no_gradient(tmp_path):
    rng = np.random.default_rng(5)
    write_responses(tmp_path / "out", DISTANCE.rois, rng.standard_normal((N_IMAGES, 4)), seed=6)
    run_study(tmp_path / "out", tmp_path / "study", DISTANCE.rois)
    assert run_followup("cortical-distance", tmp_path / "study", tmp_path / "cd", "--no-figures") == 0
    summary = json.loads((tmp_path / "cd" / "summary.json").read_text())
    significant = [summary["conditions"][c]["n_significant"] for c in summary["conditions"]]
    assert sum(significant) <= 2, significant  # of 4 conditions x 3 subjects
    assert summary["correlation"]["n_significant"] <= 1
    assert all(abs(v["mean"]) < 0.1 for v in summary["correlation"]["groups"].values())
    assert not (tmp_path / "cd" / "cortical-distance.png").exists()


def test_categorical_selectivity_in_either_pair_orientation(tmp_path):
    rois = ("EBA", "FFA", "PPA", "RSC")
    rng = np.random.default_rng(2)
    body, place = rng.standard_normal((2, N_IMAGES))
    own = rng.standard_normal((N_IMAGES, 4))
    shared = np.column_stack([body, body, place, place])
    write_responses(tmp_path / "out", rois, math.sqrt(0.8) * shared + math.sqrt(0.2) * own, seed=3)
    run_study(tmp_path / "out", tmp_path / "study", rois)
    run_study(tmp_path / "out", tmp_path / "reversed", rois[::-1])  # pairs RSC-PPA, ..., FFA-EBA
    assert run_followup("categorical-selectivity", tmp_path / "study", tmp_path / "cs") == 0
    assert run_followup("categorical-selectivity", tmp_path / "reversed", tmp_path / "cs-rev", "--no-figures") == 0
    summary = json.loads((tmp_path / "cs" / "summary.json").read_text())
    for condition, stats in summary["conditions"].items():
        same, different = stats["groups"]["same category"]["mean"], stats["groups"]["different category"]["mean"]
        if condition in ("high1-high2", "low1-low2"):
            assert same > different and stats["statistic"]["ci"][0] > 0
        else:
            assert same < different and stats["statistic"]["ci"][1] < 0
        assert stats["n_significant"] == len(SUBJECTS)
    corr = summary["correlation"]["groups"]
    assert corr["same category"]["mean"] == pytest.approx(0.8, abs=0.07)
    assert abs(corr["different category"]["mean"]) < 0.07
    forward = pq.read_table(tmp_path / "cs" / "pair_scores.parquet").to_pylist()
    turned = pq.read_table(tmp_path / "cs-rev" / "pair_scores.parquet").to_pylist()
    key = lambda r: (r["subject"], r["condition"], r["roi_1"], r["roi_2"])
    assert {key(r) for r in turned} == {key(r) for r in forward}
    by_key = {key(r): r for r in forward}
    for row in turned:  # the same controlling sets, read in the grouping's order
        assert row["score_roi_1"] == pytest.approx(by_key[key(row)]["score_roi_1"], rel=1e-6)
        assert row["score_roi_2"] == pytest.approx(by_key[key(row)]["score_roi_2"], rel=1e-6)
    assert (tmp_path / "cs" / "categorical-selectivity.png").read_bytes()[:8] == PNG_MAGIC


def test_permuted_blocks_reassign_every_image_uniformly():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((6, 4))
    blocks = list(roi_groups.permuted_blocks(np.random.default_rng(1), values, 12_000, chunk_elements=6 * 4 * 500))
    assert sum(b.shape[0] for b in blocks) == 12_000 and len(blocks) > 1
    stacked = np.concatenate(blocks)
    assert np.array_equal(np.sort(stacked, axis=2), np.broadcast_to(np.sort(values, axis=1), stacked.shape))
    # each ROI slot receives each of the image's 4 responses a quarter of the time
    share = (stacked[:, :, 0] == values[None, :, 0]).mean(axis=0)
    assert np.allclose(share, 0.25, atol=0.02)
    # images are permuted independently of each other
    same = (stacked[:, 0, 0] == values[0, 0]) & (stacked[:, 1, 0] == values[1, 0])
    assert same.mean() == pytest.approx(1 / 16, abs=0.01)
    large = list(roi_groups.permuted_blocks(np.random.default_rng(1), values, 10, chunk_elements=10**6))
    np.testing.assert_array_equal(np.sort(large[0], axis=2)[0], np.sort(values, axis=1))


def test_missing_roi_and_bad_study_are_one_line_errors(tmp_path, capsys):
    write_responses(tmp_path / "out", DISTANCE.rois[:3], chain_signal(300)[:, :3])
    run_study(tmp_path / "out", tmp_path / "study", DISTANCE.rois[:3])
    capsys.readouterr()
    assert run_followup("cortical-distance", tmp_path / "study", tmp_path / "cd") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ROI hV4" in err and "berg-scale rnc univariate --rois V1 V2 V3 hV4" in err
    assert run_followup("categorical-selectivity", tmp_path / "out", tmp_path / "cs") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no summary.json" in err
    code = main(["rnc", "univariate", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "nocv"),
                 "--subjects", "1", "2", "--rois", "V1", "V2", "V3", "--baseline-batches", "200", "--no-cv",
                 "--no-plots"])
    assert code == 0
    capsys.readouterr()
    grouping = roi_groups.PairGrouping("three", "t", ("V1", "V2", "V3"),
                                       (("near", (("V1", "V2"), ("V2", "V3"))), ("far", (("V1", "V3"),))), "x", "near − far")
    with pytest.raises(roi_groups.RoiGroupsError, match="no held-out folds"):
        roi_groups.read_study(str(tmp_path / "nocv"), grouping)


def test_help_lists_the_follow_ups(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    listed = capsys.readouterr().out
    for name in ("cortical-distance", "categorical-selectivity", "roi-mds"):
        assert name in listed


def test_follow_up_help_takes_univariate_and_multivariate_studies(capsys):
    for name in ("cortical-distance", "categorical-selectivity"):
        with pytest.raises(SystemExit):
            main(["experiment", name, "--help"])
        text = capsys.readouterr().out
        assert "univariate or multivariate RNC" in text and "--no-figures, --no-plots" in text


def test_a_pair_without_controlling_images_is_left_out_of_its_group():
    block = np.arange(40, dtype=np.float64).reshape(1, 10, 4) / 10
    sets = roi_groups.SubjectSets(1, np.arange(10), tuple(np.array([0, 1]) for _ in range(4)),
                                  {("high1-high2", 0): np.array([5, 6]), ("high1-high2", 1): np.array([7])})
    pairs = [(0, 1), (1, 2), (0, 2)]
    scores = roi_groups.pair_scores(block, sets, pairs)
    base = block[0, [0, 1], :].mean(axis=0)
    expected = [abs(block[0, [5, 6], 0] - base[0]).mean(), abs(block[0, [5, 6], 1] - base[1]).mean()]
    assert scores[0, 0, 0] == pytest.approx(expected)
    assert np.isnan(scores[0, 0, 2]).all() and np.isnan(scores[0, 1]).all()  # no images: undefined
    groups = roi_groups.group_means(scores.mean(axis=-1), [[0, 1], [2]])
    assert groups[0, 0, 0] == pytest.approx(scores[0, 0, :2].mean())  # over the two defined pairs
    assert np.isnan(groups[0, 0, 1]) and np.isnan(roi_groups.group_statistic(groups[0, 0]))


def test_means_over_fewer_subjects_say_how_many():
    import numpy as np

    from berg_scale.experiments import roi_groups

    # three subjects; the third group (and so the statistic) is defined for one subject only
    table = np.array([[0.5, 0.4, np.nan, np.nan], [0.6, 0.3, np.nan, np.nan], [0.5, 0.4, 0.7, -0.2]])
    trend_rows = [{"subject": s, "significant": False, "p_value": 0.5} for s in (1, 2, 3)]
    stats = roi_groups._across_subjects(table, ["d1", "d2", "d3"], trend_rows, 20, 0.05,
                                        np.random.default_rng(0), "greater")
    assert [v["n_subjects"] for v in stats["groups"].values()] == [3, 3, 1]
    assert stats["statistic"]["n_subjects"] == 1
    assert roi_groups._subjects_behind(stats["groups"]["d1"], 3) == ""
    assert roi_groups._subjects_behind(stats["groups"]["d3"], 3) == " (n=1)"
    assert roi_groups._some_means_partial({"conditions": {"c": stats}, "correlation": stats}, 3)
