"""`berg-scale make-shards` and the folder packer behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
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
    assert key_for("ünï/ø.png") == "ünï/ø"  # letters of any script are kept
    assert key_for("名前 2.jpg") == "名前_2" and key_for("100%.jpg") == "100"
    assert key_for("u\u0308.png") == key_for("\u00fc.png") == "\u00fc"  # macOS (NFD) names, NFC keys
    assert unique_keys(["x.jpg", "x.png", "x_1.png", "y.png"]) == ["x", "x_1", "x_1_1", "y"]


def test_file_names_of_any_script_or_encoding_give_valid_keys_and_sidecars(tmp_path):
    from berg_scale.io.sample_metadata import metadata_array

    src = tmp_path / "src"
    (src / "日本").mkdir(parents=True)
    (src / "日本" / "名前.jpg").write_bytes(image_bytes("jpeg", 20, 16, 1))
    # a Latin-1 file name, as copied from an old disk: its byte 0xE9 is not UTF-8
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(image_bytes("jpeg", 20, 16, 2))
    report = pack_folder(str(src), str(tmp_path / "out"), per_shard=10)
    samples = read_shard(report.shards[0].url)
    assert sorted(s.key for s in samples) == ["caf_E9", "日本/名前"]
    sources = sorted(s.json["source"] for s in samples)
    assert sources == ["caf%E9.jpg", "日本/名前.jpg"]
    field = pa.field("source", pa.string())
    assert sorted(metadata_array(field, [s.json for s in samples]).to_pylist()) == sources
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text("utf-8"))
    assert sorted(manifest["shards"][0]["sources"]) == sources

    again = pack_folder(str(src), str(tmp_path / "out"), per_shard=10, add=True)
    assert again.already_packed == 2 and not again.shards, "--add must not pack the same files twice"


def test_a_sidecar_string_that_is_not_valid_text_is_escaped_in_its_column():
    from berg_scale.io.sample_metadata import metadata_array

    sidecars = [json.loads('{"source": "caf\\udce9.jpg", "note": "\\ud83d"}'), None]
    assert metadata_array(pa.field("source", pa.string()), sidecars).to_pylist() == ["caf%E9.jpg", None]
    assert metadata_array(pa.field("note", pa.string()), sidecars).to_pylist() == ["%ED%A0%BD", None]


# --- formats, names of everything left out ------------------------------------------


def image_bytes(fmt: str, width: int, height: int, seed: int) -> bytes:
    from berg_scale.synthetic.shards import encode, synthetic_image

    return encode(synthetic_image(np.random.default_rng(seed), width, height), fmt)


def _write(folder, files: dict) -> None:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _gif(width=20, height=10, seed=0) -> bytes:
    import io

    from PIL import Image

    from berg_scale.synthetic.shards import synthetic_image

    buffer = io.BytesIO()
    frames = [Image.fromarray(synthetic_image(np.random.default_rng(seed + i), width, height)).convert("P")
              for i in range(2)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])  # animated
    return buffer.getvalue()


def test_gif_is_packed_and_every_left_out_file_is_named(tmp_path, capsys):
    from berg_scale.io.decode import decode_to_rgb

    src = tmp_path / "src"
    _write(src, {"anim.gif": _gif(), "a.png": image_bytes("png", 8, 8, 1), "notes.txt": b"x",
                 "README": b"y", ".DS_Store": b"\0", ".git/config": b"z", "bad.gif": b"GIF89a-broken"})
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest)]) == 0
    err = capsys.readouterr().err
    manifest, samples = _all_samples(dest)
    assert {s.json["source"]: s.image_ext for s in samples} == {"anim.gif": "gif", "a.png": "png"}
    gif = next(s for s in samples if s.image_ext == "gif")
    assert decode_to_rgb(gif.image).size == (20, 10)  # the engine's reader takes it
    assert {i["path"]: i["reason"] for i in manifest["skipped"]} == {
        "bad.gif": manifest["skipped"][0]["reason"]}
    ignored = {i["path"]: i["reason"] for i in manifest["ignored"]}
    assert set(ignored) == {"notes.txt", "README", ".DS_Store", ".git/"}
    assert "not an image file name (.txt" in ignored["notes.txt"] and "no extension" in ignored["README"]
    assert ignored[".DS_Store"] == "hidden file" and "hidden folder" in ignored[".git/"]
    for path in ("bad.gif", "notes.txt", "README", ".DS_Store", ".git/"):
        assert f"  {path}: " in err  # every one named on the console with its reason


def _linked_folder(tmp_path):
    """SRC with an image of its own, a link to an image outside it, a link to an outside
    folder, a broken link, a FIFO and a link loop back to SRC."""
    outside = tmp_path / "outside"
    _write(outside, {"secret.png": image_bytes("png", 8, 8, 7), "more/inner.png": image_bytes("png", 8, 8, 8)})
    src = tmp_path / "src"
    _write(src, {"own.png": image_bytes("png", 8, 8, 1)})
    (src / "link.png").symlink_to(outside / "secret.png")
    (src / "linked_dir").symlink_to(outside / "more", target_is_directory=True)
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    (src / "loop").symlink_to(src, target_is_directory=True)
    os.mkfifo(src / "pipe.png")
    return src


def test_symbolic_links_are_not_followed_unless_asked(tmp_path, capsys):
    src = _linked_folder(tmp_path)
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest)]) == 0
    manifest, samples = _all_samples(dest)
    assert [s.json["source"] for s in samples] == ["own.png"]  # nothing from outside SRC
    ignored = {i["path"]: i["reason"] for i in manifest["ignored"]}
    assert set(ignored) == {"link.png", "gone.png", "linked_dir/", "loop/", "pipe.png"}
    assert ignored["link.png"].startswith("symbolic link (not followed; --follow-links")
    assert ignored["linked_dir/"].startswith("symbolic link to a folder")
    assert "FIFO" in ignored["pipe.png"]
    err = capsys.readouterr().err
    assert "  link.png: symbolic link" in err and "  linked_dir/: symbolic link to a folder" in err
    assert manifest["follow_links"] is False


def test_follow_links_packs_link_targets_once_and_survives_a_loop(tmp_path):
    src = _linked_folder(tmp_path)
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--follow-links", "--quiet"]) == 0
    manifest, samples = _all_samples(dest)
    assert sorted(s.json["source"] for s in samples) == ["link.png", "linked_dir/inner.png", "own.png"]
    ignored = {i["path"]: i["reason"] for i in manifest["ignored"]}
    assert ignored["gone.png"].startswith("broken symbolic link")
    assert "link loop" in ignored["loop/"]
    assert "FIFO" in ignored["pipe.png"] and manifest["follow_links"] is True


def test_a_file_swapped_for_a_link_or_fifo_after_the_walk_is_not_read(tmp_path):
    from berg_scale.io.pack_folder import PackOptions, _Candidate, _check

    target = tmp_path / "secret.png"
    target.write_bytes(image_bytes("png", 8, 8, 3))
    link = tmp_path / "a.png"
    link.symlink_to(target)
    checked = _check(_Candidate("a.png", str(link)), PackOptions())
    assert checked.data is None and checked.reason.startswith("cannot read file")
    fifo = tmp_path / "b.png"
    os.mkfifo(fifo)
    checked = _check(_Candidate("b.png", str(fifo)), PackOptions(follow_links=True))
    assert checked.data is None and "no longer a regular file" in checked.reason  # no hang


# --- re-encoding ------------------------------------------------------------------------


def _rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways (raw 120 x 60) with EXIF orientation 6: upright it is
    60 wide, 120 tall, red on top and blue below."""
    import io

    from PIL import Image

    upright = np.zeros((120, 60, 3), np.uint8)
    upright[:60] = (255, 0, 0)
    upright[60:] = (0, 0, 255)
    stored = np.rot90(upright, k=1)  # orientation 6 means "rotate 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue(), upright


