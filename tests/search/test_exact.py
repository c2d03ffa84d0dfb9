"""Exact search equals a brute-force numpy ranking of every committed, finite image."""

from __future__ import annotations

import numpy as np
import pytest
from search_data import CONSTANT_ROW, ERROR_ROW, INF_ROW, MEANS, NAN_ROW, VOXELS

from berg_scale.search import SearchRequest, find_nearest
from berg_scale.search.topk import RunningTopK


def brute_force(matrix: np.ndarray, target: np.ndarray, metric: str) -> np.ndarray:
    """Distances written out directly (one np.corrcoef per row for correlation)."""
    if metric == "euclidean":
        return np.linalg.norm(matrix - target, axis=1)
    if metric == "cosine":
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1 - matrix @ target / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(target))
    out = np.full(len(matrix), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, row in enumerate(matrix):
            if np.isfinite(row).all() and row.std() > 0:
                out[i] = 1 - np.corrcoef(row, target)[0, 1]
    return out


def expected_hits(data, columns, target, metric, k, exclude=None):
    matrix = data.matrix(columns)
    d = brute_force(matrix, target, metric)
    usable = data.committed_ok() & np.isfinite(matrix).all(axis=1) & np.isfinite(d)
    if exclude is not None:
        usable[exclude] = False
    rows = np.flatnonzero(usable)
    order = rows[np.argsort(d[rows], kind="stable")][:k]
    return [data.keys[i] for i in order], d[order]


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "correlation"])
@pytest.mark.parametrize("columns", [[VOXELS], [VOXELS, *MEANS]], ids=["roi-voxels", "voxels+means"])
def test_exact_equals_brute_force(data, tmp_path, metric, columns):
    rng = np.random.default_rng(1)
    target = rng.normal(size=sum(12 if c == VOXELS else 1 for c in columns))
    path = tmp_path / "target.npy"
    np.save(path, target)
    result = find_nearest(SearchRequest(data.output, columns, target_file=str(path), k=25, metric=metric))
    keys, distances = expected_hits(data, columns, target, metric, 25)
    assert [h.key for h in result.hits] == keys
    np.testing.assert_allclose([h.distance for h in result.hits], distances, rtol=1e-9, atol=1e-12)
    assert [h.rank for h in result.hits] == list(range(1, 26))
    for hit in result.hits:
        i = data.keys.index(hit.key)
        assert (hit.shard, hit.index) == (data.shards[i], data.positions[i])


def test_skipped_images_are_counted(data, tmp_path):
    path = tmp_path / "target.npy"
    np.save(path, np.arange(15.0))
    result = find_nearest(SearchRequest(data.output, [VOXELS, *MEANS], target_file=str(path), k=5,
                                        metric="correlation"))
    read = int(data.committed_ok().sum())
    assert result.counts.n_images == read
    assert result.counts.n_nonfinite == 2  # NAN_ROW in VOXELS, INF_ROW in the V2 mean
    assert result.counts.nonfinite_by_column == {VOXELS: 1, MEANS[0]: 0, MEANS[1]: 1, MEANS[2]: 0}
    assert result.counts.n_undefined == 0  # a constant voxel row is not constant once the means are appended
    keys = {h.key for h in result.hits}
    assert not keys & {data.keys[r] for r in (ERROR_ROW, NAN_ROW, INF_ROW)}


def test_constant_row_is_undefined_for_correlation(data, tmp_path):
    path = tmp_path / "target.csv"
    path.write_text(",".join(str(v) for v in np.arange(12.0)))
    result = find_nearest(SearchRequest(data.output, [VOXELS], target_file=str(path), k=3, metric="correlation"))
    assert result.counts.n_undefined == 1
    assert result.counts.n_ranked == int(data.committed_ok().sum()) - 2  # NaN row and the constant row
    assert data.keys[CONSTANT_ROW] not in {h.key for h in result.hits}


def test_like_excludes_the_image_itself(data):
    like = 150  # shard 000001
    columns = list(MEANS[::2])
    result = find_nearest(SearchRequest(data.output, columns, like=f"{data.shards[like]}/{data.keys[like]}", k=10))
    target = data.matrix(columns)[like]
    keys, distances = expected_hits(data, columns, target, "euclidean", 10, exclude=like)
    assert data.keys[like] not in [h.key for h in result.hits]
    assert [h.key for h in result.hits] == keys
    np.testing.assert_allclose([h.distance for h in result.hits], distances, rtol=1e-9)
    assert result.counts.n_excluded == 1
    assert result.target.exclude == (data.shards[like], data.keys[like])


def test_k_larger_than_the_collection_returns_every_ranked_image(data, tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros(1))
    result = find_nearest(SearchRequest(data.output, [MEANS[0]], target_file=str(path), k=10_000))
    assert len(result.hits) == result.counts.n_ranked == int(data.committed_ok().sum())
    assert any("fewer than k" in note for note in result.notes)


def test_running_top_k_breaks_ties_by_image_order():
    """Integer distances with many ties, offered in batches: same as one stable sort."""
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 6, size=n).astype(float) for n in (40, 1, 0, 25, 60)]
    batches[3][[2, 9]] = np.nan
    top = RunningTopK(17)
    for number, d in enumerate(batches):
        top.update(d, number, np.arange(d.size) * 10, lambda rows, n=number: [f"{n}:{r}" for r in rows])
    hits = top.hits([f"s{n}" for n in range(len(batches))])
    flat = np.concatenate(batches)
    labels = [f"{n}:{r}" for n, d in enumerate(batches) for r in range(d.size)]
    finite = np.flatnonzero(~np.isnan(flat))
    order = finite[np.argsort(flat[finite], kind="stable")][:17]
    assert [h.key for h in hits] == [labels[i] for i in order]
    assert [h.distance for h in hits] == flat[order].tolist()
    assert all(h.index == int(h.key.split(":")[1]) * 10 for h in hits)
