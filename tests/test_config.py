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


def test_empty_outputs_are_refused_in_one_line():
    message = _error(_base(readouts=[{"model": "fmri-nsd-fwrf", "rois": ["V1"], "outputs": []}]))
    assert "readouts.0.outputs: list at least one of: responses, mean" in message


@pytest.mark.parametrize(
    ("readout", "expected"),
    [
        ({"model": "fmri-nsd-fwrf", "subjects": [], "rois": ["V1"]},
         "readouts.0.subjects: list at least one subject, or leave the field out (or write all)"),
        ({"model": "fmri-nsd_fsaverage-vit_b_32", "rois": []},
         "readouts.0.rois: list at least one ROI, or leave the field out for the model's whole output"),
        ({"model": "eeg-things_eeg_2-vit_b_32", "selections": []},
         "readouts.0.selections: list at least one selection, or leave the field out"),
        ({"model": "fmri-nsd-fwrf", "rois": []},
         "readouts.0.rois: list at least one ROI (fmri-nsd-fwrf needs one)"),
    ],
)
def test_empty_subject_and_selection_lists_are_refused_in_one_line(readout, expected):
    """An empty list would expand to no readout: no column, and a run that fails only after Ray started."""
    assert expected in _error(_base(readouts=[readout]))


def test_an_empty_list_set_on_the_command_line_is_refused_too():
    assert "readouts.0.subjects: list at least one subject" in _error(
        _base(), overrides=["readouts.0.subjects=[]"])


def test_leaving_subjects_and_selections_out_still_means_all():
    config = load_config(_base(readouts=[{"model": "fmri-nsd_fsaverage-vit_b_32"}]))
    specs = config.readout_specs()
    assert [s.subject for s in specs] == list(range(1, 9)) and {s.selection for s in specs} == {None}


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
    bracketed = load_config(_base(), overrides=["readouts[0].subjects=[2]"])  # the form people type
    assert {s.subject for s in bracketed.readout_specs()} == {2}


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


@pytest.mark.ray
def test_secrets_never_reach_run_json(ray_session, tmp_path):
    """run.json and the commit markers are written from the redacted dump."""
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 1)
    raw = _base(input={"shards": str(tmp_path / "in")}, output=str(tmp_path / "out"),
                storage={"key": "${BS_TEST_KEY}", "secret": "${BS_TEST_SECRET}"})
    raw["resources"] = {**raw.get("resources", {}), "workers": 1, "cpus_per_worker": 1}
    config = load_config(raw, environ={"BS_TEST_KEY": "key-abc", "BS_TEST_SECRET": "secret-xyz"})
    result = run_generation(config, model_factory=FixedCostModelFactory(), show_progress=False)
    assert result.exit_code == 0
    for path in [tmp_path / "out" / "run.json", *sorted((tmp_path / "out" / "_done").iterdir())]:
        text = path.read_text()
        assert "secret-xyz" not in text and "key-abc" not in text
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["config"]["storage"]["secret"] == "**********"


def test_not_yaml_and_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: [unclosed")
    assert "not valid YAML" in _error(path)
    path.write_text("- just\n- a list\n")
    assert "top level must be a mapping" in _error(path)


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_to_a_huge_document_are_refused_fast(tmp_path):
    import time

    path = tmp_path / "laughs.yaml"
    path.write_text(yaml.safe_dump(_base()) + _laughs(9))  # 10**9 values once expanded
    started = time.monotonic()
    message = _error(path)
    assert time.monotonic() - started < 5
    assert message.startswith(f"{path}: its aliases expand to more than 200,000 values")
    path.write_text(yaml.safe_dump(_base()) + "extra: &e [*e]\n")
    assert "an alias refers to the node that contains it" in _error(path)


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "input: {shards: 's3://bucket/shards/{000000..000009}.tar'}\nberg_root: /data/berg\n"
        "output: s3://bucket/out\n"
        "readouts:\n  - &fwrf {model: fmri-nsd-fwrf, subjects: [1], rois: [V1]}\n"
        "  - {<<: *fwrf, subjects: [2]}\n"
    )
    specs = load_config(path).readout_specs()
    assert [(s.subject, s.selection["roi"]) for s in specs] == [(1, "V1"), (2, "V1")]


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(_base()) + "output: s3://bucket/other\n")
    message = _error(path)
    assert f"{path}: line " in message and "key 'output' is given twice (first on line" in message


# --------------------------------------------------------------------------- strict edges


@pytest.mark.parametrize("section, field, value", [
    ("resources", "workers", True),
    ("resources", "batch_size", True),
    ("resources", "decode_threads", False),
    ("resources", "gpus_per_worker", True),
    ("resources", "cpus_per_worker", True),
    ("resources", "startup_timeout_s", True),
    ("retries", "max_attempts", True),
    ("retries", "error_rate_threshold", False),
    ("retries", "speculative_min_elapsed_s", True),
    ("retries", "max_worker_restarts", True),
    ("retries", "backoff_s", True),
    ("input", "image_size", True),
])
def test_booleans_are_not_numbers(section, field, value):
    raw = _base()
    raw.setdefault(section, {})[field] = value
    if section == "input":
        raw["input"] = {**raw["input"], field: value}
    message = _error(raw)
    assert f"{section}.{field}" in message and "not a boolean" in message


