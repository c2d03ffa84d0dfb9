"""Run configuration: strict validation with one-line errors, env-var secrets, overrides."""

from __future__ import annotations

import json

import pytest
import yaml

from berg_scale.config import load_config
from berg_scale.errors import ConfigError


def _base(**changes) -> dict:
    raw = {
        "input": {"shards": "s3://bucket/shards/{000000..000009}.tar"},
        "berg_root": "/data/berg",
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1, 2], "rois": ["V1", "FFA-1"]}],
        "output": "s3://bucket/out",
    }
    raw.update(changes)
    return raw


def _error(raw, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc_info:
        load_config(raw, **kwargs)
    message = str(exc_info.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_valid_config_expands_readouts_and_applies_defaults():
    config = load_config(_base())
    specs = config.readout_specs()
    assert [(s.model_id, s.subject, s.selection["roi"]) for s in specs] == [
        ("fmri-nsd-fwrf", 1, "V1"), ("fmri-nsd-fwrf", 1, "FFA-1"),
        ("fmri-nsd-fwrf", 2, "V1"), ("fmri-nsd-fwrf", 2, "FFA-1"),
    ]
    assert config.input.image_size == 256 and config.input.crop == "center"
    assert config.retries.max_attempts == 3 and config.resources.precision == "fp32"


def test_subjects_all_uses_the_model_card():
    config = load_config(_base(readouts=[{"model": "eeg-things_eeg_2-vit_b_32", "subjects": "all"}]))
    assert [s.subject for s in config.readout_specs()] == list(range(1, 11))


def test_unknown_key_names_the_path_and_the_allowed_keys():
    message = _error(_base(resources={"batchsize": 8}))
    assert "resources.batchsize: unknown key" in message
    assert "batch_size" in message


def test_wrong_type_names_the_value():
    message = _error(_base(resources={"batch_size": "many"}))
    assert "resources.batch_size" in message and "'many'" in message and "integer" in message


def test_missing_required_field():
    raw = _base()
    del raw["output"]
    assert "output: required field is missing" in _error(raw)


def test_unknown_model_id_lists_the_known_ones():
    message = _error(_base(readouts=[{"model": "fmri-nsd-gnet", "subjects": [1]}]))
    assert "readouts.0.model" in message and "fmri-nsd-gnet" in message
    assert "fmri-nsd-fwrf" in message and "eeg-things_eeg_2-vit_b_32" in message


def test_invalid_roi_fails_before_anything_runs():
    config = load_config(_base(readouts=[{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V9"]}]))
    with pytest.raises(ConfigError, match="readouts.0 .fmri-nsd-fwrf.: Invalid ROI: 'V9'"):
        config.readout_specs()


def test_overrides_are_yaml_parsed_and_reach_nested_lists():
    config = load_config(_base(), overrides=["resources.batch_size=64", "readouts.0.subjects=[3]",
                                             "retries.speculative_tail=false"])
    assert config.resources.batch_size == 64
    assert config.retries.speculative_tail is False
    assert {s.subject for s in config.readout_specs()} == {3}
    assert "--set" in _error(_base(), overrides=["readouts.5.subjects=[1]"])
    assert "--set" in _error(_base(), overrides=["no-equals-sign"])


def test_env_var_secrets_are_resolved_and_never_dumped(tmp_path):
    raw = _base(storage={"endpoint_url": "http://127.0.0.1:9000", "key": "${BS_TEST_KEY}",
                         "secret": "${BS_TEST_SECRET}"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    environ = {"BS_TEST_KEY": "AKIA-visible-key", "BS_TEST_SECRET": "very-secret-value"}
    config = load_config(path, environ=environ)
    options = config.storage_options()
    assert options.key == "AKIA-visible-key" and options.secret == "very-secret-value"
    dumped = json.dumps(config.redacted())
    assert "very-secret-value" not in dumped and "AKIA-visible-key" not in dumped
    assert "very-secret-value" not in repr(config) and "very-secret-value" not in repr(options)

    message = _error(raw, environ={"BS_TEST_KEY": "x"})
    assert "storage.secret: environment variable BS_TEST_SECRET is not set" in message


def test_secrets_never_reach_run_json(tmp_path, monkeypatch):
    """run.json is written from the redacted dump, before any worker starts."""
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory

    def stop(*args, **kwargs):
        raise RuntimeError("stop before workers")

    monkeypatch.setattr("berg_scale.engine.ray_connect.ensure_ray", stop)
    from berg_scale.testing.synthetic_shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 1)
    raw = _base(input={"shards": str(tmp_path / "in")}, output=str(tmp_path / "out"),
                storage={"key": "${BS_TEST_KEY}", "secret": "${BS_TEST_SECRET}"})
    config = load_config(raw, environ={"BS_TEST_KEY": "key-abc", "BS_TEST_SECRET": "secret-xyz"})
    with pytest.raises(RuntimeError, match="stop before workers"):
        run_generation(config, model_factory=FixedCostModelFactory(), show_progress=False)
    manifest = (tmp_path / "out" / "run.json").read_text()
    assert "secret-xyz" not in manifest and "key-abc" not in manifest
    assert json.loads(manifest)["config"]["storage"]["secret"] == "**********"


def test_not_yaml_and_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: [unclosed")
    assert "not valid YAML" in _error(path)
    path.write_text("- just\n- a list\n")
    assert "top level must be a mapping" in _error(path)
