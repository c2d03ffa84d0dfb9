"""Responses on S3, and malformed outputs refused with clear errors."""

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


def _small_output(url, storage=None, n=200):
    rng = np.random.default_rng(0)
    voxels = {response_column(MODEL, 1, r): rng.normal(size=(n, 6)) for r in ("V1", "hV4")}
    ncsnr = {c: np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.2]) for c in voxels}
    means = {f"{c}:mean": v[:, ncsnr[c] > 0.5].mean(axis=1) for c, v in voxels.items()}
    write_synthetic_output(url, means, voxels, ncsnr, n_shards=2, storage=storage)


@pytest.mark.s3
def test_study_reads_and_writes_s3(s3_server, s3_bucket):
    storage = s3_server.storage_options()
    _small_output(f"{s3_bucket}/out", storage)
    config = parse_config({
        "responses": f"{s3_bucket}/out", "out_dir": f"{s3_bucket}/rnc", "subjects": [1], "rois": ["V1", "hV4"],
        "storage": {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1"},
        "univariate": {"baseline_batches": 1000, "n_bootstrap": 100, "n_permutations": 100},
        "plots": {"formats": ["png"]},
    })
    summary = run_study(config, log=lambda m: None)
    assert summary["n_images"] == 200
    fs = ResponseStore(f"{s3_bucket}/rnc", storage).fs
    bucket = s3_bucket.removeprefix("s3://")
    assert pq.read_table(f"{bucket}/rnc/univariate/controlling.parquet", filesystem=fs).num_rows > 0
    assert fs.exists(f"{bucket}/rnc/univariate/scatter_V1-hV4.png")
    assert json.loads(fs.cat(f"{bucket}/rnc/summary.json"))["seed"] == 20200220


def test_malformed_readouts_are_refused(tmp_path):
    _small_output(str(tmp_path))
    store = ResponseStore(str(tmp_path))
    (tmp_path / "readouts.json").write_text("{not json")
    with pytest.raises(ResponsesError, match="not valid JSON"):
        store.read_patterns(MODEL, 1, "V1")
    (tmp_path / "readouts.json").write_text(json.dumps({"columns": 3}))
    with pytest.raises(ResponsesError, match="lacks a 'columns'"):
        ResponseStore(str(tmp_path)).read_patterns(MODEL, 1, "V1")
    (tmp_path / "readouts.json").write_text(json.dumps({"columns": [{"name": response_column(MODEL, 1, "V1"),
                                                                     "coords": {"ncsnr": [0.9, 0.9]}}]}))
    with pytest.raises(ResponsesError, match="has 6 voxels but readouts.json lists 2"):
        ResponseStore(str(tmp_path)).read_patterns(MODEL, 1, "V1")
    (tmp_path / "readouts.json").unlink()
    with pytest.raises(ResponsesError, match="no readouts.json"):
        ResponseStore(str(tmp_path)).read_patterns(MODEL, 1, "V1")


def test_no_voxel_above_threshold_is_a_clear_error(tmp_path):
    _small_output(str(tmp_path))
    with pytest.raises(ResponsesError, match="passes ncsnr > 0.95"):
        ResponseStore(str(tmp_path)).read_patterns(MODEL, 1, "V1", threshold=0.95)


def test_a_scalar_column_where_voxels_are_expected_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    write_synthetic_output(str(tmp_path), {mean_column(MODEL, 1, "V1"): rng.normal(size=20),
                                           response_column(MODEL, 1, "V1"): rng.normal(size=20)},
                           ncsnr={response_column(MODEL, 1, "V1"): np.ones(1)}, n_shards=1)
    with pytest.raises(ResponsesError, match="expected a fixed-size list"):
        ResponseStore(str(tmp_path)).read_patterns(MODEL, 1, "V1")


def test_too_few_images_for_multivariate_batches_is_refused_before_univariate_runs(tmp_path):
    from berg_scale.errors import ConfigError

    _small_output(str(tmp_path / "out"), n=40)
    config = parse_config({
        "responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "rnc"), "subjects": [1],
        "rois": ["V1", "hV4"],
        "univariate": {"baseline_batches": 100, "n_bootstrap": 10, "n_permutations": 10},
        "multivariate": {"enabled": True, "batch_size": 50},
    })
    logged: list[str] = []
    with pytest.raises(ConfigError) as info:
        run_study(config, log=logged.append)
    message = str(info.value)
    assert message.startswith("multivariate: 40 images are too few for batches of 50")
    assert "multivariate.enabled: false" in message and "--batch-size" in message
    assert not any(line.startswith("univariate") or "[rnc] univariate" in line for line in logged), logged
    assert not (tmp_path / "rnc" / "univariate").exists()
