"""The Ray Job entry points on a real (local, loopback) head node, submitted as users do:

    ray job submit --address http://127.0.0.1:<port> --working-dir . -- python jobs/<x>.py <config>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_head import RayHead

REPO = Path(__file__).resolve().parents[2]
FWRF = "fmri-nsd-fwrf"
SUBJECTS = [1, 2, 3]
ROIS = ["V1", "hV4"]

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _entry_point(name: str) -> Path:
    path = REPO / "jobs" / name
    if not path.exists():
        pytest.skip(f"jobs/{name} is not in the tree yet")
    return path


def _job_server_available() -> bool:
    """Ray's job server runs in the dashboard, which only `ray[default]` installs."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("aiohttp_cors", "opencensus", "grpc"))


@pytest.fixture(scope="module")
def head():
    if not _job_server_available():
        pytest.skip("Ray Jobs need the dashboard: pip install 'ray[default]' (same version as ray)")
    node = RayHead(num_cpus=2, num_gpus=1).start()
    yield node
    node.stop()


def _submit(head: RayHead, script: str, config: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    runtime_env = {"excludes": [".git", ".venv", "**/__pycache__", "*.parquet", "benchmarks"]}
    command = [
        ray, "job", "submit", "--address", head.address, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env), "--", "python", f"jobs/{script}", str(config),
    ]
    result = subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, (
        f"ray job submit failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        f"\nhead log:\n{head.log_tail()}"
    )
    return result


@pytest.fixture(scope="module")
def generated(head, tmp_path_factory):
    """A small generation job: fwRF V1/hV4, 3 subjects, 2 shards of 6 images."""
    _entry_point("generate.py")
    from berg_scale.synthetic.berg_root import make_synthetic_root
    from berg_scale.synthetic.shards import write_synthetic_shards

    work = tmp_path_factory.mktemp("ray_jobs")
    root = make_synthetic_root(work / "berg", models=[FWRF], subjects=SUBJECTS, rois=ROIS,
                               fwrf_voxels=12, seed=7, write_backbone=False)
    infos = write_synthetic_shards(str(work / "in"), 2, 6, seed=3)
    config = {
        "input": {"shards": str(work / "in"), "image_size": 64},
        "berg_root": str(root),
        "readouts": [{"model": FWRF, "subjects": SUBJECTS, "rois": ROIS, "outputs": ["responses", "mean"]}],
        "output": str(work / "out"),
        "resources": {"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1, "batch_size": 4,
                      "decode_threads": 1},
        "retries": {"max_attempts": 2, "backoff_s": 0.2, "speculative_tail": False},
    }
    path = work / "generate.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _submit(head, "generate.py", path)
    return {"work": work, "output": work / "out", "infos": infos, "log": result.stdout}


def test_generation_job_completes_on_a_head_node(generated):
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = generated["output"]
    assert "succeeded" in generated["log"].lower()
    done = sorted(p.name for p in (output / "_done").glob("*.json"))
    assert len(done) == 2
    table = pa.concat_tables(pq.read_table(p) for p in sorted((output / "responses").glob("*.parquet")))
    expected = sorted(key for info in generated["infos"] for key in info.keys)
    assert sorted(table.column("key").to_pylist()) == expected
    assert set(table.column("status").to_pylist()) == {"ok"}
    for subject in SUBJECTS:
        for roi in ROIS:
            assert f"{FWRF}/sub-{subject:02d}/{roi}:mean" in table.column_names
    assert (output / "run.json").exists() and (output / "readouts.json").exists()
    manifest = json.loads((output / "run.json").read_text())
    assert str(manifest["ray_job"]).startswith("raysubmit_"), "run.json names the job that `ray job stop` takes"
    assert not (output / "_lease.json").exists(), "the job released the output"


def test_rnc_job_completes_on_a_head_node(head, generated):
    _entry_point("rnc.py")
    work = generated["work"]
    study = {
        "responses": str(generated["output"]),
        "out_dir": str(work / "rnc"),
        "model_id": FWRF,
        "subjects": SUBJECTS,
        "rois": ROIS,
        # distributed: the per-shard selection runs as Ray tasks on the head node's cluster.
        "univariate": {"n_images": 2, "baseline_batches": 200, "baseline_batch_size": 2,
                       "n_bootstrap": 50, "n_permutations": 50, "distributed": True},
        "plots": {"enabled": False},
    }
    path = work / "rnc.yaml"
    path.write_text(yaml.safe_dump(study))
    result = _submit(head, "rnc.py", path)
    assert "succeeded" in result.stdout.lower()
    summary = json.loads((work / "rnc" / "summary.json").read_text())
    assert summary["n_images"] == 12 and len(summary["shards"]) == 2
    assert {b["roi"] for b in summary["univariate"]["baselines"]} == set(ROIS)
    tables = list((work / "rnc" / "univariate").glob("*.parquet"))
    assert tables, "the RNC job wrote no result tables"
