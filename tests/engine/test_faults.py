"""Faults during a run: each must end with every key exactly once and the same outputs
as a clean run (or, for damaged input, a quarantined shard and a non-zero exit)."""

from __future__ import annotations

import re

import threading
import time

import pytest

from engine_support import (
    KillOnceFactory,
    assert_each_key_once,
    assert_tables_equal,
    make_config,
    output_table,
)

pytestmark = pytest.mark.ray


def _clean_run(shards, output, factory, **sections):
    from berg_scale.engine.run import run_generation

    result = run_generation(make_config(shards, output, **sections), model_factory=factory, show_progress=False)
    assert result.exit_code == 0
    return output_table(output, sections.get("storage"))


def test_worker_sigkilled_mid_shard_is_restarted_and_the_shard_redone(ray_session, tmp_path, stand_in_factory):
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 3, 4, seed=2)
    flag = tmp_path / "kill-once"
    flag.write_text("armed")
    config = make_config(str(tmp_path / "in"), str(tmp_path / "out"),
                         resources={"batch_size": 2}, retries={"max_worker_restarts": 2, "max_attempts": 3})
    result = run_generation(config, model_factory=KillOnceFactory(str(flag)), show_progress=False)

    assert not flag.exists(), "the worker must have killed itself once"
    assert result.exit_code == 0
    assert result.scheduler.worker_losses == 1
    table = output_table(str(tmp_path / "out"))
    assert_each_key_once(table, infos)
    assert_tables_equal(table, _clean_run(str(tmp_path / "in"), str(tmp_path / "clean"), stand_in_factory))
    attempts = {marker["attempt"] for marker in result.scheduler.done.values()}
    assert attempts == {1, 2}, "the killed shard was committed by its second attempt"


@pytest.mark.s3
def test_s3_server_restart_mid_run(ray_session, s3_server, s3_bucket, tmp_path):
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.synthetic.shards import write_synthetic_shards

    storage = s3_server.storage_options()
    infos = write_synthetic_shards(f"{s3_bucket}/in", 6, 4, storage=storage, seed=4)
    factory = FixedCostModelFactory(seconds_per_image=0.1)
    config = make_config(f"{s3_bucket}/in", f"{s3_bucket}/out", storage=storage,
                         resources={"batch_size": 2}, retries={"max_attempts": 8, "backoff_s": 0.5})
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", run_generation(config, model_factory=factory, show_progress=False))
    )
    thread.start()
    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listing = client.list_objects_v2(Bucket=bucket, Prefix="out/_done/")
        if listing.get("KeyCount", 0) >= 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail("no shard was committed before the restart")
    s3_server.restart(downtime=1.5)
    thread.join(timeout=300)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result.exit_code == 0, result.summary()
    table = output_table(f"{s3_bucket}/out", storage)
    assert_each_key_once(table, infos)
    clean = _clean_run(f"{s3_bucket}/in", str(tmp_path / "clean"), FixedCostModelFactory(), storage=storage,
                       resources={"batch_size": 2})
    assert_tables_equal(table, clean)


def test_truncated_tar_is_quarantined_and_the_rest_completes(ray_session, tmp_path, stand_in_factory, capsys):
    from berg_scale.cli import main
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.shards import write_corrupt_shard, write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=8)
    write_corrupt_shard(str(tmp_path / "in" / "shard-000009.tar"), "mid_member", n_images=4)
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output, retries={"max_attempts": 2, "backoff_s": 0.1})
    result = run_generation(config, model_factory=stand_in_factory, show_progress=False)

    assert result.exit_code == 1 and result.status == "incomplete"
    assert set(result.failed) == {"shard-000009"}
    failure = result.failed["shard-000009"]
    assert failure["attempts"] == 1 and "truncated" in failure["error"]  # damaged bytes: not retried
    assert_each_key_once(output_table(output), infos)
    assert (tmp_path / "out" / "_failed" / "shard-000009.json").exists()
    assert not (tmp_path / "out" / "_done" / "shard-000009.json").exists()

    capsys.readouterr()
    assert main(["status", output]) == 1  # a quarantined shard: non-zero for scripts
    printed = capsys.readouterr().out
    assert "2 done, 1 failed, 0 pending, of 3" in printed
    assert "shard-000009" in printed and "truncated" in printed
    # the rate says what it covers: processing from the first ready worker, then with start-up
    assert re.search(r"images/s of processing \(from the first ready worker; [0-9.]+ images/s including "
                     r"[0-9]+ s of start-up\)", printed)


def test_every_planted_image_defect_becomes_an_error_row_or_a_decoded_image(ray_session, tmp_path, stand_in_factory):
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.shards import DEFECT_KINDS, write_synthetic_shards

    defects = sorted(DEFECT_KINDS)
    infos = write_synthetic_shards(str(tmp_path / "in"), 2, len(defects) + 2, defects=defects, seed=9)
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output, retries={"error_rate_threshold": 1.0})
    result = run_generation(config, model_factory=stand_in_factory, show_progress=False)
    assert result.exit_code == 0

    table = output_table(output)
    assert_each_key_once(table, infos)
    rows = {row["key"]: row for row in table.to_pylist()}
    planted = {sample.key: sample for info in infos for sample in info.samples if sample.defect}
    assert sorted(sample.defect for sample in planted.values()) == defects
    for key, sample in planted.items():
        row = rows[key]
        if sample.decodes:
            assert row["status"] == "ok", (sample.defect, row["error"])
            assert row["stand-in/sub-01/all"] is not None
        else:
            assert row["status"] == "error", sample.defect
            assert sample.error_contains in row["error"], (sample.defect, row["error"])
            assert row["stand-in/sub-01/all"] is None and row["stand-in/sub-01/all:mean"] is None
    clean = [row for key, row in rows.items() if key not in planted]
    assert clean and all(row["status"] == "ok" for row in clean)


def test_models_that_cannot_load_fail_the_run_with_the_cause(ray_session, tmp_path):
    from berg_scale.engine.run import run_generation
    from berg_scale.errors import BergScaleError
    from berg_scale.synthetic.shards import write_synthetic_shards
    from engine_support import BrokenFactory

    write_synthetic_shards(str(tmp_path / "in"), 2, 1)
    config = make_config(str(tmp_path / "in"), str(tmp_path / "out"), resources={"workers": 2})
    with pytest.raises(BergScaleError, match="no worker could load the models: .*builtins.eval") as exc_info:
        run_generation(config, model_factory=BrokenFactory(), show_progress=False)
    assert "\n" not in str(exc_info.value)