def test_max_side_resizes_upright_and_copies_small_images(tmp_path):
    import io

    from PIL import Image

    rotated, _ = _rotated_jpeg()
    small = image_bytes("png", 30, 20, 3)
    src = tmp_path / "src"
    _write(src, {"big.jpg": rotated, "small.png": small})
    report = pack_folder(str(src), str(tmp_path / "out"), max_side=48)
    assert report.resized == 1
    _, samples = _all_samples(tmp_path / "out")
    by_source = {s.json["source"]: s for s in samples}
    big = by_source["big.jpg"]
    assert big.image_ext == "jpg"
    assert big.json == {"source": "big.jpg", "width": 24, "height": 48,
                        "original_width": 60, "original_height": 120}
    image = Image.open(io.BytesIO(big.image))
    assert image.size == (24, 48) and image.getexif().get(0x0112) is None
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels[5, 12, 0] > 200 and pixels[5, 12, 2] < 60  # red on top: rotated before resizing
    assert pixels[42, 12, 2] > 200 and pixels[42, 12, 0] < 60
    assert by_source["small.png"].image == small and by_source["small.png"].image_ext == "png"
    assert by_source["small.png"].json == {"source": "small.png", "width": 30, "height": 20}


def test_jpeg_quality_reencodes_every_image(tmp_path):
    src = tmp_path / "src"
    _write(src, {f"{i}.png": image_bytes("png", 64, 64, i) for i in range(3)})
    sizes = {}
    for quality in (20, 95):
        dest = tmp_path / f"q{quality}"
        assert main(["make-shards", str(src), str(dest), "--quiet", "--jpeg-quality", str(quality)]) == 0
        _, samples = _all_samples(dest)
        assert {s.image_ext for s in samples} == {"jpg"}
        sizes[quality] = sum(len(s.image) for s in samples)
    assert sizes[20] < sizes[95]
    assert main(["make-shards", str(src), str(tmp_path / "x"), "--quiet", "--jpeg-quality", "0"]) == 2


