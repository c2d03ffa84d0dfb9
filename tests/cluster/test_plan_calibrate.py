"""`plan --calibrate` (rates measured here, on CPU) and S3 roots read for metadata."""

from __future__ import annotations

import json

import pytest
import yaml

from berg_scale.cli import main

FWRF = "fmri-nsd-fwrf"
READOUTS = [{"model": FWRF, "subjects": [1], "rois": ["V1"]}]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = tmp_path_factory.mktemp("calibrate_root")
    make_synthetic_root(root, models=[FWRF], subjects=(1,), rois=("V1",), fwrf_voxels={"V1": 40}, seed=3)
    return str(root)


def _write_config(tmp_path, shards: str, berg_root: str, backbone: str | None, **resources) -> str:
    config = {
        "input": {"shards": shards, "image_size": 64},
        "berg_root": berg_root,
        "backbone": backbone,
        "readouts": READOUTS,
        "output": str(tmp_path / "out"),
        "resources": {"device": "cpu", "gpus_per_worker": 0, "workers": 3, "batch_size": 8,
                      "decode_threads": 1, "cpus_per_worker": 1, **resources},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_measures_the_configured_models_on_the_first_input_images(small_root, tmp_path, capsys):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 30, seed=5)
    path = _write_config(tmp_path, str(tmp_path / "in"), small_root, None)

    nominal = _plan_json(capsys, path)
    assert nominal["device"] == "cpu" and not nominal["rate_measured"] and nominal["calibration"] is None
    assert any("nominal" in note for note in nominal["notes"])
    assert nominal["workers"] == 3
    assert main(["plan", path]) == 0
    out = capsys.readouterr().out
    assert "CPU-worker-hours at 5.0 images/s per CPU worker (1 CPUs each)" in out and "on 3 CPU workers" in out

    report = _plan_json(capsys, path, "--calibrate", "--calibrate-images", "20")
    calibration = report["calibration"]
    assert report["rate_measured"] and report["device"] == "cpu"
    assert report["rate_source"].startswith("measured on CPU")
    assert calibration["images"] == 20 and calibration["warmup_images"] == 8
    assert calibration["device"] == "cpu" and calibration["cpu_threads"] == 1
    assert "first images of input shard" in calibration["source"]
    assert calibration["seconds"] > 0 and calibration["model_load_seconds"] > 0
    assert report["images_per_second_per_worker"] == pytest.approx(calibration["images_per_second"], rel=1e-3)
    # seconds is rounded to 1 ms in the report, so the rate it implies is only that exact
    assert calibration["images_per_second"] == pytest.approx(
        20 / calibration["seconds"], rel=0.0006 / calibration["seconds"] + 1e-6)
    assert report["worker_hours"] == pytest.approx(60 / report["images_per_second_per_worker"] / 3600)
    assert report["wall_hours"] == pytest.approx(report["worker_hours"] / 3)
    assert not any("nominal" in note for note in report["notes"])
    assert calibration["stage_seconds"]["model"] > 0
    assert not list(tmp_path.glob("out*")), "calibration writes nothing next to the run's output"


def test_calibrate_falls_back_to_synthetic_images_and_refuses_without_weights(small_root, tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "x-{000..001}.tar")
    path = _write_config(tmp_path, missing, small_root, None)
    report = _plan_json(capsys, path, "--images", "1000", "--calibrate", "--calibrate-images", "16")
    assert report["calibration"]["source"].startswith("synthetic 640x480 JPEGs")
    assert report["calibration"]["images"] == 16

    empty = tmp_path / "empty_root"
    empty.mkdir()
    path = _write_config(tmp_path, missing, str(empty), None)
    assert main(["plan", path, "--images", "10", "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert "--calibrate needs the weight files" in err and "fetch-weights" in err


@pytest.mark.s3
def test_metadata_of_an_s3_root_gives_exact_widths(small_root, s3_server, s3_bucket, tmp_path, capsys):
    from berg_scale.io.storage import filesystem_for
    from berg_scale.models import families

    fs, path = filesystem_for(f"{s3_bucket}/berg", s3_server.storage_options())
    relative = families.metadata_file(FWRF, 1, "V1")
    fs.put_file(f"{small_root}/{relative}", f"{path}/{relative}")
    storage = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.access_key,
               "secret": s3_server.secret_key}
    config = _write_config(tmp_path, "unused.tar", f"{s3_bucket}/berg", None)
    raw = yaml.safe_load((tmp_path / "run.yaml").read_text())
    raw["storage"] = storage
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    columns = {c["name"]: c for c in _plan_json(capsys, config, "--images", "10")["columns"]}
    assert columns[f"{FWRF}/sub-01/V1"]["width"] == 40 and columns[f"{FWRF}/sub-01/V1"]["source"] == "metadata"

    raw["storage"]["secret"] = "wrong"  # an unreadable root costs exactness, not the plan
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    report = _plan_json(capsys, config, "--images", "10")
    assert report["columns"][0]["width"] == 1350  # the documented subject-1 count
    assert any("not read" in note and "credentials" in note for note in report["notes"])
