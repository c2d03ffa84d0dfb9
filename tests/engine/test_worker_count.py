"""How many workers a run starts, and on what: from the config and the Ray cluster's
resources as they are at start, which on an autoscaling cluster may hold no GPU yet."""

from __future__ import annotations

import pytest

from berg_scale.config import load_config
from berg_scale.engine.worker_pool import resolve_worker_count
from berg_scale.errors import ConfigError


def _config(**resources):
    return load_config({
        "input": {"shards": "/data/shards"},
        "berg_root": "/data/berg",
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
        "output": "/data/out",
        "resources": resources,
    })


@pytest.fixture
def cluster_resources(monkeypatch):
    import ray

    def set_resources(**resources):
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))
    return set_resources


def test_gpus_present_give_one_worker_each(cluster_resources):
    cluster_resources(CPU=64, GPU=8)
    assert resolve_worker_count(_config(), 100) == (8, 1.0)
    assert resolve_worker_count(_config(), 3) == (3, 1.0)  # no more workers than shards
    assert resolve_worker_count(_config(device="cpu", cpus_per_worker=4), 100) == (16, 0.0)


def test_a_local_ray_without_gpus_refuses_cuda_at_once(cluster_resources):
    cluster_resources(CPU=8)
    with pytest.raises(ConfigError, match="device is 'cuda' but this machine has no GPU that Ray sees"):
        resolve_worker_count(_config(device="cuda", workers=2), 10, cluster=False)
    assert resolve_worker_count(_config(cpus_per_worker=2), 10, cluster=False) == (4, 0.0)


def test_an_autoscaling_cluster_without_gpus_yet(cluster_resources):
    cluster_resources(CPU=4)  # a head node only: GPU nodes come when workers wait for them
    said: list[str] = []
    assert resolve_worker_count(_config(device="cuda", workers=8), 100, cluster=True, log=said.append) == (8, 1.0)
    assert "8 GPU worker(s) asked for and 0 GPU(s) up now" in said[-1]
    with pytest.raises(ConfigError, match="workers is 'auto', which counts the cluster's GPUs"):
        resolve_worker_count(_config(device="cuda"), 100, cluster=True)
    # device auto on such a cluster: CPU workers, and a warning that says how to get GPUs
    assert resolve_worker_count(_config(), 100, cluster=True, log=said.append) == (4, 0.0)
    assert "no GPUs now, so workers: auto starts 4 CPU worker(s)" in said[-1]
    assert "resources.device: cuda and resources.workers: N" in said[-1]