# --- shard size -------------------------------------------------------------------------


def test_parse_size_units():
    from berg_scale.commands.make_shards import parse_size

    assert parse_size("256MB") == 256_000_000 and parse_size("1.5GiB") == 1_610_612_736
    assert parse_size("4096") == 4096 and parse_size("20 kb") == 20_000
    with pytest.raises(Exception, match="not a size"):
        parse_size("big")


def test_shards_by_size_stay_under_the_limit(tmp_path):
    src = tmp_path / "src"
    files = {f"img{i:02d}.png": image_bytes("png", 40 + i, 30, i) for i in range(24)}
    _write(src, files)
    limit = 30_000
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--quiet", "--shard-size", "30KB"]) == 0
    manifest, samples = _all_samples(dest)
    assert manifest["n_shards"] > 2 and len(samples) == 24
    for shard in manifest["shards"]:
        size = (dest / shard["name"]).stat().st_size
        assert size == shard["bytes"] and size <= limit
    # Adding the next image would have crossed the limit: shards are as full as allowed.
    assert all(s["bytes"] > limit - 12_000 for s in manifest["shards"][:-1])
    # With a count too, whichever comes first closes the shard.
    both = tmp_path / "both"
    assert main(["make-shards", str(src), str(both), "--quiet", "--shard-size", "1MB", "--per-shard", "5"]) == 0
    assert [s["n"] for s in _all_samples(both)[0]["shards"]] == [5, 5, 5, 5, 4]


