"""Searching an output that is still being written, or whose marked shards lack their file.

The search runs on what is committed and says so in one warning line (stderr and
summary.json); a marker whose response file is gone is left out and named, not reported
as a path that "does not exist".
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
from search_data import MEANS, UNCOMMITTED_SHARD, write_search_data

from berg_scale.cli import main
from berg_scale.io.output_store import OutputStore, write_manifest
from berg_scale.rnc.synthetic import shard_name
from berg_scale.search.nearest import SearchRequest, find_nearest


def _target(tmp_path: Path) -> str:
    path = tmp_path / "t.npy"
    np.save(path, np.zeros(len(MEANS)))
    return str(path)


def test_a_finished_output_gives_no_warning(tmp_path):
    data = write_search_data(tmp_path / "d")
    committed = [shard_name(j) for j in range(4) if j != UNCOMMITTED_SHARD]
    write_manifest(OutputStore(data.output), {"status": "complete", "input_shards": committed})
    lines: list[str] = []
    result = find_nearest(SearchRequest(data.output, MEANS, target_file=_target(tmp_path), k=3), warn=lines.append)
    assert lines == [] and result.warnings == []


def test_an_output_being_written_is_searched_with_one_warning(tmp_path, capsys):
    data = write_search_data(tmp_path / "d")
    write_manifest(OutputStore(data.output), {"status": "running", "input_shards": [shard_name(j) for j in range(4)]})
    lease = {"run_id": "20260301T101500-1a2b3c4d", "host": socket.gethostname(), "pid": os.getpid(),
             "renewed_at": time.time(), "ttl_s": 120}
    (Path(data.output) / "_lease.json").write_text(json.dumps(lease))
    out = tmp_path / "r"
    code = main(["search", "--responses", data.output, "--out", str(out), "--columns", *MEANS,
                 "--target", _target(tmp_path), "-k", "3", "--no-grid"])
    err = capsys.readouterr().err
    assert code == 0, err
    expected = (f"{data.output} is not finished (3 of 4 shards committed; a generate run holds it (run "
                "20260301T101500-1a2b3c4d)): results cover the committed shards only")
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [f"warning: {expected}"]
    assert json.loads((out / "summary.json").read_text())["warnings"] == [expected]


def test_a_marker_without_its_response_file_is_left_out_and_named(tmp_path, capsys):
    data = write_search_data(tmp_path / "d")
    (Path(data.output) / "responses" / f"{shard_name(1)}.parquet").unlink()
    out = tmp_path / "r"
    code = main(["search", "--responses", data.output, "--out", str(out), "--columns", *MEANS,
                 "--target", _target(tmp_path), "-k", "3", "--no-grid"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "does not exist" not in err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert f"missing ({shard_name(1)}; rerunning `berg-scale generate` regenerates it)" in warning
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["shards"] == 2 and {r["shard"] for r in summary["results"]} <= {"000000", "000002"}
