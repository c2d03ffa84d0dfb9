"""Through a worker: what the tar reader noted (extra or duplicate image members, bad
sidecars, hidden and other skipped members) reaches the shard's commit marker, as a
count and the first notes with their keys, and a worker whose decode pool reads the
tars writes the same marker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from berg_scale.synthetic.shards import encode, synthetic_image
from berg_scale.testing.tars import APPLE_DOUBLE, gnu_tar, python_tar

# Marker fields that differ between two executions of the same shard by nature.
VOLATILE = ("committed_at", "output", "seconds", "worker", "decoded_on")

needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")


def _members() -> list[tuple[str, bytes]]:
    """A folder as users keep it, in name order: images with sidecars, a key with both a
    JPEG and a PNG, a broken sidecar, macOS's AppleDouble files, a hidden image, a README."""
    rng = np.random.default_rng(11)
    members = [(".hidden.jpg", encode(synthetic_image(rng, 20, 16), "jpg")),
               ("README", b"holiday photos")]
    members += [("bad.jpg", encode(synthetic_image(rng, 24, 18), "jpg")), ("bad.json", b"{'single': quotes}")]
    members += [("dup.jpg", encode(synthetic_image(rng, 22, 16), "jpg")),
                ("dup.png", encode(synthetic_image(rng, 22, 16), "png"))]
    for i in range(5):
        members += [(f"img-{i}.jpg", encode(synthetic_image(rng, 30, 20 + i), "jpg")),
                    (f"img-{i}.json", json.dumps({"i": i}).encode())]
    members += [("photos/._cat.jpg", APPLE_DOUBLE),
                ("photos/cat.jpg", encode(synthetic_image(rng, 26, 20), "jpg"))]
    return members


ROWS = ["bad", "dup", "img-0", "img-1", "img-2", "img-3", "img-4", "photos/cat"]


@pytest.fixture(scope="module")
def noted_tars(tmp_path_factory) -> Path:
    """The folder as Python's tarfile writes it (plus a duplicated member) and as GNU tar
    writes it (`./` names, name order); and a shard of nothing but junk."""
    base = tmp_path_factory.mktemp("noted-tars")
    members = _members()
    shards = base / "in"
    shards.mkdir()
    python_tar(shards / "python.tar", [*members[:8], members[6], *members[-2:]])  # img-0.jpg twice
    python_tar(shards / "junk-only.tar", [("._a.jpg", APPLE_DOUBLE), ("._b.jpg", APPLE_DOUBLE)])
    if shutil.which("tar"):
        src = base / "src"
        for name, data in members:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        gnu_tar(src, shards / "gnu.tar")
    return shards


def _worker(output: str, decode_workers: int = 0):
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker import EncoderWorker

    settings = ShardSettings(output=output, image_size=24, batch_size=3, decode_threads=1, decode_ahead=0,
                             device="cpu", decode_workers=decode_workers, error_rate_threshold=1.0)
    return EncoderWorker(0, FixedCostModelFactory(), settings)


def _markers(shards: Path, output: Path, decode_workers: int = 0) -> dict[str, dict]:
    """Each shard's commit marker as written to `_done/`, after checking the worker's copy."""
    from berg_scale.io.shard_listing import list_shards

    worker = _worker(str(output), decode_workers)
    assert (worker.pool is not None) == bool(decode_workers)
    try:
        for shard in list_shards(str(shards)):
            result = worker.process(shard, 1)
            assert result.status == "done", result
            on_disk = json.loads((output / "_done" / f"{shard.name}.json").read_text())
            assert on_disk["notes"] == result.marker["notes"]
            assert on_disk["note_examples"] == result.marker["note_examples"]
    finally:
        if worker.pool is not None:
            worker.pool.close()
    return {path.stem: json.loads(path.read_text()) for path in sorted((output / "_done").iterdir())}


def test_python_tarfile_notes_reach_the_commit_marker(noted_tars, tmp_path):
    from berg_scale.io.results import open_responses

    marker = _markers(noted_tars, tmp_path / "out")["python"]
    assert (marker["rows"], marker["ok"], marker["errors"]) == (4, 4, 0)
    assert marker["notes"] == 5
    assert marker["note_examples"] == [
        {"key": None, "note": "2 hidden members skipped (first: '.hidden.jpg')"},
        {"key": None, "note": "1 member without an extension skipped (first: 'README')"},
        {"key": "bad", "note": "json member is not valid JSON"},
        {"key": "dup", "note": "extra image members ignored: png"},
        {"key": "img-0", "note": "duplicate member 'img-0.jpg' ignored"},
    ]
    rows = open_responses(str(tmp_path / "out")).to_table().to_pylist()
    keys = [row["key"] for row in rows if row["shard"] == "python"]
    assert sorted(keys) == ["bad", "dup", "img-0", "photos/cat"]  # notes add no rows


