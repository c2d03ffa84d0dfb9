"""Scheduling: GPU pinning, speculative tail execution, resume and fingerprint guards."""

from __future__ import annotations

import json

import pytest

from engine_support import SlowOnceFactory, assert_each_key_once, assert_tables_equal, make_config, output_table

pytestmark = pytest.mark.ray


def test_two_simulated_gpus_two_pinned_workers_both_work(ray_session, tmp_path):
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 6, 2, seed=1)
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output, resources={"workers": "auto", "gpus_per_worker": 1})
    result = run_generation(config, model_factory=FixedCostModelFactory(seconds_per_image=0.1), show_progress=False)
    assert result.exit_code == 0
    assert_each_key_once(output_table(output), infos)

    workers = {}
    for marker_file in (tmp_path / "out" / "_done").glob("*.json"):
        worker = json.loads(marker_file.read_text())["worker"]
        workers.setdefault(worker["worker"], worker)
    assert len(workers) == 2, "both workers must have committed shards"
    gpu_ids = {tuple(w["ray_gpu_ids"]) for w in workers.values()}
    visible = {w["cuda_visible_devices"] for w in workers.values()}
    assert len(gpu_ids) == 2 and all(len(ids) == 1 for ids in gpu_ids)
    assert len(visible) == 2 and None not in visible
    assert {w["pid"] for w in workers.values()}.__len__() == 2
    assert all(w["device"] == "cpu" for w in workers.values())  # simulated GPUs: CPU compute
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert {tuple(w["ray_gpu_ids"]) for w in manifest["workers"]} == gpu_ids
    assert all(w["shards_done"] >= 1 for w in manifest["workers"])


def test_straggler_is_executed_speculatively_and_rows_are_not_duplicated(ray_session, tmp_path, stand_in_factory):
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 4, 2, seed=6)
    flag = tmp_path / "slow-once"
    flag.write_text("armed")
    output = str(tmp_path / "out")
    config = make_config(
        str(tmp_path / "in"), output,
        resources={"workers": 2, "batch_size": 1},
        retries={"speculative_tail": True, "speculative_min_elapsed_s": 0.5},
    )
    result = run_generation(config, model_factory=SlowOnceFactory(str(flag), slow_seconds=2.5), show_progress=False)
    assert result.exit_code == 0
    assert result.scheduler.speculative_started >= 1
    assert result.scheduler.speculative_won >= 1
    table = output_table(output)
    assert_each_key_once(table, infos)
    staging = tmp_path / "out" / "_tmp"
    left = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
    assert not left, f"no staging files may be left behind: {left}"
    clean_output = str(tmp_path / "clean")
    run_generation(make_config(str(tmp_path / "in"), clean_output, resources={"batch_size": 1}),
                   model_factory=stand_in_factory, show_progress=False)
    assert_tables_equal(table, output_table(clean_output))


def test_resume_skips_committed_shards_and_guards_against_changed_config_or_model(
    ray_session, tmp_path, stand_in_factory
):
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.errors import ConfigError
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 3, 2, seed=3)
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output)
    first = run_generation(config, model_factory=stand_in_factory, show_progress=False)
    assert first.stats.shards_done == 3
    reference = output_table(output)

    again = run_generation(config, model_factory=stand_in_factory, show_progress=False)
    assert again.status == "nothing-to-do" and again.stats.shards_skipped == 3

    (tmp_path / "out" / "_done" / "shard-000001.json").unlink()
    resumed = run_generation(config, model_factory=stand_in_factory, show_progress=False)
    assert resumed.stats.shards_done == 1 and resumed.stats.shards_skipped == 2
    assert set(resumed.scheduler.done) == {"shard-000001"}
    assert_each_key_once(output_table(output), infos)
    assert_tables_equal(output_table(output), reference)

    changed = make_config(str(tmp_path / "in"), output, input={"image_size": 96})
    with pytest.raises(ConfigError, match="different config.*--overwrite"):
        run_generation(changed, model_factory=stand_in_factory, show_progress=False)

    (tmp_path / "out" / "_done" / "shard-000002.json").unlink()
    with pytest.raises(ConfigError, match="different model"):
        run_generation(config, model_factory=FixedCostModelFactory(n_units=7), show_progress=False)

    overwritten = run_generation(changed, overwrite=True, model_factory=stand_in_factory, show_progress=False)
    assert overwritten.stats.shards_done == 3 and overwritten.stats.shards_skipped == 0
    assert_each_key_once(output_table(output), infos)
