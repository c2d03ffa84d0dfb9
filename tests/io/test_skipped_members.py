"""Members that belong to no row (hidden files, names without an extension, keys that are
not images, members of a key whose row was already given out) are skipped, but each kind leaves one shard note
with its count and its first member; a chunk stream read by a decode process carries
those notes after its last chunk."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile

import numpy as np
import pytest

from berg_scale.io.shard_reader import iter_shard_samples, read_shard
from berg_scale.synthetic.shards import encode, synthetic_image
from berg_scale.testing.tars import APPLE_DOUBLE, gnu_tar, python_tar



def _image(seed: int, ext: str = "jpg") -> bytes:
    return encode(synthetic_image(np.random.default_rng(seed), 20, 16), ext)


def _read(url: str) -> tuple[dict, list[str]]:
    shard_notes: list[str] = []
    samples = {sample.key: sample for sample in iter_shard_samples(url, shard_notes=shard_notes)}
    return samples, shard_notes


def test_hidden_members_are_skipped_with_one_note_naming_the_first(tmp_path):
    url = python_tar(tmp_path / "mac.tar", [
        ("photos/._cat.jpg", APPLE_DOUBLE),
        ("photos/cat.jpg", _image(1)),
        (".hidden.jpg", _image(2)),
        ("photos/._dog.jpg", APPLE_DOUBLE),
        ("photos/dog.jpg", _image(3)),
    ])
    samples, shard_notes = _read(url)
    assert sorted(samples) == ["photos/cat", "photos/dog"]
    assert all(sample.ok and not sample.notes for sample in samples.values())
    assert shard_notes == ["3 hidden members skipped (first: 'photos/._cat.jpg')"]


def test_names_without_an_extension_and_late_members_are_noted_once_per_kind(tmp_path):
    url = python_tar(tmp_path / "odd.tar", [
        ("a.jpg", _image(1)),
        ("README", b"about these images"),
        ("b.jpg", _image(2)),
        ("a.png", _image(3, "png")),  # a's row is out: a second image adds no row
        ("a.json", b"{}"),  # nor does a json that comes long after its image
        ("LICENSE", b"CC-BY"),
        ("a.txt", b"never read, but counted: a late member of any kind is named"),
    ])
    samples, shard_notes = _read(url)
    assert sorted(samples) == ["a", "b"] and samples["a"].json is None
    assert shard_notes == [
        "2 members without an extension skipped (first: 'README')",
        "3 members ignored after the key's row was given out (first: 'a.png')",
    ]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_a_version_appended_with_tar_r_is_named_as_such(tmp_path):
    import subprocess

    folder = tmp_path / "photos"
    folder.mkdir()
    first = _image(1)
    for name, data in (("a.jpg", first), ("b.jpg", _image(2))):
        (folder / name).write_bytes(data)
    archive = tmp_path / "photos.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(folder), "a.jpg", "b.jpg"], check=True)
    (folder / "a.jpg").write_bytes(_image(3))  # the user edits a.jpg and appends it again
    subprocess.run(["tar", "-rf", str(archive), "-C", str(folder), "a.jpg"], check=True)

    samples, shard_notes = _read(str(archive))
    assert sorted(samples) == ["a", "b"] and samples["a"].image == first  # the first version, as documented
    assert len(shard_notes) == 1
    assert shard_notes[0].startswith("1 later member of a name already read ignored (first: 'a.jpg')")
    assert "tar -x would keep the last" in shard_notes[0] and "re-create the tar" in shard_notes[0]


def test_a_member_note_is_valid_text_whatever_the_name(tmp_path):
    path = tmp_path / "latin.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
        for name, data in (("._caf\xe9.jpg", APPLE_DOUBLE), ("cafe.jpg", _image(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    samples, shard_notes = _read(str(path))
    assert list(samples) == ["cafe"]
    assert shard_notes == ["1 hidden member skipped (first: '._caf%E9.jpg')"]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_gnu_tar_of_a_folder_copied_from_a_mac(tmp_path):
    src = tmp_path / "src"
    (src / "photos").mkdir(parents=True)
    (src / "photos" / "cat.jpg").write_bytes(_image(1))
    (src / "photos" / "._cat.jpg").write_bytes(APPLE_DOUBLE)
    (src / ".DS_Store").write_bytes(b"Bud1")
    url = str(tmp_path / "mac.tar")
    gnu_tar(src, url)
    samples, shard_notes = _read(url)
    assert list(samples) == ["photos/cat"]
    assert shard_notes == ["2 hidden members skipped (first: './.DS_Store')"]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_a_tar_of_a_whole_folder_has_rows_only_for_its_images(tmp_path):
    # `tar -cf x.tar -C folder .` of a folder as people keep them: documents beside the
    # images, a dotted name with its own sidecar, a photo format that is not decoded.
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text("# my images")
    (src / "LICENSE.txt").write_text("CC-BY")
    (src / "labels.csv").write_text("key,label\n")
    (src / "b.jpg").write_bytes(_image(1))
    (src / "c.2023.01.jpg").write_bytes(_image(2))
    (src / "c.2023.01.json").write_text('{"label": 7}')
    (src / "d.heic").write_bytes(b"ftypheic")
    url = gnu_tar(src, tmp_path / "folder.tar")
    samples, shard_notes = _read(url)
    assert sorted(samples) == ["b", "c", "d"]
    assert sorted(sample.index for sample in samples.values()) == [0, 1, 2]  # no gaps
    assert samples["b"].ok and samples["c"].ok and samples["c"].json == {"label": 7}
    assert samples["d"].error.startswith("image member in a format that is not decoded (heic;")
    assert shard_notes == [
        "3 members of keys with no image or json member skipped, as not images (first: './LICENSE.txt')"
    ]


def test_a_key_with_only_a_sidecar_is_still_an_error_row(tmp_path):
    # a json without its image is a sample whose image is missing, not a stray document
    url = python_tar(tmp_path / "lost.tar", [("notes.txt", b"x"), ("a.json", b"{}"), ("b.jpg", _image(1))])
    samples, shard_notes = _read(url)
    assert samples["a"].error == "no image member (found: json)" and samples["b"].ok
    assert (samples["a"].index, samples["b"].index) == (0, 1)
    assert shard_notes == ["1 member of keys with no image or json member skipped, as not images (first: 'notes.txt')"]


def test_a_shard_without_skipped_members_has_no_shard_notes(tmp_path):
    url = python_tar(tmp_path / "plain.tar", [("a.jpg", _image(1)), ("a.json", b"{}")])
    samples, shard_notes = _read(url)
    assert list(samples) == ["a"] and shard_notes == []
    assert [s.key for s in read_shard(url)] == ["a"]  # the list is optional


def test_a_decode_process_sends_the_shard_notes_with_its_last_chunk(tmp_path):
    """No Ray needed: the body of the process's read, as a plain generator."""
    from berg_scale.engine.chunk_reading import ChunkRows, chunks_read_here, iter_samples, read_chunk_objects

    for n_images in (3, 4):  # the last chunk part full, and full
        entries = [(f"img-{i}.jpg", _image(i)) for i in range(n_images)]
        url = python_tar(tmp_path / f"x{n_images}.tar", [("._img-0.jpg", APPLE_DOUBLE), *entries])
        here_notes: list[str] = []
        here = list(chunks_read_here(iter_samples(url, None, here_notes), 2))
        objects = list(read_chunk_objects(url, None, 2))
        assert len(objects) == 2 * len(here) == 4
        metas = objects[0::2]
        assert all(isinstance(meta, ChunkRows) for meta in metas)
        assert [meta.rows for meta in metas] == [[dataclasses.replace(r, image=None) for r in c.rows] for c in here]
        assert [meta.shard_notes for meta in metas] == [(), tuple(here_notes)]
        assert here_notes == ["1 hidden member skipped (first: '._img-0.jpg')"]
    only_junk = python_tar(tmp_path / "junk.tar", [("._a.jpg", APPLE_DOUBLE), ("notes", b"x")])
    meta, blob = read_chunk_objects(only_junk, None, 2)
    assert meta.rows == [] and len(blob) == 0 and meta.shard_notes == (
        "1 hidden member skipped (first: '._a.jpg')",
        "1 member without an extension skipped (first: 'notes')",
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_chunks_know_which_is_last_and_cut_as_before(size):
    from berg_scale.engine.chunk_reading import chunks_and_end, sample_chunks

    for n in range(7):
        chunks = list(chunks_and_end(range(n), size))
        assert [chunk for chunk, _ in chunks] == list(sample_chunks(range(n), size))
        assert [last for _, last in chunks] == [i == len(chunks) - 1 for i in range(len(chunks))]