# --- incremental ------------------------------------------------------------------------


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_add_packs_only_new_files_and_never_touches_existing_shards(tmp_path, capsys):
    src = tmp_path / "src"
    _write(src, {f"a{i}.png": image_bytes("png", 10, 10, i) for i in range(5)})
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--quiet", "--per-shard", "2"]) == 0
    before = {p.name: (_digest(p), p.stat().st_mtime_ns) for p in dest.glob("shard-*.tar")}
    assert sorted(before) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    # new files, one whose key collides with an existing key, plus a stray shard number
    _write(src, {"b0.png": image_bytes("png", 10, 10, 20), "b1.jpg": image_bytes("jpg", 10, 10, 21),
                 "a0.jpg": image_bytes("jpg", 12, 12, 22), "broken.png": b"nope"})
    assert main(["make-shards", str(src), str(dest), "--add", "--per-shard", "2"]) == 0
    out = capsys.readouterr()
    assert "packed 3 image(s) into 2 shard(s)" in out.out and "5 already in 3 existing shard(s)" in out.out
    assert "broken.png" in out.err
    after = {p.name: (_digest(p), p.stat().st_mtime_ns) for p in dest.glob("shard-*.tar")}
    assert {name: after[name] for name in before} == before  # byte-for-byte, not even rewritten
    assert sorted(set(after) - set(before)) == ["shard-000003.tar", "shard-000004.tar"]
    manifest, samples = _all_samples(dest)
    assert manifest["n_images"] == 8 and manifest["n_shards"] == 5 and len(manifest["runs"]) == 2
    keys = [s.key for s in samples]
    assert len(set(keys)) == 8 and "a0_1" in keys  # a0.jpg may not reuse a0.png's key
    assert [s["path"] for s in manifest["skipped"]] == ["broken.png"]
    # nothing new: no shard written, still a success
    assert main(["make-shards", str(src), str(dest), "--add", "--quiet"]) == 0
    assert len(list(dest.glob("shard-*.tar"))) == 5


