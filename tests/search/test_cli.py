"""`berg-scale search` end to end: files written, the grid, and one-line errors for bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from search_data import ERROR_ROW, MEANS, MODEL, VOXELS, write_search_data

from berg_scale.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(["search", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_results_summary_and_grid(data, tmp_path, capsys):
    like = f"{data.shards[60]}/{data.keys[60]}"
    out = tmp_path / "result"
    code, stdout, err = _run(capsys, "--responses", data.output, "--out", out, "--rois", "V1", "V2", "hV4",
                             "--like", like, "-k", "7", "--metric", "cosine")
    assert code == 0, err
    table = pq.read_table(out / "results.parquet")
    assert table.column_names == ["rank", "shard", "key", "index", "distance"]
    assert table.column("rank").to_pylist() == list(range(1, 8))
    assert data.keys[60] not in table.column("key").to_pylist()
    distances = table.column("distance").to_pylist()
    assert distances == sorted(distances)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["columns"] == [{"name": c, "width": 1} for c in MEANS]
    assert summary["target"] == {"like": like, "values": 3}
    assert summary["method"] == "exact" and summary["metric"] == "cosine"
    assert summary["counts"]["nonfinite_skipped"] == 1  # the inf in the V2 mean (NaN row is in the voxels)
    assert summary["counts"]["excluded_target_image"] == 1
    assert [r["key"] for r in summary["results"]] == table.column("key").to_pylist()
    # The grid found every image through the input URL in the commit markers.
    grid = out / "grid.png"
    assert grid.read_bytes()[:8] == PNG_MAGIC
    assert summary["files"]["grid"] == str(grid)
    assert not any("not found" in note for note in summary["notes"])
    with Image.open(grid) as image:
        assert image.width >= 800 and image.height >= 400
    assert "1" in stdout.split("\n")[1] and data.keys[60] not in stdout


def test_grid_reads_tars_from_images_when_given(data, tmp_path, capsys):
    target = tmp_path / "t.csv"
    target.write_text("V1,V2,hV4\n0.1,0.2,0.3\n")
    out = tmp_path / "r"
    code, _, err = _run(capsys, "--responses", data.output, "--out", out, "--columns", *MEANS, "--target", target,
                        "--images", tmp_path / "nowhere", "-k", "3")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    notes = [note for note in summary["notes"] if "nowhere" in note]
    assert len(notes) == 1 and "does not exist" in notes[0]  # the folder once, not one reason per image
    assert not (out / "grid.png").exists()
    code, _, err = _run(capsys, "--responses", data.output, "--out", out, "--columns", *MEANS, "--target", target,
                        "--images", data.images, "-k", "3")
    assert code == 0, err
    assert not json.loads((out / "summary.json").read_text())["notes"]


def test_no_grid_removes_a_stale_grid(data, tmp_path, capsys):
    target = tmp_path / "t.npy"
    np.save(target, np.zeros(12))
    out = tmp_path / "r"
    common = ["--responses", data.output, "--out", out, "--columns", VOXELS, "--target", target, "-k", "2"]
    assert _run(capsys, *common)[0] == 0 and (out / "grid.png").exists()
    assert _run(capsys, *common, "--no-grid")[0] == 0
    assert not (out / "grid.png").exists()
    assert json.loads((out / "summary.json").read_text())["files"]["grid"] is None


def _bad_inputs(data, tmp_path):
    def file(name, content):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, np.ndarray):
            np.save(path, content, allow_pickle=True)
        else:
            path.write_text(content)
        return str(path)

    three = file("three.npy", np.zeros(3))
    return [
        (["--columns", f"{MODEL}/sub-01/V9:mean", "--target", three], "did you mean"),
        (["--columns", "key", "--target", three], "no response column 'key'"),
        (["--columns", *MEANS, MEANS[0], "--target", three], "is given twice"),
        (["--columns", VOXELS, "--target", three],
         "the target has 3 values but the searched columns give 12"),
        (["--columns", VOXELS, *MEANS, "--target", three], f"({VOXELS}: 12, {MEANS[0]}: 1,"),
        (["--rois", "V1", "FFA", "--target", three], "subject 1 of fmri-nsd-fwrf has V1, V2, hV4"),
        (["--rois", "V1", "--model", "other", "--target", three], "no columns of model 'other'"),
        (["--columns", *MEANS, "--like", "img00000001"], "is not SHARD/KEY"),
        (["--columns", *MEANS, "--like", "999999/img00000001"], "is not a committed shard"),
        (["--columns", *MEANS, "--like", "000003/img00000350"], "is not a committed shard"),  # uncommitted
        (["--columns", *MEANS, "--like", "000000/nope"], "has no image with key 'nope'"),
        (["--columns", *MEANS, "--like", f"000000/img{ERROR_ROW:08d}"], "has status 'error'"),
        (["--columns", VOXELS, "--like", "000000/img00000005"], "not all finite"),
        (["--columns", *MEANS, "--target", file("nan.csv", "1,nan,2")], "non-finite value"),
        (["--columns", *MEANS, "--target", file("obj.npy", np.array([1, None, 2], dtype=object))],
         "holds Python objects"),
        (["--columns", *MEANS, "--target", file("p.npy", pickle.dumps([1, 2, 3]))], "no NumPy header"),
        (["--columns", *MEANS, "--target", file("junk.npy", b"not numpy at all")], "not a readable .npy"),
        (["--columns", *MEANS, "--target", file("grid.csv", "1,2,3\n4,5,6\n")], "rows with several numbers"),
        (["--columns", *MEANS, "--target", file("word.csv", "1\nx\n3\n")], "line 2"),
        (["--columns", *MEANS, "--target", file("t.json", "[1,2,3]")], "give a .npy, .csv"),
        (["--columns", *MEANS, "--target", str(tmp_path / "absent.npy")], "does not exist"),
        (["--columns", *MEANS, "--target", file("empty.csv", "")], "is empty"),
        (["--columns", *MEANS, "--target", three, "-k", "0"], "-k must be 1 or more"),
        (["--columns", MEANS[0], "--target", file("one.npy", np.ones(1)), "--metric", "correlation"],
         "needs vectors of 2 or more values"),
        (["--columns", *MEANS, "--target", three, "--metric", "cosine"], "all zeros"),
        (["--columns", *MEANS, "--target", three, "--model", "x"], "go with --rois"),
    ]


def test_bad_input_is_one_line_error(data, tmp_path, capsys):
    failures = []
    for extra, expected in _bad_inputs(data, tmp_path):
        code, _, err = _run(capsys, "--responses", data.output, "--out", tmp_path / "o", *extra)
        line = err.strip()
        if code != 2 or "\n" in line or expected not in line or not line.startswith("berg-scale search: error:"):
            failures.append((extra, expected, code, line))
    assert not failures, failures
    assert not (tmp_path / "o").exists()  # nothing is written for a refused search


def test_output_without_committed_shards_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    target = tmp_path / "t.npy"
    np.save(target, np.zeros(1))
    code, _, err = _run(capsys, "--responses", tmp_path / "empty", "--out", tmp_path / "o", "--columns", "a",
                        "--target", target)
    assert code == 2 and "no committed shards" in err


@pytest.mark.parametrize("text", ["0.5\n1.5\n2.5\n", "a,b,c\n0.5,1.5,2.5\n", "0.5 1.5\t2.5"])
def test_text_targets_are_one_row_or_one_column(text, tmp_path):
    from berg_scale.search.target import read_vector_file

    path = tmp_path / "t.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_vector_file(str(path)), [0.5, 1.5, 2.5])


def test_grid_reads_compressed_tars_in_sub_folders_through_the_markers(tmp_path, capsys):
    """Inputs packed as .tar.gz in nested folders: the markers' input URLs find every image."""
    import gzip
    import shutil

    from berg_scale.io.output_store import OutputStore, read_done_marker, write_done_marker

    data = write_search_data(tmp_path / "gz")
    store = OutputStore(data.output)
    for shard in sorted(set(data.shards)):
        marker = read_done_marker(store, shard)
        if marker is None:
            continue
        moved = tmp_path / "nested" / "day-1" / f"{shard}.tar.gz"
        moved.parent.mkdir(parents=True, exist_ok=True)
        with open(marker["input"], "rb") as source, gzip.open(moved, "wb") as target:
            shutil.copyfileobj(source, target)
        write_done_marker(store, shard, {**marker, "input": str(moved)})
    shutil.rmtree(data.images)  # only the compressed copies are left
    target = tmp_path / "t.csv"
    target.write_text("V1,V2,hV4\n0.1,0.2,0.3\n")
    out = tmp_path / "r"
    code, _, err = _run(capsys, "--responses", data.output, "--out", out, "--columns", *MEANS, "--target", target,
                        "-k", "4")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["notes"] and (out / "grid.png").read_bytes()[:8] == PNG_MAGIC
