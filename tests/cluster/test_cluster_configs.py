"""Every cluster file validates against the schema its tool expects."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from kuberay_fields import check_manifest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def _ray_schema() -> dict:
    import ray

    path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(path) as handle:
        return json.load(handle)


def _load(path: Path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def test_every_yaml_in_cluster_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {f.name for f in files} >= {"aws-gpu.yaml", "raycluster.yaml", "rayjob-generate.yaml", "rayjob-rnc.yaml"}
    for path in files:
        assert isinstance(_load(path), dict), path


def test_aws_launcher_config_matches_rays_schema():
    config = _load(CLUSTER / "aws-gpu.yaml")
    jsonschema.validate(config, _ray_schema())
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"], "the head must stay on-demand"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "a GPU worker type is required"
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types.values())
    for node_type in gpu_types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
    assert any("pip install -e" in command for command in config["setup_commands"])


def test_aws_launcher_config_passes_rays_own_validation():
    """What `ray up` runs before it launches anything: defaults filled in, then checked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(CLUSTER / "aws-gpu.yaml")))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_spot"]["resources"] == {"CPU": 8, "GPU": 1}
    broken = copy.deepcopy(_load(CLUSTER / "aws-gpu.yaml"))
    broken["head_node_type"] = "head_node"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_the_schema_check_catches_a_misspelled_field():
    config = _load(CLUSTER / "aws-gpu.yaml")
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_spot"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_schema())


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_uses_known_crd_fields(path):
    assert check_manifest(_load(path)) == []


def test_kuberay_check_rejects_unknown_fields_and_missing_gpus():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    broken = copy.deepcopy(doc)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    broken["spec"]["headGroupSpec"]["rayStartParam"] = {}
    container = broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"].pop("nvidia.com/gpu")
    problems = check_manifest(broken)
    assert any("maxReplica: unknown" in p for p in problems)
    assert any("rayStartParam: unknown" in p for p in problems)
    assert any("nvidia.com/gpu" in p for p in problems)
    job = _load(CLUSTER / "kuberay" / "rayjob-generate.yaml")
    job["spec"]["runtimeEnv"] = {}
    job["spec"]["runtimeEnvYAML"] = {"env_vars": {}}
    problems = check_manifest(job)
    assert any("runtimeEnv: unknown" in p for p in problems)
    assert any("runtimeEnvYAML" in p for p in problems)


def test_ray_versions_agree_everywhere():
    import ray

    versions = {ray.__version__}
    for path in KUBERAY:
        doc = _load(path)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        versions.add(spec["rayVersion"])
        text = path.read_text()
        versions.update(re.findall(r"berg-scale:[\w.]+-ray([\d.]+\d)", text))
    versions.update(re.findall(r"rayproject/ray:([\d.]+\d)-", (CLUSTER / "Dockerfile").read_text()))
    versions.update(re.findall(r"ray\[[\w,]+\]==([\d.]+\d)", (CLUSTER / "aws-gpu.yaml").read_text()))
    assert len(versions) == 1, f"Ray versions differ: {sorted(versions)}"


@pytest.mark.parametrize("name, script", [("rayjob-generate.yaml", "generate.py"), ("rayjob-rnc.yaml", "rnc.py")])
def test_rayjob_entrypoint_names_a_job_and_a_shipped_config(name, script):
    job = _load(CLUSTER / "kuberay" / name)
    runtime_env = yaml.safe_load(job["spec"].get("runtimeEnvYAML", "{}"))
    assert set(runtime_env) <= {"env_vars", "working_dir", "pip", "py_modules", "config"}
    entry, config = job["spec"]["entrypoint"].split()[1:3]
    assert entry.endswith(f"jobs/{script}") and (REPO / "jobs" / script).exists()
    assert (REPO / "configs" / Path(config).name).exists(), config
