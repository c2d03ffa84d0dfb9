"""Reading tar shards: WebDataset grouping, byte fidelity, damaged archives, read-ahead."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import pytest

from berg_scale.errors import BergScaleError
from berg_scale.io.shard_reader import (
    ReadAheadFile,
    ShardReadError,
    image_field,
    iter_shard_samples,
    list_tar_shards,
    read_shard,
    split_member_name,
)
from berg_scale.io.tar_writer import TarWriteError, write_tar
from berg_scale.synthetic.shards import CORRUPTIONS, write_corrupt_shard


@pytest.mark.parametrize(
    "read_options",
    [{"read_ahead_bytes": 0}, {"chunk_bytes": 1024, "read_ahead_bytes": 4096}, {}],
    ids=["synchronous", "tiny-chunks", "default"],
)
def test_samples_come_back_in_order_with_identical_bytes(defect_shards, read_options):
    for info in defect_shards:
        samples = read_shard(info.url, **read_options)
        assert [s.key for s in samples] == info.keys
        assert [s.index for s in samples] == list(range(len(info.keys)))
        for sample, expected in zip(samples, info.samples):
            assert sample.json == json.loads(info.members[f"{sample.key}.json"])
            if expected.image_ext is None:
                assert sample.image is None and sample.image_ext is None
                assert "no image member" in sample.error
            else:
                assert sample.error is None
                assert sample.image_ext == expected.image_ext
                assert sample.image == info.members[f"{sample.key}.{expected.image_ext}"]


def test_sample_unpacks_as_the_five_documented_fields(defect_shards):
    first = read_shard(defect_shards[0].url)[0]
    key, index, image, image_ext, label = first
    assert (key, index, image_ext) == (first.key, 0, first.image_ext)
    assert image is first.image and label["key"] == key


@pytest.mark.timeout(30)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("read_ahead", [0, 1 << 20])
def test_damaged_tar_raises_shard_read_error(tmp_path, corruption, read_ahead):
    info = write_corrupt_shard(str(tmp_path / "bad.tar"), corruption, n_images=6)
    seen = []
    with pytest.raises(ShardReadError) as caught:
        for sample in iter_shard_samples(info.url, chunk_bytes=1024, read_ahead_bytes=read_ahead):
            seen.append(sample.key)
    assert seen == info.keys[: len(seen)]  # nothing invented, nothing out of order
    assert isinstance(caught.value, BergScaleError)
    assert info.url in str(caught.value)


def test_missing_shard_and_folder_are_shard_read_errors(tmp_path):
    with pytest.raises(ShardReadError, match="no such shard"):
        read_shard(str(tmp_path / "nope.tar"))
    with pytest.raises(ShardReadError, match="folder"):
        read_shard(str(tmp_path))


def test_empty_file_and_empty_archive(tmp_path):
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(ShardReadError):
        read_shard(str(tmp_path / "zero.tar"))
    write_tar(str(tmp_path / "empty.tar"), [])
    assert read_shard(str(tmp_path / "empty.tar")) == []


@pytest.mark.parametrize(
    "name, expected",
    [
        ("abc.jpg", ("abc", "jpg")),
        ("dir/abc.seg.png", ("dir/abc", "seg.png")),
        ("dir.v1/abc.JPG", ("dir.v1/abc", "jpg")),
        ("noext", None),
        (".hidden.jpg", None),
        ("dir/.DS_Store", None),
        ("abc.", None),
    ],
)
def test_webdataset_key_rule(name, expected):
    assert split_member_name(name) == expected


def test_image_field_prefers_exact_extensions():
    assert image_field(["json", "seg.png", "jpg"]) == "jpg"
    assert image_field(["json", "seg.png"]) == "seg.png"
    assert image_field(["JPEG", "json"]) == "JPEG"  # also accepts unnormalised names
    assert image_field(["json", "cls", "txt"]) is None


def _tar_bytes(entries) -> bytes:
    """entries: (name, data) for files, (name, None, type) for other member types."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in entries:
            name, data = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = entry[2]
                if info.type == tarfile.SYMTYPE:
                    info.linkname = "a.jpg"
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_grouping_member_types_and_limits(tmp_path):
    path = tmp_path / "odd.tar"
    path.write_bytes(
        _tar_bytes(
            [
                ("folder", None, tarfile.DIRTYPE),
                ("a.JPG", b"A-image"),
                ("a.json", b'{"label": 1}'),
                ("a.seg.png", b"A-mask"),
                ("link.jpg", None, tarfile.SYMTYPE),
                ("b.cls", b"3"),
                ("b.json", b"not json"),
                ("c.png", b"C" * 5000),
                ("d.webp", b"D"),
                ("d.json", b"[1, 2]"),
                ("README", b"no dot, no sample"),
                ("a.jpg", b"A-again"),
            ]
        )
    )
    samples = read_shard(str(path), max_member_bytes=4096)
    # folders are skipped; a symbolic link named like an image is an error row naming it
    # (never followed); the late second image of key "a" gives no second row
    assert [s.key for s in samples] == ["a", "link", "b", "c", "d"]
    assert [s.index for s in samples] == [0, 1, 2, 3, 4]
    a = samples[0]
    assert (a.image, a.image_ext, a.json) == (b"A-image", "jpg", {"label": 1})
    assert any("extra image members" in note for note in a.notes)
    assert samples[1].image is None
    assert samples[1].error == "member 'link.jpg' is a symbolic link (not followed)"
    assert samples[2].error == "no image member (found: cls, json)"
    assert samples[2].json is None and "not valid JSON" in samples[2].notes[0]
    assert samples[3].image is None and "limit" in samples[3].error
    assert samples[4].image == b"D" and samples[4].json is None
    assert "not an object" in samples[4].notes[0]
    # streaming order: keys without an image member come after the others
    streamed = [s.key for s in iter_shard_samples(str(path), max_member_bytes=4096)]
    assert streamed == ["a", "link", "c", "d", "b"]


