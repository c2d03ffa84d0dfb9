"""Through a worker (shard pipeline, Parquet writer, commit): tars made by plain GNU tar,
plain and gzip-compressed, give every image exactly one row; damaged shards come back
as rejected (quarantined at once by the driver), not as retryable errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from berg_scale.synthetic.shards import encode, synthetic_image

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")

COLUMN = "stand-in/sub-01/all"


def _worker(output: str):
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker import EncoderWorker

    settings = ShardSettings(output=output, image_size=32, batch_size=4, decode_threads=1,
                             decode_ahead=0, device="cpu")
    return EncoderWorker(0, FixedCostModelFactory(), settings)


def _folder(src) -> tuple[set[str], set[str]]:
    """Images as users keep them, plus the awkward members: (image keys, error keys)."""
    rng = np.random.default_rng(4)
    images = set()
    for i in range(10):
        key = f"img-{i:02d}"
        data = encode(synthetic_image(rng, 40, 30), "png" if i % 2 else "jpg")
        (src / f"{key}.{'png' if i % 2 else 'jpg'}").write_bytes(data)
        (src / f"{key}.json").write_bytes(json.dumps({"i": i}).encode())
        images.add(key)
    os.link(src / "img-00.jpg", src / "copy-of-00.jpg")  # GNU tar stores a hard link
    images.add("copy-of-00")
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(rng, 24, 24)).save(buffer, "GIF")
    (src / "anim.gif").write_bytes(buffer.getvalue())
    images.add("anim")
    with open(os.path.join(os.fsencode(src), b"caf\xe9.png"), "wb") as handle:  # not UTF-8
        handle.write(encode(synthetic_image(rng, 20, 20), "png"))
    images.add("caf%E9")
    (src / "deep.jpg").write_bytes(encode(synthetic_image(rng, 16, 16), "jpg"))
    (src / "deep.json").write_bytes(b"[" * 5000 + b"]" * 5000)
    images.add("deep")
    os.symlink("img-01.png", src / "alias.png")
    return images, {"alias"}


def test_gnu_tar_shards_give_every_image_exactly_one_row(tmp_path):
    import pyarrow.compute as pc

    from berg_scale.io.results import open_responses
    from berg_scale.io.shard_listing import list_shards

    src = tmp_path / "src"
    src.mkdir()
    images, errors = _folder(src)
    shard_dir = tmp_path / "in"
    shard_dir.mkdir()
    # readdir order and "./" names: a sample's members are usually not adjacent
    subprocess.run(["tar", "cf", str(shard_dir / "folder.tar"), "-C", str(src), "."], check=True)
    subprocess.run(["tar", "czf", str(shard_dir / "folder.tar.gz"), "-C", str(src), "."], check=True)
    shards = list_shards(str(shard_dir))
    assert [s.name for s in shards] == ["folder", "folder.tar.gz"]

    output = str(tmp_path / "out")
    worker = _worker(output)
    for shard in shards:
        result = worker.process(shard, 1)
        assert result.status == "done", result
        assert result.marker["rows"] == len(images) + len(errors)
        assert result.marker["ok"] == len(images)

    table = open_responses(output).to_table()
    per_shard = {}
    for shard in shards:
        rows = table.filter(pc.equal(table["shard"], shard.name)).to_pylist()
        keys = [row["key"] for row in rows]
        assert sorted(keys) == sorted(images | errors) and len(set(keys)) == len(keys)
        assert sorted(row["index"] for row in rows) == list(range(len(keys)))
        by_key = {row["key"]: row for row in rows}
        for key in images:
            assert by_key[key]["status"] == "ok" and by_key[key][COLUMN] is not None, key
        assert by_key["alias"]["status"] == "error"
        assert by_key["alias"]["error"] == "member './alias.png' is a symbolic link (not followed)"
        per_shard[shard.name] = by_key
    plain, compressed = per_shard["folder"], per_shard["folder.tar.gz"]
    for key in images:  # the gzip path hands the model the very same bytes
        assert plain[key][COLUMN] == compressed[key][COLUMN], key
    assert plain["copy-of-00"][COLUMN] == plain["img-00"][COLUMN]  # the hard link's bytes


@pytest.mark.parametrize("damage", ["truncated-tar", "damaged-gzip"])
def test_a_damaged_shard_comes_back_rejected_with_its_reason(tmp_path, damage):
    from berg_scale.io.shard_listing import InputShard
    from berg_scale.synthetic.shards import write_corrupt_shard

    if damage == "truncated-tar":
        path = tmp_path / "bad.tar"
        write_corrupt_shard(str(path), "mid_member", n_images=4)
        reason = "truncated"
    else:
        path = tmp_path / "bad.tgz"
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate data" * 50)
        reason = "gzip stream"
    result = _worker(str(tmp_path / "out")).process(
        InputShard(name=path.name, url=str(path), relative=path.name), 1
    )
    assert result.status == "rejected", result
    assert reason in result.error and str(path) in result.error
    assert not (tmp_path / "out" / "_done").exists() or not os.listdir(tmp_path / "out" / "_done")


@pytest.mark.parametrize("made_by", ["gnu-tar", "tarfile", "gzip"])
def test_a_second_tar_appended_with_cat_is_rejected_not_dropped(tmp_path, made_by):
    """`cat a.tar b.tar` reads as a.tar alone in every tar reader; the shard must say so."""
    from berg_scale.io.shard_listing import InputShard
    from berg_scale.testing.tars import gnu_tar, python_tar

    rng = np.random.default_rng(9)
    parts = []
    for part in ("a", "b"):
        if made_by == "tarfile":
            members = [(f"{part}{i}.jpg", encode(synthetic_image(rng, 20, 20), "jpg")) for i in range(3)]
            parts.append(python_tar(tmp_path / f"{part}.tar", members))
        else:
            folder = tmp_path / part
            folder.mkdir()
            for i in range(3):
                (folder / f"{part}{i}.jpg").write_bytes(encode(synthetic_image(rng, 20, 20), "jpg"))
            parts.append(gnu_tar(folder, tmp_path / f"{part}.tar"))
    joined = b"".join(open(part, "rb").read() for part in parts)
    path = tmp_path / ("both.tar" if made_by != "gzip" else "both.tar.gz")
    if made_by == "gzip":
        import gzip

        joined = gzip.compress(joined)
    path.write_bytes(joined)
    result = _worker(str(tmp_path / "out")).process(
        InputShard(name=path.name, url=str(path), relative=path.name), 1
    )
    assert result.status == "rejected", result
    assert "holds data after its end-of-archive marker" in result.error
    assert "tar --concatenate" in result.error
    assert not (tmp_path / "out" / "_done").exists() or not os.listdir(tmp_path / "out" / "_done")


def test_zero_padding_after_the_end_of_archive_is_fine(tmp_path):
    from berg_scale.io.shard_listing import InputShard

    rng = np.random.default_rng(10)
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(encode(synthetic_image(rng, 20, 20), "jpg"))
    path = tmp_path / "padded.tar"
    subprocess.run(["tar", "-cf", str(path), "-b", "64", "-C", str(folder), "."], check=True)  # 32 KiB records
    with open(path, "ab") as handle:
        handle.write(b"\0" * 3 * (1 << 20))  # more zeros than one read of the trailer
    result = _worker(str(tmp_path / "out")).process(
        InputShard(name=path.name, url=str(path), relative=path.name), 1
    )
    assert result.status == "done" and result.marker["ok"] == 1, result


@pytest.mark.parametrize("made_by", ["empty-list", "empty-folder"])
def test_a_tar_without_files_commits_no_rows_with_a_note(tmp_path, made_by):
    from berg_scale.io.output_store import OutputStore, read_done_marker
    from berg_scale.io.shard_listing import InputShard

    path = tmp_path / "empty.tar"
    if made_by == "empty-list":
        subprocess.run(["tar", "-cf", str(path), "-T", "/dev/null"], check=True)
        what = "an empty archive"
    else:
        (tmp_path / "nothing").mkdir()
        subprocess.run(["tar", "-cf", str(path), "-C", str(tmp_path / "nothing"), "."], check=True)
        what = "folders only"
    output = str(tmp_path / "out")
    result = _worker(output).process(InputShard(name="empty", url=str(path), relative=path.name), 1)
    assert result.status == "done" and result.marker["rows"] == 0, result
    marker = read_done_marker(OutputStore(output), "empty")
    assert marker["notes"] == 1
    assert marker["note_examples"] == [{"key": None, "note": f"the tar holds no files ({what}): no rows"}]


def test_a_shard_over_the_error_rate_names_all_its_errors(tmp_path):
    from berg_scale.io.shard_listing import InputShard

    src = tmp_path / "src"
    src.mkdir()
    good = encode(synthetic_image(np.random.default_rng(1), 30, 20), "jpg")
    (src / "good.jpg").write_bytes(good)
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.jpg").write_bytes(b"not an image at all")
    (src / "cut.jpg").write_bytes(good[: len(good) // 2])
    os.symlink("good.jpg", src / "alias.jpg")
    path = tmp_path / "mostly-bad.tar"
    subprocess.run(["tar", "-cf", str(path), "-C", str(src), "."], check=True)
    result = _worker(str(tmp_path / "out")).process(InputShard(name="mostly-bad", url=str(path),
                                                               relative=path.name), 1)
    assert result.status == "rejected", result
    assert "4 of 5 images failed (80% > error_rate_threshold 50%)" in result.error, result.error
    assert result.error.endswith(", and 1 of other kinds"), result.error
