"""Configs and CLI that fit together: unions from mean columns, subjects and model from the
responses, present sections enabled, messages that name real options, a selector cache
sized to the study."""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from berg_scale.cli import main as cli_main
from berg_scale.commands import rnc as rnc_command
from berg_scale.errors import ConfigError
from berg_scale.io.output_store import OutputStore, write_readouts
from berg_scale.rnc import univariate
from berg_scale.rnc.config import load_config, parse_config
from berg_scale.rnc.responses import ResponsesError, ResponseStore, mean_column, response_column
from berg_scale.rnc.study import run_study
from berg_scale.rnc.synthetic import write_synthetic_output

from rnc_planted import MODEL

REPO = Path(__file__).resolve().parents[2]
FAST = {"baseline_batches": 2000, "n_bootstrap": 200, "n_permutations": 200}


# -- ROI unions from mean-only columns ---------------------------------------------------
@pytest.fixture(scope="module")
def fwrf_means(tmp_path_factory):
    """FFA-1, FFA-2 and V1 written as means only (as configs/fsaverage-1m.yaml does for FFA),
    with readouts.json described by the engine's own column descriptions."""
    import torch

    from berg_scale.io.response_writer import iter_descriptions
    from berg_scale.models import ModelSet, ReadoutSpec
    from berg_scale.synthetic.berg_root import make_synthetic_root

    base = tmp_path_factory.mktemp("fwrf_means")
    root = make_synthetic_root(base / "root", models=[MODEL], subjects=(1, 2), rois=("V1", "FFA-1", "FFA-2"),
                               fwrf_voxels=6, write_backbone=False, seed=1)
    specs = [ReadoutSpec(MODEL, s, {"roi": r}, outputs=("mean",)) for s in (1, 2) for r in ("V1", "FFA-1", "FFA-2")]
    model = ModelSet(str(root), specs, device="cpu")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 3, 64, 64), dtype=np.uint8))
    responses = model.forward(images)
    means = {name: np.asarray(values, dtype=np.float32) for name, values in responses.items()}
    out = base / "out"
    write_synthetic_output(str(out), means, n_shards=2)
    descriptions = iter_descriptions(model.columns, with_coords=True)
    write_readouts(OutputStore(str(out)), descriptions)
    return str(out), {d["name"]: d for d in descriptions}, means


def test_engine_mean_columns_carry_ncsnr_and_their_threshold(fwrf_means):
    _, descriptions, _ = fwrf_means
    entry = descriptions[mean_column(MODEL, 1, "FFA-1")]
    assert entry["kind"] == "mean" and entry["ncsnr_threshold"] == 0.5
    assert len(entry["coords"]["ncsnr"]) == 6  # one per voxel of the ROI; the value is unchanged (one float)


def test_ffa_union_from_mean_columns_is_the_voxel_weighted_mean(fwrf_means):
    url, descriptions, means = fwrf_means
    data = ResponseStore(url).read_univariate(MODEL, [1, 2], ["V1", "FFA"], threshold=0.5)
    for si, s in enumerate((1, 2)):
        counts = [int((np.asarray(descriptions[mean_column(MODEL, s, p)]["coords"]["ncsnr"]) > 0.5).sum())
                  for p in ("FFA-1", "FFA-2")]
        parts = [means[mean_column(MODEL, s, p)].astype(np.float64) for p in ("FFA-1", "FFA-2")]
        expected = (counts[0] * parts[0] + counts[1] * parts[1]) / sum(counts)
        np.testing.assert_allclose(data.values[:, si, 1], expected, rtol=1e-6)


