"""How tars from real tools are read: one row per key whatever the member order, hard
links, links and special files, undecodable names, bad sidecars, GIFs, gzip shards.

Archives are made with GNU tar (as users make them) and with Python's tarfile (for
layouts GNU tar cannot be asked for directly)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from berg_scale.errors import ConfigError
from berg_scale.io.decode import ALLOWED_FORMATS, decode_batch_cpu
from berg_scale.io.shard_listing import list_shards
from berg_scale.io.shard_reader import (
    IMAGE_EXTENSIONS,
    ShardReadError,
    escape_name,
    iter_shard_samples,
    list_tar_shards,
    read_shard,
    split_member_name,
)
from berg_scale.synthetic.shards import encode, synthetic_image

needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")


def _gnu_tar(archive: Path, src: Path, *names: str, options: tuple[str, ...] = ()) -> Path:
    """`tar cf archive -C src names...` (all of `src` as `.` when no names are given)."""
    command = ["tar", "cf", str(archive), *options, "-C", str(src)]
    command += ["--no-recursion", *names] if names else ["."]
    subprocess.run(command, check=True, capture_output=True)
    return archive


def _python_tar(path: Path, entries, mode: str = "w", **options) -> Path:
    """entries: (name, bytes) files, or (name, None, type, linkname) other members."""
    with tarfile.open(path, mode, **options) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if entry[1] is None:
                info.type = entry[2]
                info.linkname = entry[3] if len(entry) > 3 else ""
                archive.addfile(info)
            else:
                info.size = len(entry[1])
                archive.addfile(info, io.BytesIO(entry[1]))
    return path


def _png(seed: int, size: int = 24) -> bytes:
    return encode(synthetic_image(np.random.default_rng(seed), size, size), "png")


def _write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _member_types(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as opened:
        return {member.name: member.type for member in opened}


def _assert_valid_text(samples) -> None:
    """What the Parquet writer needs: every string encodes as UTF-8 (no lone surrogates)."""
    for sample in samples:
        for text in (sample.key, sample.image_ext or "", sample.error or "", *sample.notes):
            text.encode("utf-8")


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "name, expected",
    [
        ("./abc.jpg", ("abc", "jpg")),
        ("././sub/./x.seg.png", ("sub/x", "seg.png")),
        ("/abs/x.png", ("abs/x", "png")),
        ("a//b.png", ("a/b", "png")),
        ("./.hidden.jpg", None),
        (".", None),
        ("caf\udce9.jpg", ("caf%E9", "jpg")),
        ("100%41.png", ("100%41", "png")),  # a literal % is kept
    ],
)
def test_member_names_are_normalised_before_the_key_split(name, expected):
    assert split_member_name(name) == expected


def test_escape_rule_writes_each_undecodable_byte_as_percent_hex():
    raw = b"a\xff-\xc3\xa4-\xe9\x80-\xed\xa0\x80.jpg"  # bad, valid, cut short, a UTF-16 surrogate
    decoded = raw.decode("utf-8", "surrogateescape")
    assert escape_name(decoded) == "a%FF-\u00e4-%E9%80-%ED%A0%80.jpg"
    assert escape_name("plain-ä.png") == "plain-ä.png"
    assert escape_name("x\ud800y") == "x%ED%A0%80y"  # any lone surrogate, however it arrived


@needs_gnu_tar
@pytest.mark.parametrize("tar_format", ["gnu", "pax", "ustar"])
def test_a_folder_tarred_with_gnu_tar_gives_each_image_once(tmp_path, tar_format):
    src = tmp_path / "src"
    images, sidecars = {}, {}
    for i in range(30):
        key = f"sub/{i:03d}" if i % 5 == 0 else f"{i:03d}"
        images[key] = _write(src / f"{key}.png", _png(i))
        sidecars[key] = {"key": key, "label": i}
        _write(src / f"{key}.json", json.dumps(sidecars[key]).encode())
    archive = _gnu_tar(tmp_path / "dir.tar", src, options=(f"--format={tar_format}",))
    assert all(name == "." or name.startswith("./") for name in _member_types(archive))

    samples = read_shard(str(archive), chunk_bytes=2048, read_ahead_bytes=8192)
    assert sorted(s.key for s in samples) == sorted(images)  # no "./", no second row
    assert [s.index for s in samples] == list(range(len(images)))
    for sample in samples:
        assert sample.error is None and sample.image == images[sample.key]
        # a sidecar archived before (or next to) its image is attached; one that comes
        # only after the row was given out is not (see docs/engine.md)
        assert sample.json in (None, sidecars[sample.key])

    # sorted archives keep each sample's members adjacent: every sidecar is attached
    tidy = _gnu_tar(tmp_path / "sorted.tar", src, options=(f"--format={tar_format}", "--sort=name"))
    assert {s.key: s.json for s in read_shard(str(tidy))} == sidecars


def test_members_of_one_key_far_apart_become_one_sample(tmp_path):
    a, b, b_again, e = b"A-image", b"B-image", b"B-second", b"E-image"
    path = _python_tar(
        tmp_path / "scattered.tar",
        [
            ("a.json", b'{"k": "a"}'),
            ("b.png", b),
            ("c.cls", b"3"),
            ("b.json", b'{"k": "b"}'),  # after b's row was given out: ignored
            ("./a.png", a),  # merges with a.json held since the start
            ("./c.json", b'{"k": "c"}'),
            ("d.json", b'{"k": "d"}'),
            ("b.png", b_again),  # a second image of b: no second row
            ("e.jpg", e),
            ("e.json", b'{"k": "e"}'),
        ],
    )
    streamed = list(iter_shard_samples(str(path)))
    assert [s.key for s in streamed] == ["b", "a", "e", "c", "d"]  # imageless keys last
    samples = read_shard(str(path))
    assert [(s.key, s.index) for s in samples] == [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4)]
    by_key = {s.key: s for s in samples}
    assert (by_key["a"].image, by_key["a"].json) == (a, {"k": "a"})
    assert (by_key["b"].image, by_key["b"].json) == (b, None)
    assert (by_key["e"].image, by_key["e"].json) == (e, {"k": "e"})
    assert by_key["c"].error == "no image member (found: cls, json)"
    assert by_key["c"].json == {"k": "c"}
    assert by_key["d"].error == "no image member (found: json)"
    assert by_key["d"].image is None


def test_the_same_file_under_two_spellings_is_one_row(tmp_path):
    path = _python_tar(tmp_path / "twice.tar", [("./x.jpg", b"first"), ("x.jpg", b"second"), ("x.png", b"P")])
    [sample] = read_shard(str(path))
    assert (sample.key, sample.image, sample.image_ext) == ("x", b"first", "jpg")
    assert "duplicate member 'x.jpg' ignored" in sample.notes
    assert "extra image members ignored: png" in sample.notes


def test_keys_waiting_for_their_images_are_bounded(tmp_path):
    sidecar = json.dumps({"caption": "x" * 1000}).encode()
    entries = [(f"{i:03d}.json", sidecar) for i in range(40)]
    entries += [(f"{i:03d}.jpg", f"img{i}".encode()) for i in range(40)]
    path = _python_tar(tmp_path / "json-first.tar", entries)

    samples = read_shard(str(path))  # the default bound holds these easily
    assert len(samples) == 40 and all(s.error is None and s.json for s in samples)
    assert [s.image for s in samples] == [f"img{i}".encode() for i in range(40)]

    with pytest.raises(ShardReadError) as caught:
        read_shard(str(path), max_pending_bytes=20_000)
    message = str(caught.value)
    assert "'0" in message and "above the 20000-byte limit" in message
    assert "berg-scale make-shards" in message and "tar --sort=name" in message


# --------------------------------------------------------------------------- member types


@needs_gnu_tar
@pytest.mark.parametrize(
    "compressed, options, path_taken",
    [
        (False, {}, "held chunks"),
        (False, {"chunk_bytes": 1024, "read_ahead_bytes": 0}, "range read"),
        (True, {}, "remembered bytes"),
        (True, {"chunk_bytes": 1024, "read_ahead_bytes": 0, "link_cache_bytes": 0}, "second pass"),
    ],
)
def test_hard_links_resolve_to_the_bytes_they_link_to(tmp_path, monkeypatch, compressed, options, path_taken):
    from fsspec.implementations.local import LocalFileSystem

    src = tmp_path / "src"
    rng = np.random.default_rng(5)
    first = _write(src / "a.jpg", rng.bytes(3000))
    big = _write(src / "big.png", rng.bytes(64 * 1024))  # random: gzip cannot shrink it
    (src / "sub").mkdir()
    os.link(src / "a.jpg", src / "b.jpg")
    os.link(src / "big.png", src / "sub" / "c.png")
    suffix, flags = (".tar.gz", ("-z",)) if compressed else (".tar", ())
    archive = _gnu_tar(tmp_path / f"links{suffix}", src, "a.jpg", "big.png", "b.jpg", "sub/c.png",
                       options=flags)
    types = _member_types(archive)
    assert types["b.jpg"] == types["sub/c.png"] == tarfile.LNKTYPE

    range_reads = []
    original = LocalFileSystem.cat_file

    def counting_cat_file(self, path, start=None, end=None, **kwargs):
        range_reads.append((start, end))
        return original(self, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", counting_cat_file)
    samples = {s.key: s for s in read_shard(str(archive), **options)}
    assert sorted(samples) == ["a", "b", "big", "sub/c"]
    assert samples["b"].image == first and samples["b"].image_ext == "jpg"
    assert samples["sub/c"].image == big and samples["big"].image == big
    assert all(s.error is None for s in samples.values())
    assert bool(range_reads) == (path_taken == "range read")


@needs_gnu_tar
@pytest.mark.s3
@pytest.mark.parametrize("suffix", [".tar", ".tgz"])
def test_hard_links_and_gzip_shards_on_s3(tmp_path, s3_server, s3_bucket, suffix):
    from berg_scale.io.tar_writer import upload_bytes

    src = tmp_path / "src"
    rng = np.random.default_rng(7)
    first = _write(src / "a.png", rng.bytes(5000))
    _write(src / "filler.png", rng.bytes(40_000))
    os.link(src / "a.png", src / "b.png")
    flags = ("-z",) if suffix == ".tgz" else ()
    archive = _gnu_tar(tmp_path / f"s{suffix}", src, "a.png", "filler.png", "b.png", options=flags)
    storage = s3_server.storage_options()
    url = f"{s3_bucket}/in/s{suffix}"
    upload_bytes(url, archive.read_bytes(), storage)
    # tiny chunks and no read-ahead: the link's target is out of reach of the stream, so
    # it is fetched again (a ranged GET, or a second pass over the gzip stream)
    samples = {
        s.key: s
        for s in read_shard(url, storage, chunk_bytes=2048, read_ahead_bytes=0, link_cache_bytes=0)
    }
    assert sorted(samples) == ["a", "b", "filler"]
    assert samples["b"].image == first == samples["a"].image


def test_a_hard_link_to_nothing_earlier_is_an_error_row(tmp_path):
    path = _python_tar(
        tmp_path / "dangling.tar",
        [("a.jpg", b"A"), ("b.jpg", None, tarfile.LNKTYPE, "missing.jpg"),
         ("c.json", None, tarfile.LNKTYPE, "later.json"), ("c.png", b"C"), ("later.json", b"{}")],
    )
    samples = {s.key: s for s in read_shard(str(path))}
    assert samples["b"].error == (
        "member 'b.jpg' is a hard link to 'missing.jpg', which is not a regular file "
        "earlier in the archive"
    )
    assert samples["c"].image == b"C" and samples["c"].json is None
    assert any("hard link to 'later.json'" in note for note in samples["c"].notes)


@needs_gnu_tar
def test_symlinks_and_fifos_from_gnu_tar_are_error_rows_naming_the_member(tmp_path):
    src = tmp_path / "src"
    image = _write(src / "a.jpg", _png(1))
    _write(src / "a.json", b'{"ok": true}')
    os.symlink("a.jpg", src / "s.jpg")
    os.symlink("a.json", src / "p.json")  # a sidecar symlink beside a real image
    _write(src / "p.png", _png(2))
    os.symlink("a.jpg", src / "notes.txt")  # not an image or json: no row of its own
    os.mkfifo(src / "f.png")
    archive = _gnu_tar(tmp_path / "special.tar", src, "a.jpg", "a.json", "s.jpg", "p.json", "p.png",
                       "notes.txt", "f.png")
    samples = {s.key: s for s in read_shard(str(archive))}
    assert sorted(samples) == ["a", "f", "p", "s"]
    assert samples["a"].image == image and samples["a"].json == {"ok": True}
    assert samples["s"].error == "member 's.jpg' is a symbolic link (not followed)"
    assert samples["f"].error == "member 'f.png' is a FIFO (named pipe)"
    assert samples["p"].error is None and samples["p"].json is None
    assert "member 'p.json' is a symbolic link (not followed)" in samples["p"].notes


def test_devices_and_unknown_member_types_are_error_rows(tmp_path):
    path = _python_tar(
        tmp_path / "devices.tar",
        [("c.jpg", None, tarfile.CHRTYPE), ("b.png", None, tarfile.BLKTYPE),
         ("d", None, tarfile.DIRTYPE), ("d/x.webp", b"W")],
    )
    samples = {s.key: s for s in read_shard(str(path))}
    assert sorted(samples) == ["b", "c", "d/x"]
    assert samples["c"].error == "member 'c.jpg' is a character device"
    assert samples["b"].error == "member 'b.png' is a block device"
    assert samples["d/x"].image == b"W"


# --------------------------------------------------------------------------- names, sidecars, formats


@needs_gnu_tar
@pytest.mark.parametrize("tar_format", ["gnu", "pax", "ustar"])
def test_undecodable_name_bytes_become_escaped_keys(tmp_path, tar_format):
    src = tmp_path / "src"
    os.makedirs(src)
    latin = _png(3)
    Path(os.fsdecode(bytes(src) + b"/caf\xe9.jpg")).write_bytes(latin)
    Path(os.fsdecode(bytes(src) + b"/caf\xe9.json")).write_bytes(b'{"n": 1}')
    _write(src / "ok-ä.png", _png(4))
    _write(src / "100%41.png", _png(5))
    os.symlink(b"caf\xe9.jpg", bytes(src) + b"/bad\xff.jpg")
    archive = _gnu_tar(tmp_path / "names.tar", src, options=(f"--format={tar_format}", "--sort=name"))

    samples = {s.key: s for s in read_shard(str(archive))}
    assert sorted(samples) == sorted(["caf%E9", "ok-ä", "100%41", "bad%FF"])
    assert samples["caf%E9"].image == latin and samples["caf%E9"].json == {"n": 1}
    assert samples["bad%FF"].error == "member './bad%FF.jpg' is a symbolic link (not followed)"
    _assert_valid_text(samples.values())


def test_names_written_in_another_encoding_are_escaped_not_fatal(tmp_path):
    path = _python_tar(
        tmp_path / "latin1.tar",
        [("café.jpg", b"J"), ("naïve.png", None, tarfile.SYMTYPE, "café.jpg"),
         ("ok.json", b"{}"), ("ok.png", b"P")],
        format=tarfile.GNU_FORMAT,
        encoding="latin-1",
    )
    samples = read_shard(str(path))
    assert [s.key for s in samples] == ["caf%E9", "na%EFve", "ok"]
    assert samples[1].error == "member 'na%EFve.png' is a symbolic link (not followed)"
    _assert_valid_text(samples)
    import pyarrow as pa

    pa.array([s.key for s in samples]).cast(pa.large_string())  # Parquet-ready strings


def test_a_sidecar_that_cannot_be_parsed_is_a_note(tmp_path, monkeypatch):
    deep = ("[" * 5000 + "]" * 5000).encode()  # 10 KB, 5,000 levels
    assert len(deep) == 10_000
    path = _python_tar(
        tmp_path / "sidecars.tar",
        [("deep.jpg", b"D"), ("deep.json", deep), ("latin.png", b"L"), ("latin.json", b'{"a": "\xe9"}'),
         ("other.webp", b"O"), ("other.json", b'{"fine": 1}')],
    )
    samples = {s.key: s for s in read_shard(str(path))}
    assert samples["deep"].image == b"D" and samples["deep"].json is None
    assert samples["deep"].notes == ("json member is nested too deeply to parse",)
    assert samples["latin"].notes == ("json member is not valid JSON",)
    assert samples["other"].json == {"fine": 1}

    def broken_parser(raw):
        raise MemoryError("parser ran out of memory")

    monkeypatch.setattr(json, "loads", broken_parser)
    again = {s.key: s for s in read_shard(str(path))}
    assert all(s.image is not None and s.json is None for s in again.values())
    assert again["other"].notes == ("json member could not be parsed (MemoryError)",)


def test_every_documented_decode_format_counts_as_an_image_member(tmp_path):
    extension_of = {"JPEG": "jpg", "MPO": "mpo", "PNG": "png", "WEBP": "webp", "BMP": "bmp",
                    "TIFF": "tif", "GIF": "gif"}
    assert set(ALLOWED_FORMATS) <= set(extension_of)
    assert all(extension_of[name] in IMAGE_EXTENSIONS for name in ALLOWED_FORMATS)

    frame = Image.fromarray(synthetic_image(np.random.default_rng(6), 32, 20))
    buffer = io.BytesIO()
    frame.save(buffer, "GIF")
    gif = buffer.getvalue()
    path = _python_tar(tmp_path / "gif.tar", [("g.gif", gif), ("g.json", b"{}"), ("h.GIF", gif)])
    samples = read_shard(str(path))
    assert [(s.key, s.image_ext, s.error) for s in samples] == [("g", "gif", None), ("h", "gif", None)]
    decoded = decode_batch_cpu([s.image for s in samples], 16)
    assert decoded.errors == [None, None]


# --------------------------------------------------------------------------- compressed shards


def _sample_folder(root: Path) -> dict[str, bytes]:
    return {f"{i:02d}": _write(root / f"{i:02d}.png", _png(10 + i)) for i in range(8)}


@needs_gnu_tar
@pytest.mark.parametrize(
    "read_options",
    [{"read_ahead_bytes": 0}, {"chunk_bytes": 1024, "read_ahead_bytes": 4096}, {}],
    ids=["synchronous", "tiny-chunks", "default"],
)
def test_gzip_shards_read_like_plain_ones(tmp_path, read_options):
    src = tmp_path / "src"
    images = _sample_folder(src)
    plain = _gnu_tar(tmp_path / "x.tar", src, options=("--sort=name",))
    made_by_tar = _gnu_tar(tmp_path / "x.tar.gz", src, options=("--sort=name", "-z"))
    made_by_python = _python_tar(tmp_path / "y.tgz", [(f"{k}.png", v) for k, v in images.items()], "w:gz")
    disguised = tmp_path / "z.tar"  # gzip bytes under a plain name: recognised by content
    disguised.write_bytes(made_by_tar.read_bytes())

    expected = [(key, images[key]) for key in sorted(images)]
    for shard in (plain, made_by_tar, made_by_python, disguised):
        samples = read_shard(str(shard), **read_options)
        assert [(s.key, s.image) for s in samples] == expected, shard.name
    assert list_tar_shards(str(tmp_path)) == [str(tmp_path / n) for n in ("x.tar", "x.tar.gz", "y.tgz", "z.tar")]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "crc", "not-gzip", "trailing-garbage"])
def test_damaged_gzip_streams_raise_shard_read_error(tmp_path, damage):
    rng = np.random.default_rng(8)
    good = _python_tar(tmp_path / "good.tgz", [(f"{i}.png", rng.bytes(20_000)) for i in range(6)], "w:gz")
    data = good.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
    elif damage == "crc":
        # the stream's checksum no longer matches: some byte of the shard is wrong, even
        # if the tar structure and every image still look intact
        data = data[:-8] + bytes([data[-8] ^ 0x01]) + data[-7:]
    elif damage == "not-gzip":
        data = b"this is not gzip at all\n" * 100
    else:
        data = data + b"PK\x03\x04 junk after the gzip stream"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data)
    seen = []
    with pytest.raises(ShardReadError) as caught:
        for sample in iter_shard_samples(str(bad), chunk_bytes=4096, read_ahead_bytes=8192):
            seen.append(sample.key)
    assert str(bad) in str(caught.value)
    assert seen == [str(i) for i in range(len(seen))]  # whatever came before was real
    if damage in ("not-gzip", "trailing-garbage", "crc"):
        assert "damaged gzip stream" in str(caught.value)
    if damage == "crc":
        assert seen == [str(i) for i in range(5)]  # the last sample waits for the check
        assert "CRC check failed" in str(caught.value)


@pytest.mark.timeout(30)
def test_abandoning_a_gzip_shard_stops_both_read_ahead_threads(tmp_path):
    rng = np.random.default_rng(9)
    path = _python_tar(tmp_path / "big.tgz", [(f"{i}.png", rng.bytes(50_000)) for i in range(20)], "w:gz")
    before = {t.ident for t in threading.enumerate()}
    iterator = iter_shard_samples(str(path), chunk_bytes=4096, read_ahead_bytes=16384)
    next(iterator)
    assert sum(t.name == "shard-read-ahead" for t in threading.enumerate()) >= 2
    iterator.close()
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.name == "shard-read-ahead"]
    assert not leftover


# --------------------------------------------------------------------------- listing


def test_plain_and_compressed_shards_of_one_stem_get_distinct_output_names(tmp_path):
    for name in ("x.tar", "x.tar.gz", "x.tgz", "sub/y.tgz"):
        _write(tmp_path / name, b"")
    shards = list_shards(str(tmp_path))
    assert [(s.name, s.relative) for s in shards] == [
        ("sub__y.tgz", "sub/y.tgz"), ("x", "x.tar"), ("x.tar.gz", "x.tar.gz"), ("x.tgz", "x.tgz")
    ]


def test_name_collisions_give_only_advice_that_applies(tmp_path):
    _write(tmp_path / "one" / "s.tar", b"")
    _write(tmp_path / "two" / "s.tar", b"")
    with pytest.raises(ConfigError) as caught:
        list_shards([str(tmp_path / "one"), str(tmp_path / "two")])
    message = str(caught.value)
    assert "same output name 's'" in message and "common parent folder" in message

    _write(tmp_path / "three" / "x y.tar", b"")
    _write(tmp_path / "three" / "x_y.tar", b"")
    with pytest.raises(ConfigError) as caught:
        list_shards(str(tmp_path / "three"))
    message = str(caught.value)
    assert "'x y.tar' and 'x_y.tar' differ only in characters" in message
    assert "rename one" in message and "folder" not in message.split(":", 1)[1]
