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

    assert main(["experiment", "roi-mds", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "mds"),
                 "--rois", *ROIS[:4], "--subjects", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "subject 4 is not in" in err and f"{MODEL} has subjects 1" in err
    assert "roi_unions" not in err


# The subject-average map of a small fwRF run: V1 and hV4, and FFA, PPA and RSC, lie within a
# label's width of each other, and the map is four times wider than tall.
CROWDED = np.array([[-0.303, 0.099], [-0.470, -0.114], [-0.158, -0.155], [-0.137, 0.100],
                    [0.735, 0.001], [0.272, -0.135], [0.053, 0.206], [0.007, -0.002]])


def crowded_result(metric="euclidean", subjects=(1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    points = {roi_mds.MEAN: CROWDED}
    for s in subjects:
        points[s] = CROWDED + rng.normal(0, 0.25, CROWDED.shape)
    statistics = {who: {"stress1": 0.07, "shepard_r": 0.99} for who in points}
    dissimilarity = {who: roi_mds.map_distances(p) for who, p in points.items()}
    return roi_mds.MdsResult(ROIS, tuple(subjects), metric, dissimilarity, points, statistics, 99, 0)


def _label_boxes(fig, ax):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text() in ROIS]
    assert sorted(t.get_text() for t in texts) == sorted(ROIS)
    return {t.get_text(): t.get_window_extent(renderer) for t in texts}, renderer


@pytest.mark.parametrize("metric", ["euclidean", "correlation"])
def test_map_labels_do_not_overlap_and_the_map_fills_its_box(metric):
    import matplotlib.pyplot as plt

    result = crowded_result(metric)
    fig = roi_mds.mds_figure(result)
    ax = fig.axes[0]
    boxes, renderer = _label_boxes(fig, ax)
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
    markers = ax.transData.transform(CROWDED)
    radius = roi_mds.MARKER_RADIUS * fig.dpi / 72
    for name, box in boxes.items():
        for x, y in markers:  # no label covers the centre region of a subject-average marker
            assert not box.padded(-1).overlaps(type(box).from_extents(x - radius / 2, y - radius / 2,
                                                                      x + radius / 2, y + radius / 2)), name
    # one unit on both axes, the box adapting; limits follow the points, not the box
    assert ax.get_aspect() == 1.0 and ax.get_adjustable() == "box"
    everything = np.vstack(list(result.points.values()))
    span = np.ptp(everything, axis=0)
    y_low, y_high = ax.get_ylim()
    x_low, x_high = ax.get_xlim()
    assert x_low < everything[:, 0].min() and x_high > everything[:, 0].max()
    assert y_low < everything[:, 1].min() and y_high > everything[:, 1].max()
    assert (x_high - x_low) < 1.5 * span.max() and (y_high - y_low) < 1.5 * span.max()
    # the legend has its own room: it does not cover the map, and the map keeps most of the width
    legend = next(a.get_legend() for a in fig.axes if a.get_legend() is not None)
    map_box = ax.get_window_extent(renderer)
    assert not legend.get_window_extent(renderer).overlaps(map_box)
    assert map_box.width > 0.5 * fig.bbox.width
    plt.close(fig)


def test_label_placement_is_deterministic_and_inside_the_frame():
    centres = np.array([[100.0, 100.0], [104.0, 101.0], [108.0, 99.0], [300.0, 200.0]])
    sizes = np.array([[14.0, 9.0], [20.0, 9.0], [18.0, 9.0], [14.0, 9.0]])
    frame = np.array([0.0, 0.0, 320.0, 220.0])
    outward = np.array([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]) / np.sqrt([[1], [1], [1], [2]])
    first = roi_mds.place_labels(centres, sizes, np.empty((0, 2)), frame, outward)
    assert first == roi_mds.place_labels(centres, sizes, np.empty((0, 2)), frame, outward)
    placed = []
    for c, (dx, dy, ha, va), (w, h) in zip(centres, first, sizes):
        x0 = {"left": c[0] + dx, "right": c[0] + dx - w, "center": c[0] + dx - w / 2}[ha]
        y0 = {"bottom": c[1] + dy, "top": c[1] + dy - h, "center": c[1] + dy - h / 2}[va]
        box = np.array([x0, y0, x0 + w, y0 + h])
        assert frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]
        placed.append(box)
    for i in range(len(placed)):
        for j in range(i + 1, len(placed)):
            assert roi_mds._boxes_overlap(placed[i], placed[j][None])[0] == 0
