"""The driver process is killed mid-run; running the same command again finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from engine_support import FSAVERAGE, FWRF, IMAGE_SIZE, assert_each_key_once, output_table, reference_responses

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _generate(config_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "berg_scale.cli", "generate", str(config_path), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_driver_killed_mid_run_then_rerun_resumes(tmp_path, engine_berg_root, engine_backbone):
    import numpy as np

    from berg_scale.config import load_config
    from berg_scale.models import ModelSet
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 6, 3, seed=12)
    output = tmp_path / "out"
    config = {
        "input": {"shards": str(tmp_path / "in"), "image_size": IMAGE_SIZE},
        "berg_root": engine_berg_root,
        "backbone": engine_backbone,
        "readouts": [{"model": FSAVERAGE, "subjects": [1], "rois": ["V1v"]},
                     {"model": FWRF, "subjects": [1], "rois": ["V1"], "outputs": ["mean"]}],
        "output": str(output),
        "resources": {"workers": 1, "batch_size": 3, "cpus_per_worker": 1},
    }
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))

    first = _generate(config_path, env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if list((output / "_done").glob("*.json")) if (output / "_done").exists() else []:
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stdout.read().decode()[-2000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group(first)
    time.sleep(2)  # a worker may still commit its in-flight shard (atomically) as Ray winds down
    committed_before = {p.stem for p in (output / "_done").glob("*.json")}
    assert 1 <= len(committed_before) < 6, "the driver must die mid-run"
    assert json.loads((output / "run.json").read_text())["status"] == "running"

    second = _generate(config_path, env)
    try:
        out, _ = second.communicate(timeout=400)
    finally:
        _kill_group(second)
    assert second.returncode == 0, out.decode()[-3000:]
    manifest = json.loads((output / "run.json").read_text())
    assert manifest["status"] == "complete"
    this_run = manifest["this_run"]
    skipped = this_run["shards_skipped_already_done"]
    assert len(committed_before) <= skipped < 6, "committed shards are skipped, the rest redone"
    assert this_run["shards_done"] == 6 - skipped
    assert manifest["shards"] == {"total": 6, "done": 6, "failed": 0}

    table = output_table(str(output))
    assert_each_key_once(table, infos)
    run_config = load_config(config_path)
    model = ModelSet(engine_berg_root, run_config.readout_specs(), device="cpu", backbone_path=engine_backbone)
    expected = reference_responses(model, infos)
    rows = {row["key"]: row for row in table.to_pylist()}
    for column, by_key in expected.items():
        for key, values in by_key.items():
            np.testing.assert_array_equal(np.asarray(rows[key][column], dtype=np.float32).reshape(values.shape), values)
