"""Univariate RNC recovers planted controlling images from an engine-layout output."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.rnc.config import parse_config
from berg_scale.rnc.responses import ResponseStore, ResponsesError, mean_column, response_column
from berg_scale.rnc.study import run_study
from berg_scale.rnc.synthetic import write_synthetic_output

from rnc_planted import MODEL


def _config(planted, out_dir, **univariate):
    settings = {"baseline_batches": 20_000, "n_bootstrap": 5_000, "n_permutations": 2_000, **univariate}
    return parse_config(
        {
            "responses": planted.url,
            "out_dir": str(out_dir),
            "subjects": planted.subjects,
            "rois": list(planted.rois),
            "univariate": settings,
            "plots": {"formats": ["png"]},
        }
    )


def test_reader_skips_uncommitted_shards_and_error_rows(planted):
    store = ResponseStore(planted.url)
    data = store.read_univariate(MODEL, planted.subjects, planted.rois)
    assert len(data.images.shards) == 3  # the 4th shard has no _done marker
    assert data.images.n_images == 499  # 500 committed images minus one error row
    assert np.isfinite(data.values).all()
    keys = set(store.keys_for(data.images, np.arange(data.images.n_images)))
    assert not keys & planted.excluded


def test_planted_quadrants_are_recovered_with_significant_statistics(planted, tmp_path):
    summary = run_study(_config(planted, tmp_path / "rnc"), log=lambda m: None)
    table = pq.read_table(tmp_path / "rnc" / "univariate" / "controlling.parquet").to_pylist()
    for condition, keys in planted.planted.items():
        for fold in ["all"] + [f"sub-{s:02d}" for s in planted.subjects]:
            chosen = {r["key"] for r in table if r["condition"] == condition and r["fold"] == fold}
            assert chosen == keys, (condition, fold)
    assert all(r["seed"] == 20200220 for r in table)
    stats = summary["univariate"]["statistics"]
    assert len(stats) == 8  # 4 conditions x 2 ROIs
    for row in stats:
        assert row["n_significant"] == 4
        assert row["binomial_p"] == pytest.approx(0.05**4)
        assert row["difference_ci"][0] > 1.5 if "high" in _direction(row) else row["difference_ci"][1] < -1.5
    tests = pq.read_table(tmp_path / "rnc" / "univariate" / "tests.parquet").to_pylist()
    assert all(t["p_value"] == pytest.approx(1 / 2001) for t in tests)
    written = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    assert written["seed"] == 20200220 and written["n_images"] == 499
    assert (tmp_path / "rnc" / "univariate" / "scatter_V1-hV4.png").stat().st_size > 1000


def _direction(row):
    condition, roi_position = row["condition"], 1 if row["roi"] == row["roi_1"] else 2
    return condition.split("-")[roi_position - 1]


def test_baselines_are_written_per_roi_and_fold(planted, tmp_path):
    run_study(_config(planted, tmp_path / "rnc"), log=lambda m: None)
    rows = pq.read_table(tmp_path / "rnc" / "univariate" / "baselines.parquet").to_pylist()
    folds = {(r["roi"], r["fold"]) for r in rows}
    assert len(folds) == 2 * 5
    for roi, fold in folds:
        images = [r for r in rows if r["roi"] == roi and r["fold"] == fold]
        assert len(images) == 25 and len({r["key"] for r in images}) == 25
        assert not {r["key"] for r in images} & planted.excluded


def test_roi_union_is_voxel_count_weighted(tmp_path):
    """FFA = FFA-1 U FFA-2: the mean over concatenated filtered voxels."""
    rng = np.random.default_rng(0)
    n = 60
    ffa1 = rng.normal(size=(n, 4))
    ffa2 = rng.normal(size=(n, 6))
    nc1 = np.array([0.9, 0.2, 0.7, 0.6])  # 3 voxels pass 0.5
    nc2 = np.array([0.1, 0.8, 0.3, 0.4, 0.45, 0.51])  # 2 voxels pass
    mean1 = ffa1[:, nc1 > 0.5].mean(axis=1)
    mean2 = ffa2[:, nc2 > 0.5].mean(axis=1)
    columns = {
        mean_column(MODEL, 1, "FFA-1"): mean1,
        mean_column(MODEL, 1, "FFA-2"): mean2,
        mean_column(MODEL, 1, "V1"): rng.normal(size=n),
    }
    voxels = {response_column(MODEL, 1, "FFA-1"): ffa1, response_column(MODEL, 1, "FFA-2"): ffa2}
    ncsnr = {response_column(MODEL, 1, "FFA-1"): nc1, response_column(MODEL, 1, "FFA-2"): nc2}
    write_synthetic_output(str(tmp_path), columns, voxels, ncsnr, n_shards=2)
    store = ResponseStore(str(tmp_path))
    data = store.read_univariate(MODEL, [1], ["FFA", "V1"])
    concatenated = np.concatenate([ffa1[:, nc1 > 0.5], ffa2[:, nc2 > 0.5]], axis=1).mean(axis=1)
    assert np.allclose(data.values[:, 0, 0], concatenated, atol=1e-6)
    _, patterns = store.read_patterns(MODEL, 1, "FFA")
    assert patterns.shape == (n, 5)
    with pytest.raises(ResponsesError, match="union"):
        store.read_univariate(MODEL, [1], ["FFA"], unions={"FFA": ["FFA-1", "FFA-3"]})
    with pytest.raises(ResponsesError, match="PPA"):
        store.read_univariate(MODEL, [1], ["PPA"])


def test_missing_output_gives_a_clear_error(tmp_path):
    with pytest.raises(ResponsesError, match="no committed shards"):
        ResponseStore(str(tmp_path)).committed_shards()