def test_add_refuses_a_destination_without_manifest_and_excludes_overwrite(tmp_path, capsys):
    src = tmp_path / "src"
    _write(src, {"a.png": image_bytes("png", 10, 10, 1)})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "shard-000000.tar").write_bytes(b"")
    assert main(["make-shards", str(src), str(dest), "--add", "--quiet"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    # Without --add the first answer already names the case and the way that works.
    assert main(["make-shards", str(src), str(dest), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json (an interrupted make-shards?)" in err and "--overwrite" in err and "--add" not in err
    with pytest.raises(SystemExit):
        main(["make-shards", str(src), str(dest), "--add", "--overwrite"])
    empty = tmp_path / "fresh"
    assert main(["make-shards", str(src), str(empty), "--add", "--quiet"]) == 0  # empty: a first run


# --- labels -----------------------------------------------------------------------------


def test_class_folders_give_a_label_table_the_experiments_read(tmp_path, capsys):
    from berg_scale.experiments.labels import read_label_table

    src = tmp_path / "src"
    _write(src, {"cats/c1.png": image_bytes("png", 9, 9, 1), "cats/deep/c2.png": image_bytes("png", 9, 9, 2),
                 "dogs/d1.png": image_bytes("png", 9, 9, 3)})
    dest = tmp_path / "out"
    assert main(["make-shards", str(src), str(dest), "--quiet"]) == 0
    table = read_label_table(str(dest / "labels.csv"))
    assert table.labels == ["cats", "dogs"]
    assert table.label_of("shard-000000", "cats/deep/c2") == "cats"
    _write(src, {"birds/b1.png": image_bytes("png", 9, 9, 4)})
    assert main(["make-shards", str(src), str(dest), "--quiet", "--add"]) == 0
    assert read_label_table(str(dest / "labels.csv")).labels == ["birds", "cats", "dogs"]
    # a table the user wrote is never replaced
    own = tmp_path / "own"
    own.mkdir()
    (own / "labels.csv").write_text("key,label\nx,y\n")
    assert main(["make-shards", str(src), str(own), "--quiet"]) == 0
    assert (own / "labels.csv").read_text() == "key,label\nx,y\n"
    # images at the top level too: no partial table
    _write(src, {"loose.png": image_bytes("png", 9, 9, 5)})
    mixed = tmp_path / "mixed"
    capsys.readouterr()
    assert main(["make-shards", str(src), str(mixed), "--quiet"]) == 0
    assert not (mixed / "labels.csv").exists()
    assert "no labels.csv: 1 of 5 image(s) sit outside any class folder (first: 'loose')" in capsys.readouterr().err


# --- other tar tools read our shards ------------------------------------------------------


@pytest.mark.skipif(not __import__("shutil").which("tar"), reason="GNU tar not installed")
def test_gnu_tar_lists_and_extracts_our_shards(mixed_folder, tmp_path):
    src, good = mixed_folder
    pack_folder(str(src), str(tmp_path / "out"), per_shard=100, max_side=32)
    shard = tmp_path / "out" / "shard-000000.tar"
    listed = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True)
    names = listed.stdout.split()
    assert len(names) == 2 * len(good) and "sub/Photo_1_v2.json" in names
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(["tar", "-xf", str(shard), "-C", str(extract)], check=True)
    sidecar = json.loads((extract / "sub" / "Photo_1_v2.json").read_text())
    assert sidecar == {"source": "sub/Photo 1.v2.JPG", "width": 23, "height": 32,
                       "original_width": 50, "original_height": 70}


# --- the sidecar as output columns (input.metadata) ----------------------------------------


def _tarfile_shard(path, samples: dict) -> None:
    import io

    with tarfile.open(path, "w") as archive:
        for name, data in samples.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.skipif(not __import__("shutil").which("tar"), reason="GNU tar not installed")
def test_generate_carries_sidecar_fields_into_columns(tmp_path):
    """Shards from make-shards, GNU tar and Python's tarfile: the listed json fields become
    columns; a missing sidecar, a missing field or a mistyped value is a null."""
    import pyarrow.compute as pc

    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker import EncoderWorker
    from berg_scale.io.results import open_responses
    from berg_scale.io.shard_listing import list_shards

    inputs = tmp_path / "in"
    src = tmp_path / "src"
    _write(src, {"cats/c1.png": image_bytes("png", 30, 20, 1), "dogs/d1.jpg": image_bytes("jpg", 70, 50, 2)})
    pack_folder(str(src), str(inputs), max_side=40, prefix="ours-")
    loose = tmp_path / "loose"
    _write(loose, {"g1.jpg": image_bytes("jpg", 16, 16, 3),
                   "g1.json": json.dumps({"source": "cam/g1.jpg", "width": 16, "height": 16}).encode(),
                   "g2.jpg": image_bytes("jpg", 16, 16, 4),
                   "g2.json": json.dumps({"width": "16px", "caption": {"en": "a dog"}}).encode(),
                   "g3.jpg": image_bytes("jpg", 16, 16, 5)})
    subprocess.run(["tar", "cf", str(inputs / "gnu.tar"), "-C", str(loose), "."], check=True)
    _tarfile_shard(inputs / "py.tar", {"p1.png": image_bytes("png", 8, 12, 6),
                                       "p1.json": json.dumps({"source": "p1.png", "height": 12}).encode()})
    output = str(tmp_path / "out")
    settings = ShardSettings(output=output, image_size=32, batch_size=2, decode_threads=1, decode_ahead=0,
                             device="cpu", sample_metadata=("source", "width", "height", "caption"))
    worker = EncoderWorker(0, FixedCostModelFactory(), settings)
    for shard in list_shards(str(inputs)):
        assert worker.process(shard, 1).status == "done"
    table = open_responses(output).to_table()
    assert table.schema.names[:9] == ["key", "shard", "index", "status", "error",
                                      "source", "width", "height", "caption"]
    assert str(table.schema.field("width").type) == "int32"
    rows = {(r["shard"], r["key"]): r for r in table.to_pylist()}
    c1 = rows[("ours-000000", "cats/c1")]
    assert (c1["source"], c1["width"], c1["height"]) == ("cats/c1.png", 30, 20)
    d1 = rows[("ours-000000", "dogs/d1")]
    assert (d1["source"], d1["width"], d1["height"]) == ("dogs/d1.jpg", 40, 29)  # resized
    assert (rows[("gnu", "g1")]["source"], rows[("gnu", "g1")]["width"]) == ("cam/g1.jpg", 16)
    g2 = rows[("gnu", "g2")]
    assert g2["source"] is None and g2["width"] is None and g2["caption"] == '{"en": "a dog"}'
    assert rows[("gnu", "g3")]["source"] is None and rows[("gnu", "g3")]["status"] == "ok"
    p1 = rows[("py", "p1")]
    assert (p1["source"], p1["width"], p1["height"]) == ("p1.png", None, 12)
    assert pc.sum(pc.equal(table["status"], "ok")).as_py() == len(rows) == 6


def test_run_config_metadata_field_is_opt_in_and_validated():
    from berg_scale.config import load_config
    from berg_scale.errors import ConfigError

    raw = {"input": {"shards": "s3://b/x/{000000..000001}.tar"}, "berg_root": "/r", "output": "s3://b/o",
           "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}]}
    plain = load_config(raw)
    assert plain.input.metadata == []
    carried = load_config({**raw, "input": {**raw["input"], "metadata": ["source", "width"]}})
    assert carried.input.metadata == ["source", "width"]
    assert carried.input_fingerprint() != plain.input_fingerprint()  # a different output table
    for bad, message in ((["key"], "identity column"), (["a b"], "plain name"), (["x", "x"], "distinct")):
        with pytest.raises(ConfigError, match=message):
            load_config({**raw, "input": {**raw["input"], "metadata": bad}})


# --- one run per destination -------------------------------------------------------


def test_a_destination_in_use_is_refused_and_left_as_it_was(tmp_path):
    from berg_scale.io.output_lease import OutputBusyError, OutputLease
    from berg_scale.io.output_store import OutputStore

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"a{i}.png").write_bytes(image_bytes("png", 16, 12, i))
    dest = tmp_path / "dest"
    pack_folder(str(src), str(dest), per_shard=2)
    before = sorted(p.name for p in dest.iterdir())
    (src / "new.png").write_bytes(image_bytes("png", 16, 12, 9))
    other = OutputLease(OutputStore(str(dest)), "other-run", command="make-shards", noun="destination")
    other.acquire()
    try:
        with pytest.raises(OutputBusyError, match="is in use by run other-run.*use a new destination"):
            pack_folder(str(src), str(dest), per_shard=2, add=True)
        assert sorted(p.name for p in dest.iterdir()) == sorted([*before, "_lease.json"])
    finally:
        other.release()
    report = pack_folder(str(src), str(dest), per_shard=2, add=True)
    assert report.n_images == 1 and not (dest / "_lease.json").exists()


def test_two_add_runs_at_once_lose_no_image(tmp_path):
    """Two `make-shards --add` processes on one destination: one is refused or they run one
    after the other; either way every tar holds what the manifest says, and no image of a
    run that succeeded is lost."""
    base, first, second = tmp_path / "base", tmp_path / "x", tmp_path / "y"
    for folder, names in ((base, [f"b{i}" for i in range(4)]), (first, [f"x{i}" for i in range(60)]),
                          (second, [f"y{i}" for i in range(60)])):
        folder.mkdir()
        for i, name in enumerate(names):
            (folder / f"{name}.png").write_bytes(image_bytes("png", 16, 12, i))
    dest = tmp_path / "dest"
    pack_folder(str(base), str(dest), per_shard=4)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    runs = [subprocess.Popen([sys.executable, "-m", "berg_scale.cli", "make-shards", str(folder), str(dest),
                              "--add", "--per-shard", "5", "--quiet", "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for folder in (first, second)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for code, err in results:
        assert code == 0 or (code == 2 and "is in use by run" in err), err
    manifest = json.loads((dest / "manifest.json").read_text())
    listed = {shard["name"]: shard["keys"] for shard in manifest["shards"]}
    on_disk = sorted(p.name for p in dest.glob("shard-*.tar"))
    assert sorted(listed) == on_disk
    for name, keys in listed.items():
        assert [s.key for s in read_shard(str(dest / name))] == keys, name
    expected = {f"b{i}" for i in range(4)}
    for (code, _), prefix in zip(results, "xy"):
        if code == 0:
            expected |= {f"{prefix}{i}" for i in range(60)}
    assert {key for keys in listed.values() for key in keys} == expected
    assert not (dest / "_lease.json").exists()
