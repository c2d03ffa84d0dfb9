"""MDS over ROIs: a planted 2-D arrangement of the areas is recovered.

ROI r responds to p_r . z(i), with z(i) two independent standard normals per image, so the
RMS difference of two ROIs over images is |p_r - p_q| (up to sampling and subject noise)
and MDS must return the planted points up to rotation, reflection and translation.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main
from berg_scale.experiments import roi_mds
from berg_scale.rnc.responses import mean_column, response_column
from berg_scale.rnc.synthetic import write_synthetic_output

MODEL = "fmri-nsd-fwrf"
ROIS = ("V1", "V2", "V3", "hV4", "EBA", "FFA", "PPA", "RSC")
PLANTED = np.array([[0, 0], [0.5, 0], [1, 0], [1.5, 0.2], [2.5, 1.0], [2.6, 1.6], [2.5, -1.0], [3.1, -1.5]])
N_IMAGES = 4000


def write_planted(root, subjects=(1, 2, 3), ffa_parts=False, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N_IMAGES, 2))
    columns, ncsnr = {}, {}
    for s in subjects:
        for r, roi in enumerate(ROIS):
            values = z @ PLANTED[r] + 0.05 * rng.standard_normal(N_IMAGES)
            if roi == "FFA" and ffa_parts:  # FFA-1 (3 voxels) and FFA-2 (1 voxel) whose weighted mean is FFA
                columns[mean_column(MODEL, s, "FFA-1")] = values + 0.1
                columns[mean_column(MODEL, s, "FFA-2")] = values - 0.3
                ncsnr[response_column(MODEL, s, "FFA-1")] = np.array([0.9, 0.8, 0.7, 0.1])
                ncsnr[response_column(MODEL, s, "FFA-2")] = np.array([0.9, 0.2])
            else:
                columns[mean_column(MODEL, s, roi)] = values
    write_synthetic_output(str(root), columns, ncsnr=ncsnr, n_shards=2)
    return z


def _disparity(points, target):
    aligned = roi_mds.procrustes_align(points, target)
    return float(np.sqrt(((aligned - target) ** 2).sum(axis=1).mean()))


def test_mds_recovers_the_planted_arrangement(tmp_path, capsys):
    write_planted(tmp_path / "out", ffa_parts=True)
    assert main(["experiment", "roi-mds", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "mds")]) == 0
    assert "subject average: stress-1" in capsys.readouterr().out
    rows = pq.read_table(tmp_path / "mds" / "mds.parquet").to_pylist()
    mean = np.array([[r["dimension_1"], r["dimension_2"]] for r in rows if r["subject"] == "mean"])
    assert [r["roi"] for r in rows if r["subject"] == "mean"] == list(ROIS)
    assert _disparity(mean, PLANTED) < 0.05  # z units, no rescaling allowed
    summary = json.loads((tmp_path / "mds" / "summary.json").read_text())
    assert summary["subjects"] == [1, 2, 3] and summary["n_images"] == N_IMAGES
    assert summary["mean"]["stress1"] < 0.02 and summary["mean"]["shepard_r"] > 0.999
    for stats in summary["subjects_statistics"].values():
        assert stats["procrustes_rms"] < 0.05 and stats["consistency_r"] > 0.99
    pairs = pq.read_table(tmp_path / "mds" / "dissimilarities.parquet").to_pylist()
    v1_rsc = next(p for p in pairs if p["subject"] == "mean" and (p["roi_1"], p["roi_2"]) == ("V1", "RSC"))
    assert v1_rsc["dissimilarity"] == pytest.approx(np.linalg.norm(PLANTED[7] - PLANTED[0]), rel=0.05)
    assert (tmp_path / "mds" / "roi-mds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "mds" / "roi-mds.svg").read_bytes()[:400]


def test_dissimilarities_match_numpy_and_sklearn_euclidean():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((300, 5)).astype(np.float32)
    direct = np.sqrt(((values[:, :, None].astype(np.float64) - values[:, None, :]) ** 2).mean(axis=0))
    np.testing.assert_allclose(roi_mds.dissimilarities(values, "euclidean"), direct, atol=1e-9)
    np.testing.assert_allclose(roi_mds.dissimilarities(values, "correlation"), 1 - np.corrcoef(values.T), atol=1e-9)
    from sklearn.metrics import pairwise_distances

    scaled = pairwise_distances(values.T.astype(np.float64)) / np.sqrt(values.shape[0])
    np.testing.assert_allclose(roi_mds.dissimilarities(values, "euclidean"), scaled, atol=1e-9)


def test_correlation_metric_and_nonfinite_images(tmp_path, capsys):
    rng = np.random.default_rng(2)
    u = rng.standard_normal((500, 2, 4)).astype(np.float32)
    u[:, :, 1] = u[:, :, 0] + 0.1 * u[:, :, 1]  # ROI b copies ROI a: nearly 0 apart in 1 - r
    u[7, 1, 2] = np.nan
    result = roi_mds.analyse_values(u, (1, 2), ("a", "b", "c", "d"), metric="correlation")
    assert result.n_excluded == 1 and result.n_images == 499
    assert result.dissimilarity[roi_mds.MEAN][0, 1] < 0.01 < result.dissimilarity[roi_mds.MEAN][0, 2]
    d = roi_mds.map_distances(result.points[roi_mds.MEAN])
    assert d[0, 1] < 0.2 * d[0, 2]


def test_missing_roi_is_a_one_line_error(tmp_path, capsys):
    columns = {mean_column(MODEL, 1, roi): np.arange(20.0) * (i + 1) for i, roi in enumerate(ROIS[:4])}
    write_synthetic_output(str(tmp_path / "out"), columns, n_shards=1)
    code = main(["experiment", "roi-mds", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "mds")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sub-01/EBA:mean is missing" in err and "leave EBA out of --rois" in err
    assert main(["experiment", "roi-mds", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "mds"),
                 "--rois", *ROIS[:4], "--no-figures"]) == 0
    assert not (tmp_path / "mds" / "roi-mds.png").exists()