def test_cli_univariate_with_default_subjects_and_an_ffa_union(fwrf_means, tmp_path, capsys):
    url, _, _ = fwrf_means
    code = cli_main(["rnc", "univariate", "--responses", url, "--out", str(tmp_path / "rnc"), "--rois", "V1", "FFA",
                     "--baseline-batches", "500", "--permutations", "100", "--bootstrap", "100", "--no-plots",
                     "--baseline-batch-size", "10"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[rnc] subjects 1, 2 (every subject of fmri-nsd-fwrf with these ROIs" in printed
    summary = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    assert summary["config"]["subjects"] == [1, 2] and summary["config"]["model_id"] == MODEL
    assert summary["univariate"]["params"]["baseline_batch_size"] == 10


def test_union_without_any_ncsnr_says_how_to_fix(tmp_path):
    columns = {mean_column(MODEL, 1, r): np.zeros(30) for r in ("V1", "FFA-1", "FFA-2")}
    write_synthetic_output(str(tmp_path), columns, n_shards=1)  # no ncsnr anywhere (an older output)
    with pytest.raises(ResponsesError, match=r"union 'FFA' weights its parts .*regenerate FFA-1") as info:
        ResponseStore(str(tmp_path)).read_univariate(MODEL, [1], ["V1", "FFA"])
    assert "\n" not in str(info.value)


def test_mean_generated_with_another_threshold_is_refused_with_the_fix(fwrf_means):
    url, _, _ = fwrf_means
    with pytest.raises(ResponsesError, match=r"ncsnr > 0.5 .* study uses ncsnr_threshold 0.3.*--ncsnr-threshold 0.5"):
        ResponseStore(url).read_univariate(MODEL, [1], ["V1", "FFA"], threshold=0.3)


# -- subjects and model from the responses ------------------------------------------------
def _two_model_output(tmp_path, subjects_rois):
    rng = np.random.default_rng(0)
    columns = {mean_column(MODEL, s, r): rng.normal(size=60) for s, rois in subjects_rois.items() for r in rois}
    write_synthetic_output(str(tmp_path / "out"), columns, n_shards=2)
    return str(tmp_path / "out")


def test_subjects_default_to_those_with_every_roi_and_say_who_was_left_out(tmp_path):
    url = _two_model_output(tmp_path, {1: ("V1", "hV4"), 2: ("V1", "hV4"), 5: ("V1",)})
    config = parse_config({"responses": url, "out_dir": str(tmp_path / "rnc"), "univariate": FAST | {
        "baseline_batch_size": 10}, "plots": {"enabled": False}})
    lines: list[str] = []
    summary = run_study(config, lines.append)
    assert summary["config"]["subjects"] == [1, 2]
    assert any("subjects 1, 2" in x and "sub-05 left out, it lacks hV4 (mean)" in x for x in lines)


def test_no_subject_with_the_rois_is_one_clear_error(tmp_path):
    url = _two_model_output(tmp_path, {1: ("V1",)})
    config = parse_config({"responses": url, "out_dir": str(tmp_path / "rnc"), "rois": ["V1", "PPA"]})
    with pytest.raises(ResponsesError, match=r"no subject of fmri-nsd-fwrf has columns for every ROI .*PPA"):
        run_study(config, lambda m: None)


# -- sections -----------------------------------------------------------------------------
def test_a_present_section_is_enabled_and_an_absent_or_disabled_one_says_so(tmp_path):
    base = {"responses": "x", "out_dir": "y"}
    assert parse_config({**base, "multivariate": {"generations": 3}}).multivariate.enabled
    assert parse_config({**base, "multivariate": None}).multivariate.enabled  # `multivariate:` alone
    absent = parse_config(base)
    assert not absent.multivariate.enabled and absent.univariate.enabled
    assert absent.section_states()["multivariate"].startswith("off (no multivariate: section")
    off = parse_config({**base, "multivariate": {"enabled": False}})
    assert off.section_states()["multivariate"] == "off (multivariate.enabled is false)"
    assert not parse_config({**base, "univariate": {"enabled": "false"}}).univariate.enabled


def test_rnc_run_runs_a_present_multivariate_block(tmp_path, capsys):
    rng = np.random.default_rng(2)
    n, voxels, ncsnr, means = 60, {}, {}, {}
    shared = rng.normal(size=(n, 4))
    for s in (1, 2):
        for roi, v in (("V1", 8), ("hV4", 6)):
            y = shared @ rng.normal(size=(4, v)) + rng.normal(size=(n, v))
            voxels[response_column(MODEL, s, roi)], ncsnr[response_column(MODEL, s, roi)] = y, np.ones(v)
            means[mean_column(MODEL, s, roi)] = y.mean(axis=1)
    write_synthetic_output(str(tmp_path / "out"), means, voxels, ncsnr, n_shards=2)
    study = tmp_path / "study.yaml"
    study.write_text(
        f"responses: {tmp_path / 'out'}\nout_dir: {tmp_path / 'rnc'}\n"
        "univariate:\n  baseline_batches: 500\n  baseline_batch_size: 10\n  n_bootstrap: 100\n"
        "  n_permutations: 100\n"
        "multivariate:\n  generations: 2\n  population: 10\n  batch_size: 10\n  baseline_batches: 300\n"
        "  n_bootstrap: 100\n  n_permutations: 50\n"
        "plots:\n  enabled: false\n"
    )
    assert cli_main(["rnc", "run", str(study)]) == 0
    printed = capsys.readouterr().out
    assert "multivariate V1-hV4 align" in printed and "held-out r=" in printed
    study.write_text(study.read_text().replace("multivariate:\n", "multivariate:\n  enabled: false\n"))
    assert cli_main(["rnc", "run", str(study)]) == 0
    assert "[rnc] multivariate: off (multivariate.enabled is false)" in capsys.readouterr().out


def test_shipped_study_config_loads_and_enables_what_it_writes():
    config = load_config(REPO / "configs" / "rnc_v1_hv4.yaml")
    assert config.univariate.enabled and config.multivariate.enabled


# -- messages name options that exist -----------------------------------------------------
def _rnc_options() -> set[str]:
    import argparse

    parser = argparse.ArgumentParser()
    rnc_command.configure(parser)
    options = set()
    for action in parser._subparsers._group_actions[0].choices.values():  # run, univariate, multivariate
        for sub in action._actions:
            options.update(o for o in sub.option_strings if o.startswith("--"))
    return options


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _demo_options() -> set[str]:
    import argparse

    from berg_scale.commands import demo as demo_command

    parser = argparse.ArgumentParser()
    demo_command.configure(parser)
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--")}


def test_every_option_and_setting_a_message_names_exists():
    options = _rnc_options() | _demo_options()  # messages also point at `demo --no-rnc`
    from berg_scale.rnc.config import StudyConfig

    sections = {name: set(StudyConfig.model_fields[name].annotation.model_fields)
                for name in ("univariate", "multivariate", "plots")}
    files = sorted((REPO / "berg_scale" / "rnc").glob("*.py")) + [REPO / "berg_scale" / "commands" / "rnc.py"]
    named_options, named_settings = set(), set()
    for path in files:
        for text in _string_constants(path):
            named_options.update(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
            named_settings.update(re.findall(r"\b(univariate|multivariate|plots)\.([a-z_]+)\b", text))
    assert {"--baseline-batch-size", "--batch-size", "--images", "--ncsnr-threshold"} <= named_options
    assert named_options - {"--set"} <= options, named_options - options
    for section, key in named_settings:
        assert key in sections[section], f"{section}.{key}"


def test_too_few_images_for_a_batch_names_the_setting_and_the_option(tmp_path):
    url = _two_model_output(tmp_path, {1: ("V1", "hV4"), 2: ("V1", "hV4")})
    config = parse_config({"responses": url, "out_dir": str(tmp_path / "rnc"), "plots": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"lower univariate.baseline_batch_size \(--baseline-batch-size\)"):
        run_study(config.model_copy(update={"univariate": config.univariate.model_copy(
            update={"baseline_batch_size": 61})}), lambda m: None)


# -- the selector computes each fold's train averages once --------------------------------
def test_selector_computes_one_train_average_per_fold_and_roi(monkeypatch):
    rois = ["V1", "V2", "V3", "hV4", "EBA", "FFA", "PPA", "RSC"]
    subjects = list(range(1, 9))
    n = 500
    values = np.random.default_rng(0).normal(size=(n, len(subjects), len(rois))).astype(np.float32)
    calls = []
    real = univariate.train_average

    def counting(values_, slots, roi_slot, *args, **kwargs):
        if values_.shape[0] == n:
            calls.append((tuple(slots), roi_slot))
        return real(values_, slots, roi_slot, *args, **kwargs)

    monkeypatch.setattr(univariate, "train_average", counting)
    folds = univariate.make_folds(subjects)
    pairs = list(itertools.combinations(rois, 2))
    requests = [univariate.SelectionRequest(f, p, c, 0.0, 0.0) for f in folds for p in pairs
                for c in univariate.CONDITIONS]
    assert len(folds) == 9 and len(pairs) == 28 and len(requests) == 1008
    select = univariate.in_memory_selector(values, subjects, rois, 25, 0.04)
    results = select(requests, np.empty(0, np.int64))
    assert len(calls) == 72 == len(set(calls))  # 8 ROIs x 9 folds (it was 360 with a 4-entry cache)
    # and the selections are those of computing every average afresh
    slot = {s: i for i, s in enumerate(subjects)}
    for req, (images, _) in list(zip(requests, results))[::97]:
        u1 = real(values, [slot[s] for s in req.fold.train], rois.index(req.pair[0]))
        u2 = real(values, [slot[s] for s in req.fold.train], rois.index(req.pair[1]))
        expected, _ = univariate.select_condition(u1, u2, 0.0, 0.0, req.condition, 0.04, 25)
        np.testing.assert_array_equal(images, expected)


def test_fsaverage_1m_output_feeds_the_shipped_fsaverage_study(tmp_path):
    """The mean columns configs/fsaverage-1m.yaml writes (FFA-1/FFA-2 and V1-V3 halves as means
    only) are what configs/rnc_fsaverage_rois.yaml reads, here for two of its subjects."""
    from berg_scale.config import load_config as load_run_config

    specs = [s for s in load_run_config(REPO / "configs" / "fsaverage-1m.yaml").readout_specs()
             if s.subject in (1, 2) and "mean" in s.outputs]
    rng = np.random.default_rng(3)
    means = {f"{s.column_base}:mean": rng.normal(size=80) for s in specs}
    ncsnr = {s.column_base: rng.uniform(0.2, 1.0, size=12) for s in specs}
    write_synthetic_output(str(tmp_path / "out"), means, ncsnr=ncsnr, n_shards=2)
    study = load_config(REPO / "configs" / "rnc_fsaverage_rois.yaml")
    study = study.model_copy(update={
        "responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "rnc"), "storage": study.storage.__class__(),
        "univariate": study.univariate.model_copy(update={**FAST, "baseline_batch_size": 10, "n_permutations": 20,
                                                          "n_bootstrap": 20}),
        "plots": study.plots.model_copy(update={"enabled": False}),
    })
    lines: list[str] = []
    summary = run_study(study, lines.append)
    assert summary["config"]["subjects"] == [1, 2]
    assert len({(r["roi_1"], r["roi_2"]) for r in summary["univariate"]["statistics"]}) == 28
    assert not study.multivariate.enabled and study.section_states()["multivariate"].startswith("off (no")
