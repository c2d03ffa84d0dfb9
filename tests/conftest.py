"""Shared fixtures: environment hygiene, a loopback S3 server, a local Ray.

Hygiene runs at import time, before any test module can create an AWS client or
start Ray, so no test can reach a cloud metadata address or a public endpoint.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest

from berg_scale.testing.env import apply_test_environment

apply_test_environment()

_bucket_counter = itertools.count()


@pytest.fixture(scope="session")
def s3_server():
    """One S3 server per test session: SeaweedFS on 127.0.0.1 (moto only as fallback)."""
    from berg_scale.testing.s3_server import start_test_server

    server = start_test_server()
    print(f"\n[berg-scale tests] S3 server: {server.kind} at {server.endpoint_url}", file=sys.stderr)
    os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint_url
    yield server
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server.close()


def pytest_report_header(config):
    from berg_scale.testing.s3_server import weed_binary

    endpoint = os.environ.get("S3_ENDPOINT_URL")
    if endpoint:
        kind = os.environ.get("S3_SERVER_KIND", "external")
        return f"S3 server: {kind} at {endpoint} (started by the caller)"
    return f"S3 server: {'seaweedfs (' + weed_binary() + ')' if weed_binary() else 'moto (seaweedfs missing)'}"


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket per test; returns its URL `s3://<name>`."""
    name = f"t{os.getpid()}-{next(_bucket_counter)}-{request.node.name[:30]}".lower()
    name = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name).strip("-")[:63]
    s3_server.client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """Local Ray bound to loopback with 2 simulated GPUs and a small object store."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=4,
        num_gpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()
