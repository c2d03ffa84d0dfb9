"""Bad input fails fast, with one clear line, before any worker (or Ray) starts."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from engine_support import make_config


@pytest.fixture
def no_workers(monkeypatch):
    """Any attempt to start Ray or workers fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("workers were started before the input was checked")

    monkeypatch.setattr("berg_scale.engine.ray_connect.ensure_ray", forbidden)


def _run(config, **kwargs):
    from berg_scale.engine.run import run_generation

    return run_generation(config, show_progress=False, **kwargs)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.s3
def test_unreachable_endpoint(no_workers, s3_server, s3_bucket, stand_in_factory):
    from berg_scale.errors import StorageError
    from berg_scale.testing.s3_server import free_port

    storage = dataclasses.replace(s3_server.storage_options(), endpoint_url=f"http://127.0.0.1:{free_port()}")
    config = make_config(f"{s3_bucket}/in", f"{s3_bucket}/out", storage=storage)
    with pytest.raises(StorageError) as exc_info:
        _run(config, model_factory=stand_in_factory)
    assert "cannot reach the S3 endpoint" in _one_line(exc_info)
    assert "endpoint_url" in str(exc_info.value)


@pytest.mark.s3
def test_wrong_credentials(no_workers, s3_server, s3_bucket, stand_in_factory):
    from berg_scale.errors import StorageError

    storage = dataclasses.replace(s3_server.storage_options(), secret="not-the-secret")
    config = make_config(f"{s3_bucket}/in", f"{s3_bucket}/out", storage=storage)
    with pytest.raises(StorageError) as exc_info:
        _run(config, model_factory=stand_in_factory)
    message = _one_line(exc_info)
    assert "refused the credentials" in message and "not-the-secret" not in message


@pytest.mark.s3
def test_missing_bucket(no_workers, s3_server, s3_bucket, stand_in_factory):
    from berg_scale.errors import StorageError

    storage = s3_server.storage_options()
    config = make_config("s3://no-such-bucket-here/in", f"{s3_bucket}/out", storage=storage)
    with pytest.raises(StorageError) as exc_info:
        _run(config, model_factory=stand_in_factory)
    assert "bucket 'no-such-bucket-here' does not exist" in _one_line(exc_info)


@pytest.mark.s3
def test_empty_shard_list_on_s3(no_workers, s3_server, s3_bucket, stand_in_factory):
    from berg_scale.errors import ConfigError

    storage = s3_server.storage_options()
    s3_server.client().put_object(Bucket=s3_bucket.removeprefix("s3://"), Key="in/readme.txt", Body=b"x")
    config = make_config(f"{s3_bucket}/in/", f"{s3_bucket}/out", storage=storage)
    with pytest.raises(ConfigError) as exc_info:
        _run(config, model_factory=stand_in_factory)
    assert "no input shards matched" in _one_line(exc_info)


def test_empty_local_folder_and_missing_brace_members(no_workers, tmp_path, stand_in_factory):
    from berg_scale.errors import ConfigError
    from berg_scale.synthetic.shards import write_synthetic_shards

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as exc_info:
        _run(make_config(str(tmp_path / "empty"), str(tmp_path / "out")), model_factory=stand_in_factory)
    assert "no input shards matched" in _one_line(exc_info)

    write_synthetic_shards(str(tmp_path / "in"), 2, 1)
    pattern = str(tmp_path / "in" / "shard-{000000..000003}.tar")
    with pytest.raises(ConfigError) as exc_info:
        _run(make_config(pattern, str(tmp_path / "out")), model_factory=stand_in_factory)
    assert "2 of 4 shards" in _one_line(exc_info)


@pytest.mark.parametrize("where", ["same", "parent"])
def test_an_output_that_holds_the_input_shards_is_refused(no_workers, tmp_path, stand_in_factory, where):
    from berg_scale.errors import BergScaleError
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "data" / "in"), 2, 1)
    output = tmp_path / "data" / ("in" if where == "same" else "")
    before = sorted(p.name for p in (tmp_path / "data" / "in").iterdir())
    with pytest.raises(BergScaleError) as exc_info:
        _run(make_config(str(tmp_path / "data" / "in"), str(output)), model_factory=stand_in_factory,
             overwrite=True)
    message = _one_line(exc_info)
    assert "holds 2 input shard(s)" in message and "a folder of their own" in message
    assert sorted(p.name for p in (tmp_path / "data" / "in").iterdir()) == before  # nothing touched


def test_an_output_that_is_a_file_is_refused(no_workers, tmp_path, stand_in_factory):
    from berg_scale.errors import BergScaleError
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 1)
    (tmp_path / "out").write_text("notes")
    with pytest.raises(BergScaleError) as exc_info:
        _run(make_config(str(tmp_path / "in"), str(tmp_path / "out")), model_factory=stand_in_factory)
    assert _one_line(exc_info).startswith(f"output {tmp_path / 'out'} is a file; give a folder")
    assert (tmp_path / "out").read_text() == "notes"


def test_an_output_next_to_the_inputs_is_fine(no_workers, tmp_path):
    from berg_scale.engine.preflight import check_output_location
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "data"), 1, 1)
    shards = list_shards(str(tmp_path / "data"))
    check_output_location(str(tmp_path / "data" / "responses"), shards)  # inside the input folder
    check_output_location(str(tmp_path / "data-responses"), shards)  # a sibling sharing a prefix


def test_missing_weights(no_workers, tmp_path, engine_berg_root, engine_backbone):
    from berg_scale.engine.preflight import MissingWeightsError
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 1)
    (tmp_path / "empty_root").mkdir()
    config = make_config(str(tmp_path / "in"), str(tmp_path / "out"), berg_root=str(tmp_path / "empty_root"),
                         backbone=engine_backbone)
    with pytest.raises(MissingWeightsError) as exc_info:
        _run(config)
    message = _one_line(exc_info)
    assert "weight file(s) missing" in message and "fetch-weights" in message

    # A subject the synthetic root does not have.
    config = make_config(str(tmp_path / "in"), str(tmp_path / "out"), berg_root=engine_berg_root,
                         backbone=engine_backbone,
                         readouts=[{"model": "fmri-nsd-fwrf", "subjects": [2], "rois": ["V1"]}])
    with pytest.raises(MissingWeightsError, match="weights_sub-02_roi-V1.pt"):
        _run(config)

    config = make_config(str(tmp_path / "in"), str(tmp_path / "out"), berg_root=engine_berg_root,
                         backbone=str(tmp_path / "no-backbone.pth"))
    with pytest.raises(MissingWeightsError, match="backbone"):
        _run(config)


def test_cli_prints_one_line_and_exits_2(no_workers, tmp_path, capsys):
    from berg_scale.cli import main

    (tmp_path / "empty").mkdir()
    config = {
        "input": {"shards": str(tmp_path / "empty")},
        "berg_root": str(tmp_path),
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["generate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("berg-scale generate: error: no input shards matched")


def test_ray_job_entry_point_reports_config_errors_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("jobs_generate", "jobs/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "run.yaml"
    path.write_text("input: {shards: x}\nberg_root: /b\nreadouts: []\noutput: o\n")
    assert module.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "readouts" in err[0]
