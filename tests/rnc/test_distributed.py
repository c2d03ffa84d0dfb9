"""The Ray path (per-shard filter + top-k, exact merge) equals the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest

from berg_scale.rnc.distributed import ray_selector
from berg_scale.rnc.responses import ResponseStore, mean_column
from berg_scale.rnc.synthetic import write_synthetic_output
from berg_scale.rnc.univariate import UnivariateParams, run_univariate

from rnc_planted import MODEL


@pytest.mark.ray
def test_ray_selection_equals_in_memory_selection(tmp_path, ray_session):
    rng = np.random.default_rng(4)
    n, subjects = 3000, [1, 2, 3]
    latent = rng.normal(size=(n, 2))
    columns = {}
    for s in subjects:
        for r, roi in enumerate(("V1", "hV4")):
            # values on a 0.05 grid: many exact ties across shards test the tie-break
            columns[mean_column(MODEL, s, roi)] = np.round(latent[:, r] + 0.3 * rng.normal(size=n), 1) / 2
    # non-finite responses in ok rows of two shards: an infinity would top every "high" ranking
    columns[mean_column(MODEL, 2, "V1")][[40, 2600]] = [np.inf, np.nan]
    columns[mean_column(MODEL, 3, "hV4")][2601] = -np.inf
    write_synthetic_output(str(tmp_path), columns, n_shards=7, error_rows=[3, 1500], uncommitted_shards=[2])
    store = ResponseStore(str(tmp_path))
    data = store.read_univariate(MODEL, subjects, ["V1", "hV4"])
    params = UnivariateParams(baseline_batches=5000, n_bootstrap=100, n_permutations=100)
    reference = run_univariate(data.values, subjects, ["V1", "hV4"], [("V1", "hV4")], params)
    columns_needed, plan = store.univariate_plan(MODEL, subjects, ["V1", "hV4"])
    selector = ray_selector(store, None, data.images, columns_needed, plan, data.subjects, data.rois,
                            params.n_images, params.margin)
    distributed = run_univariate(data.values, subjects, ["V1", "hV4"], [("V1", "hV4")], params, selector=selector)
    assert len(reference.selections) == len(distributed.selections) == 16
    n_ties = 0
    for a, b in zip(reference.selections, distributed.selections):
        assert (a.fold, a.condition) == (b.fold, b.condition)
        assert a.images.tolist() == b.images.tolist()
        assert np.array_equal(a.rank_scores, b.rank_scores)
        n_ties += len(a.rank_scores) - len(np.unique(a.rank_scores))
    assert n_ties > 0  # the case exercises tie-breaking
    assert reference.tests == distributed.tests
    excluded = reference.exclusions.excluded
    assert excluded.size == 3 and reference.exclusions.by_column() == {"sub-02/V1": 2, "sub-03/hV4": 1}
    assert not np.isin(np.concatenate([s.images for s in distributed.selections]), excluded).any()


@pytest.mark.ray
def test_study_with_distributed_selection_writes_the_same_tables(planted, tmp_path, ray_session):
    import pyarrow.parquet as pq

    from berg_scale.rnc.config import parse_config
    from berg_scale.rnc.study import run_study

    tables = {}
    for distributed in (False, True):
        out = tmp_path / f"rnc-{distributed}"
        config = parse_config({
            "responses": planted.url, "out_dir": str(out), "subjects": planted.subjects, "rois": ["V1", "hV4"],
            "univariate": {"baseline_batches": 3000, "n_bootstrap": 200, "n_permutations": 200,
                           "distributed": distributed},
            "plots": {"enabled": False},
        })
        run_study(config, log=lambda m: None)
        tables[distributed] = pq.read_table(out / "univariate" / "controlling.parquet").to_pylist()
    assert tables[True] == tables[False]
    assert ray_session.is_initialized()  # a Ray started by someone else is left running
