"""`berg-scale make-shards` and the folder packer behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from berg_scale.cli import main
from berg_scale.io.pack_folder import key_for, pack_folder, unique_keys
from berg_scale.io.shard_reader import read_shard


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "make-shards" in out
    assert "pack a folder of images" in out


def test_console_entry_point_help_runs_in_a_fresh_process():
    result = subprocess.run(
        [sys.executable, "-m", "berg_scale.cli", "make-shards", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    assert "SRC_DIR" in result.stdout and "--per-shard" in result.stdout


def _all_samples(dest):
    manifest = json.loads((dest / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        samples.extend(read_shard(str(dest / shard["name"])))
    return manifest, samples


def test_mixed_folder_is_packed_and_bad_files_are_reported(mixed_folder, tmp_path, capsys):
    src, good = mixed_folder
    dest = tmp_path / "shards"
    code = main(["make-shards", str(src), str(dest), "--per-shard", "4", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"packed {len(good)} image(s) into 3 shard(s)" in captured.out
    assert "skipped 2 unreadable" in captured.out

    manifest, samples = _all_samples(dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"
    ]
    assert [s["n"] for s in manifest["shards"]] == [4, 4, 2]
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"broken.jpg", "sub/truncated.jpg"}
    assert "not a recognised image" in skipped["broken.jpg"]
    assert "truncated" in skipped["sub/truncated.jpg"]
    assert manifest["ignored_files"] == 2

    by_source = {}
    for shard in manifest["shards"]:
        by_source.update(zip(shard["sources"], shard["keys"]))
    assert set(by_source) == set(good)
    assert len(set(by_source.values())) == len(good)
    assert by_source["sub/Photo 1.v2.JPG"] == "sub/Photo_1_v2"
    assert by_source["sub/x.jpg"] == "sub/x" and by_source["sub/x.png"] == "sub/x_1"
    for sample in samples:
        assert sample.error is None
        source = sample.json["source"]
        assert by_source[source] == sample.key
        assert sample.image == good[source]  # bytes copied, never re-encoded
    formats = {s.json["source"]: s.image_ext for s in samples}
    assert formats["wrong-extension.png"] == "jpg"  # named after the real format
    assert formats["c.webp"] == "webp" and formats["e.tif"] == "tif"


def test_warnings_name_the_bad_files_without_quiet(mixed_folder, tmp_path, capsys):
    src, _ = mixed_folder
    assert main(["make-shards", str(src), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable file(s)" in err
    assert "broken.jpg" in err and "sub/truncated.jpg" in err


def test_shards_are_valid_for_python_tarfile_and_reproducible(mixed_folder, tmp_path):
    src, good = mixed_folder
    first = pack_folder(str(src), str(tmp_path / "one"), per_shard=100)
    second = pack_folder(str(src), str(tmp_path / "two"), per_shard=100, workers=1)
    one = (tmp_path / "one" / "shard-000000.tar").read_bytes()
    assert one == (tmp_path / "two" / "shard-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "one" / "shard-000000.tar") as archive:
        names = archive.getnames()
    assert len(names) == 2 * len(good)
    assert first.n_images == second.n_images == len(good)


def test_no_readable_image_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"nope")
    (src / "b.txt").write_text("text")
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--quiet"]) == 2
    assert "no readable images" in capsys.readouterr().err
    assert not dest.exists() or list(dest.iterdir()) == []


def test_occupied_destination_needs_overwrite(mixed_folder, tmp_path, capsys):
    src, _ = mixed_folder
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--quiet"]) == 0
    assert main(["make-shards", str(src), str(dest), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-shards", str(src), str(dest), "--quiet", "--per-shard", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-shards", str(src), str(dest), "--quiet", "--overwrite",
                 "--per-shard", "3"]) == 0
    assert len(list(dest.glob("shard-*.tar"))) == 4
    # a smaller rewrite removes the shards the new manifest no longer lists
    assert main(["make-shards", str(src), str(dest), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "shard-000000.tar"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--per-shard", "0"], "per-shard"),
        (["--prefix", "../x"], "prefix"),
        (["--max-pixels", "0"], "max-pixels"),
    ],
)
def test_bad_arguments_are_one_line_errors(mixed_folder, tmp_path, capsys, argv, message):
    src, _ = mixed_folder
    assert main(["make-shards", str(src), str(tmp_path / "o"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_source_and_destination_inside_source(tmp_path, mixed_folder, capsys):
    src, _ = mixed_folder
    assert main(["make-shards", str(tmp_path / "nope"), str(tmp_path / "o"), "--quiet"]) == 2
    assert main(["make-shards", str(src), str(src / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "inside the source" in err


def test_header_check_is_faster_but_misses_truncation(mixed_folder, tmp_path):
    src, good = mixed_folder
    report = pack_folder(str(src), str(tmp_path / "h"), check="header")
    assert [s.path for s in report.skipped] == ["broken.jpg"]
    assert report.n_images == len(good) + 1


def test_keys_are_sanitised_and_unique():
    assert key_for("a b/c.d.e.JPG") == "a_b/c_d_e"
    assert key_for("ünï/ø.png") == "n/_"  # non-ASCII runs become "_", then trimmed
    assert unique_keys(["x.jpg", "x.png", "x_1.png", "y.png"]) == ["x", "x_1", "x_1_1", "y"]
