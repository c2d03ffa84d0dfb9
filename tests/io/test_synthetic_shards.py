"""The stimulus-shard factory: deterministic, honest about what it planted."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from berg_scale.io.shard_reader import read_shard
from berg_scale.synthetic.shards import DEFECT_KINDS, write_synthetic_shards


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    one = write_synthetic_shards(str(tmp_path / "a"), 2, 5, seed=7)
    two = write_synthetic_shards(str(tmp_path / "b"), 2, 5, seed=7)
    three = write_synthetic_shards(str(tmp_path / "c"), 2, 5, seed=8)
    for x, y in zip(one, two):
        assert (tmp_path / "a" / x.name).read_bytes() == (tmp_path / "b" / y.name).read_bytes()
    assert one[0].member_sha256 != three[0].member_sha256


def test_names_keys_sizes_and_formats(tmp_path):
    sizes = ((17, 9), (64, 48))
    infos = write_synthetic_shards(
        str(tmp_path), 3, 4, sizes=sizes, formats=("jpg", "png", "webp"), prefix="part-"
    )
    assert [i.name for i in infos] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    keys = [k for i in infos for k in i.keys]
    assert len(set(keys)) == 12 and all("." not in k for k in keys)
    for position, sample in enumerate(s for i in infos for s in read_shard(i.url)):
        assert sample.image_ext == ("jpg", "png", "webp")[position % 3]
        width, height = sizes[position % 2]
        assert Image.open(io.BytesIO(sample.image)).size == (width, height)
        assert sample.json["width"] == width and sample.json["key"] == sample.key
        assert 0 <= sample.json["label"] < 10


def test_defects_as_counts_are_placed_and_reported(tmp_path):
    infos = write_synthetic_shards(
        str(tmp_path), 2, 10, defects={"not_image": 2, "grayscale": 3}, seed=1
    )
    planted = [d for i in infos for d in i.defects.values()]
    assert sorted(planted) == ["grayscale"] * 3 + ["not_image"] * 2
    errors = {k: v for i in infos for k, v in i.expected_errors.items()}
    assert set(errors.values()) == {DEFECT_KINDS["not_image"].error_contains}
    assert sum(len(i.expected_ok) for i in infos) == 18


def test_impossible_defect_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown defects"):
        write_synthetic_shards(str(tmp_path), 1, 3, defects=["melted"])
    with pytest.raises(ValueError, match="do not fit"):
        write_synthetic_shards(str(tmp_path), 1, 2, defects={"cmyk": 3})


def test_prefix_with_dots_still_gives_valid_keys(tmp_path):
    (info,) = write_synthetic_shards(str(tmp_path), 1, 2, prefix="set.v2-")
    assert info.name == "set.v2-000000.tar"
    assert [s.key for s in read_shard(info.url)] == ["set_v2000000-000000", "set_v2000000-000001"]
