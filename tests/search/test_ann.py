"""ANN search (faiss HNSW): recall against the exact search, index reuse, optional import."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from search_data import MEANS, VOXELS, write_search_data

from berg_scale.io.output_store import OutputStore, read_done_marker, write_done_marker
from berg_scale.rnc.synthetic import write_synthetic_output
from berg_scale.search import SearchError, SearchRequest, find_nearest

pytest.importorskip("faiss")

N_LARGE, WIDTH_LARGE = 3000, 16
COLUMN = "fmri-nsd_fsaverage-vit_b_32/sub-02/PPA"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """3000 images of 16-value patterns in a few hundred loose clusters, as ROI patterns are."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(300, WIDTH_LARGE))
    values = centres[rng.integers(0, 300, N_LARGE)] + 0.5 * rng.normal(size=(N_LARGE, WIDTH_LARGE))
    output = str(tmp_path_factory.mktemp("ann") / "responses")
    write_synthetic_output(output, {}, {COLUMN: values.astype(np.float32)}, n_shards=6)
    return output, values


def _targets(tmp_path, values, n=10, seed=11):
    rng = np.random.default_rng(seed)
    paths = []
    for q in range(n):
        path = tmp_path / f"q{q}.npy"
        np.save(path, values[rng.integers(0, len(values))] + 0.3 * rng.normal(size=values.shape[1]))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("metric", ["euclidean", "correlation"])
def test_ann_recall_against_exact(collection, tmp_path, metric):
    output, values = collection
    index_dir = str(tmp_path / "index")
    recalls = []
    for q, path in enumerate(_targets(tmp_path, values)):
        common = {"responses": output, "columns": [COLUMN], "target_file": path, "k": 10, "metric": metric}
        exact = find_nearest(SearchRequest(**common))
        ann = find_nearest(SearchRequest(**common, index="ann", index_dir=index_dir))
        assert ann.method == "ann" and ann.ann["reused"] == (q > 0)  # built once, then loaded
        found = {(h.shard, h.key) for h in ann.hits}
        recalls.append(len(found & {(h.shard, h.key) for h in exact.hits}) / 10)
        exact_distance = {(h.shard, h.key): h.distance for h in exact.hits}
        for hit in ann.hits:  # distances of the images found are exact (re-scored in float64)
            if (hit.shard, hit.key) in exact_distance:
                assert hit.distance == pytest.approx(exact_distance[(hit.shard, hit.key)], rel=1e-5, abs=1e-6)
        assert [h.distance for h in ann.hits] == sorted(h.distance for h in ann.hits)
    assert np.mean(recalls) >= 0.95, recalls


def test_ann_like_excludes_self_and_reports_skipped(tmp_path):
    data = write_search_data(tmp_path / "out")
    like = 42
    request = SearchRequest(data.output, [VOXELS, *MEANS], like=f"{data.shards[like]}/{data.keys[like]}", k=5,
                            index="ann", index_dir=str(tmp_path / "index"))
    result = find_nearest(request)
    exact = find_nearest(SearchRequest(data.output, [VOXELS, *MEANS], like=request.like, k=5))
    assert data.keys[like] not in [h.key for h in result.hits]
    assert [h.key for h in result.hits] == [h.key for h in exact.hits]  # 300 images: the graph finds all
    assert result.counts.n_excluded == exact.counts.n_excluded == 1
    assert result.counts.n_nonfinite == exact.counts.n_nonfinite == 2
    assert result.counts.n_ranked == exact.counts.n_ranked


def test_saved_index_is_rebuilt_when_the_output_changes(tmp_path):
    data = write_search_data(tmp_path / "out")
    target = tmp_path / "t.npy"
    np.save(target, np.arange(1.0, 4.0))
    request = SearchRequest(data.output, list(MEANS), target_file=str(target), k=4, index="ann",
                            index_dir=str(tmp_path / "index"))
    first = find_nearest(request)
    assert not first.ann["reused"] and any("no saved index" in n for n in first.notes)
    assert find_nearest(request).ann["reused"]
    store = OutputStore(data.output)
    marker = read_done_marker(store, "000001")
    marker.pop("committed_at")
    write_done_marker(store, "000001", marker)  # recommitted: a new commit time
    third = find_nearest(request)
    assert not third.ann["reused"]
    assert any("recommit of 1 shard" in note for note in third.notes)
    cosine = find_nearest(dataclasses.replace(request, metric="cosine"))
    assert not cosine.ann["reused"] and any("another metric" in n for n in cosine.notes)


def test_auto_picks_ann_above_the_threshold_or_with_a_valid_saved_index(data, tmp_path):
    target = tmp_path / "t.npy"
    np.save(target, np.zeros(3))
    index_dir = str(tmp_path / "index")
    common = {"responses": data.output, "columns": list(MEANS), "target_file": str(target), "k": 3, "index": "auto",
              "index_dir": index_dir}
    assert find_nearest(SearchRequest(**common, ann_above=10_000)).method == "exact"
    built = find_nearest(SearchRequest(**common, ann_above=100))
    assert built.method == "ann" and not built.ann["reused"]
    reused = find_nearest(SearchRequest(**common, ann_above=10_000))  # below the threshold, but the index is valid
    assert reused.method == "ann" and reused.ann["reused"]
    two = tmp_path / "two.npy"
    np.save(two, np.zeros(2))
    other_columns = find_nearest(SearchRequest(**{**common, "columns": list(MEANS[:2]), "target_file": str(two)},
                                               ann_above=10_000))
    assert other_columns.method == "exact"  # the saved index was built over other columns


def test_missing_faiss_is_a_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    target = tmp_path / "t.npy"
    np.save(target, np.zeros(3))
    common = {"responses": data.output, "columns": list(MEANS), "target_file": str(target), "k": 3}
    with pytest.raises(SearchError, match=r"needs the faiss library.*pip install faiss-cpu"):
        find_nearest(SearchRequest(**common, index="ann"))
    fallback = find_nearest(SearchRequest(**common, index="auto", ann_above=10))
    assert fallback.method == "exact" and any("faiss is not installed" in n for n in fallback.notes)
