"""Whole runs through Ray with the real ModelSet: s3 -> s3 and local -> local."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine_support import assert_each_key_once, make_config, output_table, reference_responses

pytestmark = pytest.mark.ray


def _direct_model(root, backbone, config):
    from berg_scale.models import ModelSet

    return ModelSet(root, config.readout_specs(), device="cpu", backbone_path=backbone)


def _check_against_reference(table, expected):
    rows = {row["key"]: row for row in table.to_pylist()}
    assert expected, "the reference must hold responses"
    for column, by_key in expected.items():
        for key, values in by_key.items():
            assert rows[key]["status"] == "ok"
            np.testing.assert_array_equal(np.asarray(rows[key][column], dtype=np.float32).reshape(values.shape), values)


@pytest.mark.s3
def test_s3_to_s3_every_key_once_and_equal_to_direct_modelset(
    ray_session, s3_server, s3_bucket, engine_berg_root, engine_backbone
):
    from berg_scale.engine.run import run_generation
    from berg_scale.io.output_store import OutputStore, read_manifest, read_readouts
    from berg_scale.synthetic.shards import write_synthetic_shards

    storage = s3_server.storage_options()
    infos = write_synthetic_shards(f"{s3_bucket}/in", 3, 4, storage=storage, seed=11)
    config = make_config(
        f"{s3_bucket}/in/shard-{{000000..000002}}.tar", f"{s3_bucket}/out",
        berg_root=engine_berg_root, backbone=engine_backbone, storage=storage,
    )
    result = run_generation(config, show_progress=False)
    assert result.exit_code == 0 and result.status == "complete"
    assert result.stats.shards_done == 3 and result.stats.images == 12

    table = output_table(f"{s3_bucket}/out", storage)
    assert_each_key_once(table, infos)
    model = _direct_model(engine_berg_root, engine_backbone, config)
    _check_against_reference(table, reference_responses(model, infos, storage))

    store = OutputStore(f"{s3_bucket}/out", storage)
    manifest = read_manifest(store)
    assert manifest["status"] == "complete"
    assert manifest["fingerprints"]["model"] == model.fingerprint
    assert manifest["shards"] == {"total": 3, "done": 3, "failed": 0}
    assert set(manifest["versions"]) >= {"berg_scale", "torch", "ray", "pyarrow"}
    assert storage.secret not in json.dumps(manifest)
    readouts = read_readouts(store)
    names = [column["name"] for column in readouts["columns"]]
    assert names == [column.name for column in model.columns]
    hv4 = next(c for c in readouts["columns"] if c["name"].endswith("/hV4"))
    assert len(hv4["coords"]["vertex"]) == hv4["shape"][0] and "ncsnr" in hv4["coords"]


def test_local_to_local_with_labelled_read_back(ray_session, tmp_path, engine_berg_root, engine_backbone):
    from berg_scale.engine.run import run_generation
    from berg_scale.io.results import readout_array, readout_xarray
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=5, defects={"not_image": 1})
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output, berg_root=engine_berg_root, backbone=engine_backbone,
                         retries={"error_rate_threshold": 1.0})
    result = run_generation(config, show_progress=False)
    assert result.exit_code == 0

    table = output_table(output)
    assert_each_key_once(table, infos)
    model = _direct_model(engine_berg_root, engine_backbone, config)
    _check_against_reference(table, reference_responses(model, infos))
    errors = [row for row in table.to_pylist() if row["status"] == "error"]
    assert len(errors) == 1 and "not a recognised image" in errors[0]["error"]
    assert all(value is None for key, value in errors[0].items() if key.startswith("fmri"))

    column = "fmri-nsd-fwrf/sub-01/V1"
    keys, values = readout_array(output, column)
    assert values.shape == (5, 6) and len(keys) == 5
    labelled = readout_xarray(output, column)
    assert labelled.dims == ("image", "neuroid") and labelled.indexes["neuroid"].is_unique
    assert "ncsnr" in labelled.coords and labelled.coords["ncsnr"].dims == ("neuroid",)
    assert {"i", "j", "k"} <= set(labelled.coords)  # volume indices from the ROI mask
    np.testing.assert_array_equal(labelled.values, values)
    mean_keys, means = readout_array(output, f"{column}:mean", status_ok_only=False)
    assert means.shape == (6,) and np.isnan(means).sum() == 1