def test_booleans_are_not_subjects_or_thresholds():
    message = _error(_base(readouts=[{"model": "fmri-nsd-fwrf", "subjects": [True], "rois": ["V1"]}]))
    assert "readouts.0.subjects.0" in message and "not a boolean" in message
    message = _error(_base(readouts=[{"model": "fmri-nsd-fwrf", "rois": ["V1"], "ncsnr_threshold": True}]))
    assert "readouts.0.ncsnr_threshold" in message and "not a boolean" in message


def test_booleans_given_on_the_command_line_are_refused_too():
    message = _error(_base(), overrides=["resources.workers=true"])
    assert "resources.workers" in message and "not a boolean" in message


def test_numbers_are_not_booleans():
    for section, field in (("retries", "speculative_tail"), ("storage", "anon"), ("resources", "exact_resize")):
        raw = _base()
        raw[section] = {field: 1}
        message = _error(raw)
        assert f"{section}.{field}" in message and "true or false" in message


def test_numbers_still_accept_what_they_did():
    config = load_config(_base(resources={"workers": 4, "gpus_per_worker": 1, "cpus_per_worker": 2.5,
                                          "exact_resize": True},
                               retries={"backoff_s": 0, "speculative_tail": False}))
    assert config.resources.workers == 4 and config.resources.gpus_per_worker == 1.0
    assert config.retries.backoff_s == 0.0 and config.retries.speculative_tail is False
    # Values from ${VAR} are strings; numeric ones keep working.
    config = load_config(_base(resources={"workers": "${BS_WORKERS}", "batch_size": "${BS_BATCH:-32}"}),
                         environ={"BS_WORKERS": "8"})
    assert config.resources.workers == 8 and config.resources.batch_size == 32


def test_floats_refuse_nan_and_infinity():
    for value in (float("nan"), float("inf")):
        message = _error(_base(resources={"startup_timeout_s": value}))
        assert "resources.startup_timeout_s" in message


def test_backoff_is_capped():
    from berg_scale.config import MAX_BACKOFF_S

    assert load_config(_base(retries={"backoff_s": MAX_BACKOFF_S})).retries.backoff_s == MAX_BACKOFF_S
    message = _error(_base(retries={"backoff_s": 7200}))
    assert "retries.backoff_s" in message and "300" in message


def test_scheduler_wait_between_attempts_never_exceeds_the_cap(tmp_path):
    """The wait grows with the attempt number; with many attempts it stops at the cap."""
    from berg_scale.config import MAX_BACKOFF_S
    from berg_scale.engine.scheduler import Execution, RetryPolicy, ShardScheduler, WorkerSlot
    from berg_scale.io.output_store import OutputStore
    from berg_scale.io.shard_listing import InputShard

    shard = InputShard(name="shard-000000", url=str(tmp_path / "shard-000000.tar"), relative="shard-000000.tar")
    policy = RetryPolicy(max_attempts=100, backoff_s=MAX_BACKOFF_S)
    scheduler = ShardScheduler([], [shard], OutputStore(str(tmp_path / "out")), policy, clock=lambda: 1000.0)
    scheduler.pending.clear()
    slot = WorkerSlot(index=0, handle=None)
    for attempt, expected in ((1, MAX_BACKOFF_S), (50, MAX_BACKOFF_S)):
        scheduler.attempts[shard.name] = attempt
        scheduler._attempt_failed(Execution(shard, attempt, slot, started=0.0), "boom", transient=True)
        assert scheduler.not_before[shard.name] - 1000.0 == expected
    small = ShardScheduler([], [shard], OutputStore(str(tmp_path / "out")), RetryPolicy(backoff_s=2.0),
                           clock=lambda: 0.0)
    small.attempts[shard.name] = 2
    small._attempt_failed(Execution(shard, 2, slot, started=0.0), "boom", transient=True)
    assert small.not_before[shard.name] == 4.0


def test_env_default_is_used_when_unset_or_empty():
    raw = _base(output="${BS_OUT:-s3://bucket/default-out}", berg_root="${BS_ROOT:-/data/berg}/v1")
    assert load_config(raw, environ={}).output == "s3://bucket/default-out"
    assert load_config(raw, environ={"BS_OUT": ""}).output == "s3://bucket/default-out"
    config = load_config(raw, environ={"BS_OUT": "s3://bucket/mine", "BS_ROOT": "/mnt/berg"})
    assert config.output == "s3://bucket/mine" and config.berg_root == "/mnt/berg/v1"
    assert load_config(_base(output="/out/${BS_EMPTY:-}x"), environ={}).output == "/out/x"


@pytest.mark.parametrize("text", ["${BS_OUT-default}", "${BS OUT}", "${1BS}", "${}", "${BS_OUT:=x}",
                                  "/out/${BS_OUT", "${BS_OUT:-${BS_OTHER}}"])
def test_malformed_env_references_are_refused(text, tmp_path):
    message = _error(_base(output=text), environ={"BS_OUT": "x", "BS_OTHER": "y"})
    assert message.startswith("output: ")
    assert "${NAME}" in message or "literal default" in message
    assert not (tmp_path / "${BS_OUT:-").exists()