def test_storage_errors_propagate_unchanged():
    class FailingRaw(io.RawIOBase):
        def __init__(self):
            self.calls = 0

        def read(self, size=-1):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError("connection reset by peer")
            return b"x" * size

    for depth in (0, 2):
        handle = ReadAheadFile(FailingRaw(), chunk_bytes=1024, depth=depth)
        assert len(handle.read(1024)) == 1024
        with pytest.raises(ConnectionError):
            handle.read(10)
        handle.close()


def test_read_ahead_seeks_back_only_within_retained_chunks():
    data = bytes(range(256)) * 64  # 16 KiB
    handle = ReadAheadFile(io.BytesIO(data), chunk_bytes=1024, depth=3)
    assert handle.read(3000) == data[:3000]
    handle.seek(1500)
    assert handle.read(10) == data[1500:1510]
    handle.seek(10_000)
    assert handle.read(100) == data[10_000:10_100]
    with pytest.raises(io.UnsupportedOperation):
        handle.seek(100)
    assert handle.read() == data[10_100:]
    assert handle.read(5) == b""
    handle.close()


@pytest.mark.timeout(30)
def test_abandoning_a_shard_stops_the_read_ahead_thread(defect_shards):
    before = {t.ident for t in threading.enumerate()}
    iterator = iter_shard_samples(defect_shards[0].url, chunk_bytes=1024, read_ahead_bytes=2048)
    next(iterator)
    assert any(t.name == "shard-read-ahead" for t in threading.enumerate())
    iterator.close()
    leftover = [
        t for t in threading.enumerate() if t.ident not in before and t.name == "shard-read-ahead"
    ]
    assert not leftover


def test_list_tar_shards_is_sorted_and_ignores_other_files(tmp_path, defect_shards):
    for name in ("b.tar", "a.tar", "notes.txt", ".hidden.tar"):
        (tmp_path / name).write_bytes(b"")
    assert list_tar_shards(str(tmp_path)) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    assert list_tar_shards(str(tmp_path / "missing")) == []


def test_writer_refuses_unsafe_names(tmp_path):
    for name in ("/abs.jpg", "../up.jpg", "a/../b.jpg", "a//b.jpg", "x\x00.jpg", ""):
        with pytest.raises(TarWriteError):
            write_tar(str(tmp_path / "x.tar"), [(name, b"1")])
    assert not (tmp_path / "x.tar").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary files left behind


def test_long_and_unicode_keys_round_trip_through_pax_headers(tmp_path):
    key = "deep/" + "d" * 120 + "/bild-ä-" + "x" * 80
    url = str(tmp_path / "long.tar")
    written = write_tar(url, [(f"{key}.png", b"P" * 3000), (f"{key}.json", b"{}"), ("k2.jpg", b"J")])
    assert written.members == 3
    samples = read_shard(url, chunk_bytes=1024, read_ahead_bytes=2048)
    assert [(s.key, s.image) for s in samples] == [(key, b"P" * 3000), ("k2", b"J")]
    assert samples[0].json == {}


@pytest.mark.timeout(30)
def test_read_ahead_runs_no_further_than_its_depth_until_deepened():
    from berg_scale.io.read_ahead import ReadAhead

    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(pulled) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    reader = ReadAhead(source(), depth=1)
    try:
        wait_for(2)
        time.sleep(0.3)
        assert len(pulled) == 2  # one queued, one waiting to be queued
        reader.deepen(5)
        wait_for(6)
        time.sleep(0.3)
        assert len(pulled) == 6
        reader.deepen(2)  # never shallower
        assert [next(reader) for _ in range(3)] == [0, 1, 2]
        wait_for(9)
        time.sleep(0.3)
        assert len(pulled) == 9
        assert list(reader) == list(range(3, 100))
    finally:
        reader.close()


@pytest.mark.parametrize("compression", ["xz", "bzip2", "zstd"])
def test_a_tar_compressed_other_than_gzip_is_named(tmp_path, compression):
    import bz2
    import lzma
    import shutil
    import subprocess

    from berg_scale.io.shard_reader import ShardReadError

    plain = _tar_bytes([("a.jpg", b"A"), ("b.jpg", b"B")])
    path = tmp_path / "x.tar"
    if compression == "xz":
        path.write_bytes(lzma.compress(plain))
    elif compression == "bzip2":
        path.write_bytes(bz2.compress(plain))
    else:
        if shutil.which("zstd") is None:
            pytest.skip("needs the zstd tool")
        (tmp_path / "plain.tar").write_bytes(plain)
        subprocess.run(["zstd", "-q", "-o", str(path), str(tmp_path / "plain.tar")], check=True)
    with pytest.raises(ShardReadError, match=f"its bytes are {compression}-compressed.*{compression} -dc x.tar"):
        read_shard(str(path))
