"""Storage settings per URL prefix, and anonymous reads of BERG's public bucket."""

from __future__ import annotations

import dataclasses

import pytest

from berg_scale.config import load_config
from berg_scale.errors import ConfigError
from berg_scale.io.storage import BERG_PUBLIC_BUCKET, StorageOptions, filesystem_for

READOUTS = [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}]


def _config(storage: dict) -> dict:
    return {"input": {"shards": "in/x.tar"}, "berg_root": "berg", "readouts": READOUTS,
            "output": "out", "storage": storage}


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """An environment where botocore would find no credentials at all."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config").write_text("[default]\nregion = eu-west-1\n")  # a region is no credential
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))


def test_berg_public_bucket_is_anonymous_without_credentials(no_credentials):
    options = StorageOptions()
    berg = options.for_url(f"{BERG_PUBLIC_BUCKET}/encoding_models/x")
    assert berg.anon and berg.region == "us-west-2"
    assert berg.s3fs_kwargs()["anon"] is True
    assert not options.for_url("s3://someone-else/x").anon
    assert not options.for_url(f"{BERG_PUBLIC_BUCKET}-mirror/x").anon


def test_configured_credentials_are_used_for_berg_too(no_credentials, monkeypatch, tmp_path):
    explicit = StorageOptions(key="k", secret="s").for_url(BERG_PUBLIC_BUCKET)
    assert not explicit.anon and explicit.s3fs_kwargs()["key"] == "k"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    assert not StorageOptions().for_url(BERG_PUBLIC_BUCKET).anon
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    assert not StorageOptions().for_url(BERG_PUBLIC_BUCKET).anon


def test_longest_matching_prefix_wins_and_inherits_nothing():
    inner = StorageOptions(endpoint_url="http://127.0.0.1:2")
    outer = StorageOptions(endpoint_url="http://127.0.0.1:3", region="r3")
    options = StorageOptions(endpoint_url="http://127.0.0.1:1", key="k", secret="s",
                             prefixes=(("s3://a/", outer), ("s3://a/deep/", inner)))
    assert options.for_url("s3://a/deep/x.tar") is inner
    assert options.for_url("s3a://a/other.tar") is outer
    assert options.for_url("s3://ab/x.tar").endpoint_url == "http://127.0.0.1:1"
    assert inner.key is None  # nothing comes over from the default block


def test_a_single_storage_block_still_loads_and_prefix_blocks_are_validated():
    single = load_config(_config({"endpoint_url": "http://127.0.0.1:9", "region": "eu"})).storage_options()
    assert (single.endpoint_url, single.region, single.prefixes) == ("http://127.0.0.1:9", "eu", ())
    combined = load_config(_config({
        "endpoint_url": "http://127.0.0.1:9",
        "prefixes": {f"{BERG_PUBLIC_BUCKET}/": {"anon": True, "region": "us-west-2"}},
    })).storage_options()
    assert combined.for_url(f"{BERG_PUBLIC_BUCKET}/x").endpoint_url is None
    assert combined.for_url("s3://shards/x").endpoint_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="not a URL with a bucket"):
        load_config(_config({"prefixes": {"bucket-a": {"anon": True}}}))
    with pytest.raises(ConfigError, match="endpont: unknown key"):
        load_config(_config({"prefixes": {"s3://a/": {"endpont": "x"}}}))


@pytest.mark.s3
def test_each_bucket_is_read_with_its_own_settings(s3_server, s3_bucket):
    """Default settings with wrong credentials; the prefix block has the right ones."""
    good = s3_server.storage_options()
    bad = dataclasses.replace(good, key="wrong", secret="wrong")
    s3_server.client().put_object(Bucket=s3_bucket[5:], Key="a/x.txt", Body=b"hello")
    other = s3_bucket + "-other"
    s3_server.client().create_bucket(Bucket=other[5:])
    s3_server.client().put_object(Bucket=other[5:], Key="y.txt", Body=b"hi")

    options = dataclasses.replace(bad, prefixes=((f"{s3_bucket}/", good),))
    fs, path = filesystem_for(f"{s3_bucket}/a/x.txt", options)
    assert fs.cat_file(path) == b"hello"
    fs, path = filesystem_for(f"{other}/y.txt", options)
    with pytest.raises((PermissionError, OSError)):
        fs.cat_file(path)
    swapped = dataclasses.replace(good, prefixes=((f"{s3_bucket}/", bad),))
    fs, path = filesystem_for(f"{other}/y.txt", swapped)
    assert fs.cat_file(path) == b"hi"