def test_env_defaults_for_secrets_stay_hidden():
    raw = _base(storage={"key": "${BS_KEY:-default-key-123}", "secret": "${BS_SECRET:-hidden-secret-456}"})
    config = load_config(raw, environ={})
    assert config.storage_options().secret == "hidden-secret-456"
    dumped = json.dumps(config.redacted())
    assert "hidden-secret-456" not in dumped and "default-key-123" not in dumped
    message = _error(_base(storage={"secret": "${BS_SECRET:-oops-secret"}), environ={})
    assert "storage.secret" in message and "oops-secret" not in message


def test_cli_reports_config_edges_as_one_line(tmp_path, capsys):
    from berg_scale.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_base(resources={"workers": True})))
    assert main(["plan", str(path), "--images", "10"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "resources.workers" in err and "not a boolean" in err
    path.write_text(yaml.safe_dump(_base(output="${BS_UNSET_OUT:-")))
    assert main(["plan", str(path), "--images", "10"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unterminated environment reference" in err


# --------------------------------------------------------------------------- relative paths


def _write_config(folder, raw) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    raw = _base(input={"shards": ["shards/{000000..000002}.tar", "more/*.tar"]},
                berg_root="../berg", backbone="weights/vit.pth", output="./out")
    path = _write_config(tmp_path / "project" / "configs", raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    folder = tmp_path / "project" / "configs"
    assert config.input.shards == [str(folder / "shards/{000000..000002}.tar"), str(folder / "more/*.tar")]
    assert config.berg_root == str(tmp_path / "project" / "berg")
    assert config.backbone == str(folder / "weights" / "vit.pth")
    assert config.output == str(folder / "out")


def test_relative_config_path_itself_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    _write_config(tmp_path / "p", _base(output="out"))
    monkeypatch.chdir(tmp_path)
    assert load_config("p/run.yaml").output == str(tmp_path / "p" / "out")


def test_urls_and_absolute_paths_are_left_as_written(tmp_path):
    raw = _base(input={"shards": "file:///data/shards/{000000..000009}.tar"},
                berg_root="s3://brain-encoding-response-generator", backbone="~/vit.pth",
                output=str(tmp_path / "abs-out"))
    config = load_config(_write_config(tmp_path / "c", raw))
    assert config.input.shards == "file:///data/shards/{000000..000009}.tar"
    assert config.berg_root == "s3://brain-encoding-response-generator"
    assert config.backbone == "~/vit.pth"
    assert config.output == str(tmp_path / "abs-out")


def test_overrides_and_dicts_keep_paths_as_typed(tmp_path):
    path = _write_config(tmp_path / "c", _base(berg_root="berg", output="out"))
    config = load_config(path, overrides=["output=cli-out", "input={shards: cli-shards}"])
    assert config.output == "cli-out" and config.input.shards == "cli-shards"
    assert config.berg_root == str(tmp_path / "c" / "berg")  # not overridden: from the file
    assert load_config(_base(berg_root="berg")).berg_root == "berg"


def test_env_references_are_substituted_before_paths_resolve(tmp_path):
    path = _write_config(tmp_path / "c", _base(berg_root="${ROOT}/berg", output="${OUT:-out}"))
    config = load_config(path, environ={"ROOT": "/mnt/data"})
    assert config.berg_root == "/mnt/data/berg"
    assert config.output == str(tmp_path / "c" / "out")


def test_rnc_study_paths_resolve_against_the_study_file(tmp_path, monkeypatch):
    from berg_scale.rnc.config import load_config as load_study

    folder = tmp_path / "studies"
    folder.mkdir()
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump({
        "responses": "../generated", "out_dir": "rnc-out",
        "plots": {"images": "s3://bucket/shards"},
    }))
    monkeypatch.chdir(tmp_path)
    config = load_study(study)
    assert config.responses == str(tmp_path / "generated")
    assert config.out_dir == str(folder / "rnc-out")
    assert config.plots.images == "s3://bucket/shards"
    assert load_study(study, overrides=["out_dir=typed"]).out_dir == "typed"


def test_model_settings_reach_the_workers_factory(tmp_path):
    from berg_scale.engine.model_factory import ModelSetFactory

    config = load_config({
        "input": {"shards": str(tmp_path)}, "berg_root": str(tmp_path / "berg"), "output": str(tmp_path / "out"),
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
        "resources": {"precision": "bf16", "compile": True, "exact_resize": True, "batch_size": 7},
    })
    factory = ModelSetFactory.from_config(config)
    assert (factory.precision, factory.compile, factory.exact_resize, factory.batch_size) == ("bf16", True, True, 7)
    assert factory.berg_root == str(tmp_path / "berg") and len(factory.readouts) == 1
    assert ModelSetFactory.from_config(load_config({**config.model_dump(mode="json"),
                                                    "resources": {}})).compile is False
    with pytest.raises(ConfigError, match="resources.compile"):
        load_config({**config.model_dump(mode="json"), "resources": {"compile": "yes please"}})
