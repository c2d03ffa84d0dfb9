"""Shards on the loopback S3 server: written by the factory or make-shards, read back
byte-identical by webdataset's own tar iterator and by our streaming reader."""

from __future__ import annotations

import json

import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander, tar_file_iterator

from berg_scale.cli import main
from berg_scale.io.shard_reader import ShardReadError, iter_shard_samples, list_tar_shards
from berg_scale.io.storage import filesystem_for
from berg_scale.synthetic.shards import write_corrupt_shard, write_synthetic_shards

pytestmark = [
    pytest.mark.s3,
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture
def s3_defect_shards(s3_server, s3_bucket):
    return write_synthetic_shards(
        f"{s3_bucket}/stimuli",
        n_shards=2,
        images_per_shard=7,
        defects={"truncated_jpeg": 1, "cmyk": 1, "missing_image": 1, "zero_bytes": 1},
        seed=11,
        storage=s3_server.storage_options(),
        keep_bytes=True,
    )


def test_factory_shards_read_back_byte_identical_with_webdataset(s3_server, s3_defect_shards):
    storage = s3_server.storage_options()
    for info in s3_defect_shards:
        assert info.url.startswith("s3://")
        fs, path = filesystem_for(info.url, storage)
        with fs.open(path, "rb") as stream:
            members = [(m["fname"], m["data"]) for m in tar_file_iterator(stream)]
        assert [name for name, _ in members] == list(info.members)  # same order
        for name, data in members:
            assert data == info.members[name]
        with fs.open(path, "rb") as stream:
            files = tar_file_expander([{"stream": stream, "url": info.url}])
            samples = list(group_by_keys(files))
        assert [s["__key__"] for s in samples] == info.keys


@pytest.mark.parametrize("read_ahead", [0, 1 << 20])
def test_streaming_reader_on_s3_matches_what_was_written(
    s3_server, s3_defect_shards, read_ahead
):
    storage = s3_server.storage_options()
    for info in s3_defect_shards:
        samples = sorted(  # tar order; keys without an image are streamed last
            iter_shard_samples(
                info.url, storage, chunk_bytes=4096, read_ahead_bytes=read_ahead
            ),
            key=lambda sample: sample.index,
        )
        assert [s.key for s in samples] == info.keys
        for sample, expected in zip(samples, info.samples):
            if expected.image_ext:
                assert sample.image == info.members[f"{sample.key}.{expected.image_ext}"]
            else:
                assert sample.image is None and "no image member" in sample.error
            assert sample.json == json.loads(info.members[f"{sample.key}.json"])


def test_listing_and_defect_bookkeeping(s3_server, s3_bucket, s3_defect_shards):
    urls = list_tar_shards(f"{s3_bucket}/stimuli", s3_server.storage_options())
    assert urls == [info.url for info in s3_defect_shards]
    defects = {}
    for info in s3_defect_shards:
        defects.update(info.defects)
    assert sorted(defects.values()) == ["cmyk", "missing_image", "truncated_jpeg", "zero_bytes"]


@pytest.mark.timeout(60)
def test_truncated_shard_on_s3_raises(s3_server, s3_bucket):
    storage = s3_server.storage_options()
    info = write_corrupt_shard(f"{s3_bucket}/bad/shard-000000.tar", "mid_member", storage=storage)
    with pytest.raises(ShardReadError, match="truncated"):
        list(iter_shard_samples(info.url, storage, chunk_bytes=2048))


def test_make_shards_writes_to_s3(s3_server, s3_bucket, mixed_folder, capsys):
    src, good = mixed_folder
    dest = f"{s3_bucket}/packed"
    code = main(
        ["make-shards", str(src), dest, "--per-shard", "5", "--quiet",
         "--endpoint-url", s3_server.endpoint_url]
    )
    assert code == 0, capsys.readouterr().err
    storage = s3_server.storage_options()
    fs, path = filesystem_for(f"{dest}/manifest.json", storage)
    manifest = json.loads(fs.cat_file(path))
    assert manifest["n_images"] == len(good)
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    read_back = {}
    for shard in manifest["shards"]:
        for sample in iter_shard_samples(f"{dest}/{shard['name']}", storage):
            read_back[sample.json["source"]] = sample.image
    assert read_back == good
