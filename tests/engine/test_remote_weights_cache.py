"""A BERG root in object storage: each worker loads from the node-local cache, fetched once."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from engine_support import FWRF

pytestmark = pytest.mark.s3


def _upload_fwrf_files(engine_berg_root: str, s3_server, bucket_url: str):
    from berg_scale.models import ReadoutSpec
    from berg_scale.weights import files_for_readouts

    bucket = bucket_url.removeprefix("s3://")
    client = s3_server.client()
    spec = ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("responses", "mean"))
    for rel in files_for_readouts([spec]):
        client.upload_file(os.path.join(engine_berg_root, rel), bucket, f"berg/{rel}")
    return f"{bucket_url}/berg", spec


def test_remote_root_is_fetched_once_per_node_and_gives_identical_responses(
    engine_berg_root, s3_server, s3_bucket, tmp_path, monkeypatch
):
    from berg_scale.engine.model_factory import ModelSetFactory
    from berg_scale.models import ModelSet
    from berg_scale.weights.node_cache import LOG_NAME

    remote_root, spec = _upload_fwrf_files(engine_berg_root, s3_server, s3_bucket)
    monkeypatch.setenv("BERG_SCALE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    factory = ModelSetFactory(
        berg_root=remote_root, readouts=(spec,), storage=s3_server.storage_options()
    )

    local_root = factory.local_berg_root()
    assert local_root.startswith(str(tmp_path / "cache"))
    remote_model = factory.build("cpu")
    assert factory.local_berg_root() == local_root  # second worker on the node: no new fetch
    with open(os.path.join(local_root, LOG_NAME), encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) == 1

    images = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, size=(3, 3, 227, 227), dtype=np.uint8)
    )
    expected = ModelSet(engine_berg_root, [spec], device="cpu").forward(images)
    got = remote_model.forward(images)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
