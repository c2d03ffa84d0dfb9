"""The test infrastructure itself: loopback S3 with enforced credentials, Ray on loopback."""

from __future__ import annotations

import os

import pytest


def test_environment_is_offline():
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.s3
def test_s3_server_is_loopback_and_enforces_credentials(s3_server, s3_bucket):
    import boto3
    from botocore.exceptions import ClientError

    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    if not os.environ.get("S3_ENDPOINT_URL"):
        assert s3_server.kind == "seaweedfs"
    bucket = s3_bucket.removeprefix("s3://")
    s3_server.client().put_object(Bucket=bucket, Key="a/b.txt", Body=b"payload")
    wrong = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="not-a-user",
        aws_secret_access_key="wrong",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError):
        wrong.get_object(Bucket=bucket, Key="a/b.txt")


@pytest.mark.s3
def test_fsspec_roundtrip_through_storage_options(s3_server, s3_bucket):
    from berg_scale.io.storage import filesystem_for, join

    url = join(s3_bucket, "dir", "file.bin")
    fs, path = filesystem_for(url, s3_server.storage_options())
    payload = os.urandom(3000)
    with fs.open(path, "wb") as handle:
        handle.write(payload)
    fs2, path2 = filesystem_for(url, s3_server.storage_options())
    assert fs2.cat_file(path2) == payload


@pytest.mark.ray
def test_ray_simulates_gpus_on_loopback(ray_session):
    ray = ray_session
    assert ray.cluster_resources().get("GPU") == 2

    @ray.remote(num_gpus=1)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_runtime_context().get_node_id()

    devices = ray.get([visible.remote(), visible.remote()])
    assert all(dev is not None for dev, _ in devices)
    node_ip = ray.util.get_node_ip_address()
    assert node_ip == "127.0.0.1"


def test_a_test_server_refuses_a_port_another_server_holds(tmp_path):
    """Otherwise the other server would answer the readiness probe in its place."""
    import socket

    from berg_scale.testing.s3_server import LOOPBACK, S3Server

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} .* in use"):
            S3Server(str(tmp_path), port).start()