@needs_gnu_tar
def test_gnu_tar_notes_reach_the_commit_marker(noted_tars, tmp_path):
    marker = _markers(noted_tars, tmp_path / "out")["gnu"]
    assert (marker["rows"], marker["ok"], marker["errors"]) == (len(ROWS), len(ROWS), 0)
    assert marker["notes"] == 4
    assert marker["note_examples"] == [
        {"key": None, "note": "2 hidden members skipped (first: './.hidden.jpg')"},
        {"key": None, "note": "1 member without an extension skipped (first: './README')"},
        {"key": "bad", "note": "json member is not valid JSON"},
        {"key": "dup", "note": "extra image members ignored: png"},
    ]


@needs_gnu_tar
def test_gnu_tar_in_directory_order_notes_the_second_image_either_way(tmp_path):
    """Without --sort the members of `dup` may lie apart: the second of its images is then
    a member of a key whose row was already given out, a shard note instead of a note on
    the sample."""
    src = tmp_path / "src"
    for name, data in _members():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (tmp_path / "in").mkdir()
    gnu_tar(src, tmp_path / "in" / "plain.tar", sort_by_name=False)
    marker = _markers(tmp_path / "in", tmp_path / "out")["plain"]
    assert marker["rows"] == marker["ok"] == len(ROWS) and marker["notes"] == 4
    notes = {(e["key"], e["note"]) for e in marker["note_examples"]}
    assert (None, "1 member without an extension skipped (first: './README')") in notes
    assert ("bad", "json member is not valid JSON") in notes
    assert any(key is None and note.startswith("2 hidden members skipped (first: './") for key, note in notes)
    late = {(None, f"1 member ignored after the key's row was given out (first: './dup.{ext}')")
            for ext in ("jpg", "png")}  # whichever of the two comes second
    assert ("dup", "extra image members ignored: png") in notes or notes & late


def test_a_shard_of_nothing_but_junk_commits_no_rows_and_says_why(noted_tars, tmp_path):
    marker = _markers(noted_tars, tmp_path / "out")["junk-only"]
    assert (marker["rows"], marker["errors"], marker["notes"]) == (0, 0, 1)
    assert marker["note_examples"] == [{"key": None, "note": "2 hidden members skipped (first: '._a.jpg')"}]


def test_a_marker_quotes_the_first_notes_and_counts_them_all(tmp_path):
    from berg_scale.engine.shard_pipeline import NOTE_EXAMPLES

    rng = np.random.default_rng(5)
    members = [("._first.jpg", APPLE_DOUBLE)]
    for i in range(NOTE_EXAMPLES + 5):
        members += [(f"k{i:02d}.jpg", encode(synthetic_image(rng, 12, 12), "jpg")), (f"k{i:02d}.json", b"[1]")]
    (tmp_path / "in").mkdir()
    python_tar(tmp_path / "in" / "many.tar", members)
    marker = _markers(tmp_path / "in", tmp_path / "out")["many"]
    assert marker["notes"] == NOTE_EXAMPLES + 6
    examples = marker["note_examples"]
    assert len(examples) == NOTE_EXAMPLES and examples[0]["key"] is None
    assert [e["key"] for e in examples[1:]] == [f"k{i:02d}" for i in range(NOTE_EXAMPLES - 1)]
    assert {e["note"] for e in examples[1:]} == {"json member is not an object"}


def test_a_worker_whose_pool_reads_the_tars_writes_the_same_markers(ray_session, noted_tars, tmp_path):
    here = _markers(noted_tars, tmp_path / "here")
    pooled = _markers(noted_tars, tmp_path / "pooled", decode_workers=2)
    assert sorted(here) == sorted(pooled) and here["junk-only"]["notes"] == 1
    for name, marker in here.items():
        assert pooled[name]["decoded_on"] in ({}, {"cpu": marker["ok"]}), name
        same = {key: value for key, value in marker.items() if key not in VOLATILE}
        assert {key: value for key, value in pooled[name].items() if key not in VOLATILE} == same, name
