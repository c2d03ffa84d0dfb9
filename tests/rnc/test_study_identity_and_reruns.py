"""A study's record of the responses it read, reruns into one out_dir, and unfinished outputs.

summary.json names every shard's commit, so a study is tied to the responses its images
were chosen on; a second analysis written into the same out_dir keeps the first one's
entry only while it still describes those responses and files; stale files of an earlier
run go; and an output that is still being written is studied with a warning, not silently.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main as cli_main
from berg_scale.io.output_store import (
    OutputStore, done_shards, read_done_marker, read_done_markers, write_done_marker, write_manifest,
)
from berg_scale.rnc.config import StudyConfig, parse_config
from berg_scale.rnc.responses import ResponsesError, mean_column, response_column
from berg_scale.rnc.study import run_study
from berg_scale.rnc.synthetic import shard_name, write_synthetic_output

from rnc_planted import MODEL

FAST_UNIVARIATE = {"baseline_batches": 400, "n_bootstrap": 50, "n_permutations": 50, "baseline_batch_size": 10,
                   "n_images": 5}
FAST_MULTIVARIATE = {"enabled": True, "population": 10, "generations": 2, "baseline_batches": 300,
                     "n_bootstrap": 50, "n_permutations": 50, "batch_size": 10, "log_every": 10}
ROIS = ("V1", "V2", "hV4")


def _output(root: Path, n: int = 120, subjects=(1, 2, 3), n_shards: int = 3) -> str:
    """ROI means and voxel patterns of three ROIs, sharing a latent so that pairs correlate."""
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(n, 4))
    means, voxels, ncsnr = {}, {}, {}
    for s in subjects:
        for roi in ROIS:
            y = shared @ rng.normal(size=(4, 8)) + rng.normal(size=(n, 8))
            nc = np.linspace(0.3, 1.0, 8)
            column = response_column(MODEL, s, roi)
            voxels[column], ncsnr[column] = y, nc
            means[mean_column(MODEL, s, roi)] = y[:, nc > 0.5].mean(axis=1)
    write_synthetic_output(str(root), means, voxels, ncsnr, n_shards=n_shards)
    return str(root)


def _study(url: str, out: Path, analysis: str, **settings) -> StudyConfig:
    data: dict = {"responses": url, "out_dir": str(out), "rois": ["V1", "hV4"], "plots": {"enabled": False},
                  "univariate": dict(FAST_UNIVARIATE, enabled=analysis == "univariate"),
                  "multivariate": dict(FAST_MULTIVARIATE, enabled=analysis == "multivariate")}
    data.update(settings)
    return parse_config(data, "test study")


def _recommit(url: str, run_id: str) -> None:
    """Rewrite every marker as a new generate run would (same shard names, new commits)."""
    store = OutputStore(url)
    for shard in done_shards(store):
        marker = read_done_marker(store, shard) or {}
        write_done_marker(store, shard, {**marker, "run_id": run_id})


# -- 1. the study records which commits it read ---------------------------------------------
def test_summary_records_every_shards_commit_marker(tmp_path):
    url = _output(tmp_path / "out")
    _recommit(url, "20260301T101500-1a2b3c4d")
    summary = run_study(_study(url, tmp_path / "rnc", "univariate"), lambda m: None)
    markers = read_done_markers(OutputStore(url), summary["shards"])
    expected = {name: {"run_id": "20260301T101500-1a2b3c4d", "committed_at": markers[name]["committed_at"]}
                for name in summary["shards"]}
    assert summary["shard_commits"] == expected and len(expected) == 3
    written = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    assert written["shard_commits"] == expected


# -- 2. reruns into one out_dir ---------------------------------------------------------------
def test_multivariate_after_univariate_keeps_the_univariate_entry(tmp_path):
    url = _output(tmp_path / "out")
    out = tmp_path / "rnc"
    run_study(_study(url, out, "univariate"), lambda m: None)
    before = json.loads((out / "summary.json").read_text())["univariate"]
    lines: list[str] = []
    run_study(_study(url, out, "multivariate"), lines.append)
    written = json.loads((out / "summary.json").read_text())
    assert written["univariate"] == before and "multivariate" in written
    assert written["config"]["univariate"]["enabled"] is True  # the section that made the kept results
    assert str(out / "univariate" / "controlling.parquet") in written["outputs"]
    assert str(out / "multivariate" / "controlling.parquet") in written["outputs"]
    assert [line for line in lines if "earlier univariate" in line] == [
        "univariate: the earlier univariate results stay in summary.json (same responses and shard commits)"]


@pytest.mark.parametrize("change, reason", [
    ("regenerate", "the responses have been regenerated since"),
    ("remove files", "their files are gone (controlling.parquet"),
    ("other subjects", "they were made with subjects [1, 2, 3] and this run uses [1, 2]"),
])
def test_an_entry_that_no_longer_matches_is_dropped_with_one_line(tmp_path, change, reason):
    url = _output(tmp_path / "out")
    out = tmp_path / "rnc"
    run_study(_study(url, out, "univariate"), lambda m: None)
    settings: dict = {}
    if change == "regenerate":
        _recommit(url, "another-run")
    elif change == "remove files":
        (out / "univariate" / "controlling.parquet").unlink()
    else:
        settings["subjects"] = [1, 2]
    lines: list[str] = []
    summary = run_study(_study(url, out, "multivariate", **settings), lines.append)
    assert "univariate" not in summary
    assert "univariate" not in json.loads((out / "summary.json").read_text())
    dropped = [line for line in lines if "earlier univariate" in line]
    assert len(dropped) == 1 and "left out of summary.json because" in dropped[0] and reason in dropped[0]


def test_a_rerun_removes_its_stale_figures_and_nothing_else(tmp_path):
    url = _output(tmp_path / "out")
    out = tmp_path / "rnc"
    with_plots = {"rois": list(ROIS), "plots": {"enabled": True, "formats": ["png"]}}
    summary = run_study(_study(url, out, "univariate", **with_plots), lambda m: None)
    figures = sorted(p.name for p in (out / "univariate").glob("*.png"))
    assert figures == ["scatter_V1-V2.png", "scatter_V1-hV4.png", "scatter_V2-hV4.png"]
    assert all(str(out / "univariate" / name) in summary["outputs"] for name in figures)
    (out / "univariate" / "notes.txt").write_text("mine")
    (out / "univariate" / "my-figure.png").write_bytes(b"mine")
    lines: list[str] = []
    run_study(_study(url, out, "univariate", rois=["V1", "hV4"], plots={"enabled": False}), lines.append)
    left = sorted(p.name for p in (out / "univariate").iterdir())
    assert left == ["baselines.parquet", "controlling.parquet", "correlations.parquet", "excluded.parquet",
                    "my-figure.png", "notes.txt", "tests.parquet"]
    removed = [line for line in lines if "stale file" in line]
    assert len(removed) == 1 and removed[0].startswith("univariate: removed 3 stale file(s)")


# -- 3, 4. outputs that are not finished, and markers without their response file ---------------
def _warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("warning:")]


def test_no_warning_for_a_finished_output(tmp_path):
    url = _output(tmp_path / "out")
    write_manifest(OutputStore(url), {"status": "complete", "input_shards": [shard_name(j) for j in range(3)]})
    lines: list[str] = []
    run_study(_study(url, tmp_path / "rnc", "univariate"), lines.append)
    assert _warnings(lines) == []


def test_an_output_being_written_is_studied_with_one_warning(tmp_path):
    url = _output(tmp_path / "out")
    store = OutputStore(url)
    write_manifest(store, {"status": "running", "input_shards": [shard_name(j) for j in range(5)]})
    lease = {"run_id": "20260301T101500-1a2b3c4d", "host": socket.gethostname(), "pid": os.getpid(),
             "renewed_at": time.time(), "started_at": time.time(), "ttl_s": 120}
    (Path(url) / "_lease.json").write_text(json.dumps(lease))
    lines: list[str] = []
    summary = run_study(_study(url, tmp_path / "rnc", "univariate"), lines.append)
    assert _warnings(lines) == [
        f"warning: {url} is not finished (3 of 5 shards committed; a generate run holds it (run "
        "20260301T101500-1a2b3c4d)): results cover the committed shards only"]
    assert summary["n_images"] == 120  # studied, not refused


def test_a_stopped_run_and_missing_listed_shards_are_named(tmp_path):
    url = _output(tmp_path / "out")
    write_manifest(OutputStore(url), {"status": "running", "input_shards": [shard_name(j) for j in range(4)]})
    lines: list[str] = []
    run_study(_study(url, tmp_path / "rnc", "univariate"), lines.append)
    (warning,) = _warnings(lines)
    assert "(3 of 4 shards committed; its last generate run stopped before finishing" in warning


def test_a_marker_without_its_response_file_is_left_out_and_named(tmp_path):
    url = _output(tmp_path / "out")
    (Path(url) / "responses" / f"{shard_name(1)}.parquet").unlink()
    lines: list[str] = []
    summary = run_study(_study(url, tmp_path / "rnc", "univariate"), lines.append)
    (warning,) = _warnings(lines)
    assert f"the response file of 1 marked shard(s) is missing ({shard_name(1)}; rerunning `berg-scale " \
           "generate` regenerates it)" in warning and "2 of 3 shards committed" in warning
    assert summary["shards"] == [shard_name(0), shard_name(2)] and summary["n_images"] == 80
    assert sorted(summary["shard_commits"]) == summary["shards"]
    assert "does not exist" not in warning


def test_markers_without_any_response_file_are_one_line_naming_generate(tmp_path, capsys):
    url = _output(tmp_path / "out")
    for j in range(3):
        (Path(url) / "responses" / f"{shard_name(j)}.parquet").unlink()
    code = cli_main(["rnc", "univariate", "--responses", url, "--out", str(tmp_path / "rnc"), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "3 commit marker(s) but not one response file" in err and "rerun `berg-scale generate`" in err


# -- 7. messages -------------------------------------------------------------------------------
def test_a_chosen_subject_the_output_lacks_is_named_with_those_it_has(tmp_path):
    url = _output(tmp_path / "out", subjects=(1, 2))
    with pytest.raises(ResponsesError) as info:
        run_study(_study(url, tmp_path / "rnc", "univariate", subjects=[3]), lambda m: None)
    message = str(info.value)
    assert message.startswith("subject 3 is not in") and "has subjects 1, 2" in message
    assert "--subjects" in message and "V1v" not in message


def test_a_pair_outside_rois_is_one_line_naming_the_roi(tmp_path, capsys):
    url = _output(tmp_path / "out")
    code = cli_main(["rnc", "univariate", "--responses", url, "--out", str(tmp_path / "rnc"),
                     "--rois", "V1", "V2", "--pair", "V1", "hV4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "pair V1 hV4 (--pair) names hV4, which rois (--rois V1 V2) does not list" in err
    assert "{" not in err and "out_dir" not in err  # no dump of the study


def test_a_missing_images_folder_is_one_line_before_the_study_runs(tmp_path, capsys):
    url = _output(tmp_path / "out")
    code = cli_main(["rnc", "univariate", "--responses", url, "--out", str(tmp_path / "rnc"),
                     "--images", str(tmp_path / "nonexistent"), "--baseline-batches", "400"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.count("does not exist") == 1
    assert f"plots.images (--images): {tmp_path / 'nonexistent'} does not exist" in err
    assert not (tmp_path / "rnc").exists()


def test_the_config_comments_cite_sections_that_exist():
    repo = Path(__file__).resolve().parents[2]
    headings = (repo / "docs" / "rnc.md").read_text()
    for config in sorted((repo / "configs").glob("rnc_*.yaml")):
        text = config.read_text()
        for number in __import__("re").findall(r"rnc\.md,? section (\d+)", text):
            assert f"## {number}" in headings or f"### {number}" in headings, f"{config.name}: section {number}"


# -- 8. tables: fixed columns and types ---------------------------------------------------------
def test_a_study_without_held_out_folds_writes_typed_empty_tables(tmp_path):
    from berg_scale.rnc.outputs import MULTIVARIATE_TESTS_SCHEMA, UNIVARIATE_TESTS_SCHEMA

    url = _output(tmp_path / "out", subjects=(1,))
    out = tmp_path / "rnc"
    run_study(_study(url, out, "univariate", multivariate=dict(FAST_MULTIVARIATE)), lambda m: None)
    tests = pq.read_table(out / "univariate" / "tests.parquet")
    assert tests.num_rows == 0 and tests.schema.names == UNIVARIATE_TESTS_SCHEMA.names
    multi_tests = pq.read_table(out / "multivariate" / "tests.parquet")
    assert multi_tests.num_rows == 0 and multi_tests.schema.names == MULTIVARIATE_TESTS_SCHEMA.names
    for name in ("univariate/controlling", "univariate/baselines", "multivariate/controlling",
                 "multivariate/baselines", "multivariate/generations", "multivariate/nulls"):
        schema = pq.read_schema(out / f"{name}.parquet")
        assert str(schema.field("heldout_subject").type) == "int64", name


def test_heldout_subject_is_a_nullable_integer_in_every_table(tmp_path):
    url = _output(tmp_path / "out", subjects=(1, 2))
    out = tmp_path / "rnc"
    run_study(_study(url, out, "univariate", multivariate=dict(FAST_MULTIVARIATE)), lambda m: None)
    for name in ("univariate/controlling", "univariate/baselines", "multivariate/controlling",
                 "multivariate/baselines", "multivariate/generations", "multivariate/nulls"):
        table = pq.read_table(out / f"{name}.parquet")
        assert str(table.schema.field("heldout_subject").type) == "int64", name
        values = set(table.column("heldout_subject").to_pylist())
        assert values <= {None, 1, 2} and {1, 2} <= values, name
    assert None in set(pq.read_table(out / "univariate" / "controlling.parquet")
                       .column("heldout_subject").to_pylist())


def test_rows_with_a_column_the_schema_lacks_are_refused():
    from berg_scale.rnc.outputs import CORRELATIONS_SCHEMA, rows_table

    with pytest.raises(ValueError, match="lacks: extra"):
        rows_table([{"roi_1": "V1", "roi_2": "hV4", "subject": 1, "pearson_r": 0.5, "n_images": 9, "extra": 1}],
                   CORRELATIONS_SCHEMA)


def test_too_many_non_finite_images_prints_a_fraction_apart_from_the_limit():
    from berg_scale.rnc.finite import NonFiniteResponsesError, distinct_from, find_exclusions

    exclusions = find_exclusions(99, ["sub-01/V1"], {"sub-01/V1": np.array([3])})
    with pytest.raises(NonFiniteResponsesError) as info:
        exclusions.check("univariate", 0.01, 5)
    message = str(info.value)
    assert "1 of 99 images (a fraction of 0.0101)" in message and "max_excluded_fraction=0.01" in message
    assert "1.0%" not in message
    assert "raise max_excluded_fraction (--max-excluded-fraction, or in the study config)" in message
    assert distinct_from(0.0667, 0.05) == "0.067" and distinct_from(0.0500001, 0.05) == "0.0500001"


# -- 6. the multivariate batch figure says whose scores it shows --------------------------------
def test_the_batch_panel_title_names_the_train_score_and_the_held_out_mean():
    from types import SimpleNamespace

    from berg_scale.rnc.study import _batch_scores

    run = SimpleNamespace(search=SimpleNamespace(best_scores=np.array([0.5, 0.937])))
    stat = {"mean_score": 0.322, "mean_baseline": 0.1, "n_significant": 0, "n_subjects": 2}
    title = _batch_scores(run, stat)
    assert title.startswith("train r = +0.937 (this batch, all subjects); mean over held-out folds")
    assert "r = +0.322 vs baseline +0.100, significant in 0/2" in title
    assert _batch_scores(run, None) == "train r = +0.937 (this batch, all subjects)"
