"""Shard listing, the Parquet response writer, markers and reading back (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.engine.stand_in_model import StandInColumn, StandInReadout
from berg_scale.io.tar_sample import TarSample


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_listing_forms_and_output_names(tmp_path):
    from berg_scale.io.shard_listing import list_shards, shard_output_name

    for name in ("a/0001.tar", "a/0002.tar", "b/x y.tar", "top.tar", "a/notes.txt"):
        _touch(tmp_path / name)
    folder = list_shards(str(tmp_path))
    assert [s.name for s in folder] == ["a__0001", "a__0002", "b__x_y", "top"]
    assert [s.name for s in list_shards(str(tmp_path / "a" / "{0001..0002}.tar"))] == ["0001", "0002"]
    assert [s.name for s in list_shards(str(tmp_path / "*" / "*.tar"))] == ["a__0001", "a__0002", "b__x_y"]
    single = list_shards(str(tmp_path / "top.tar"))
    assert single[0].name == "top" and single[0].url == str(tmp_path / "top.tar")
    assert shard_output_name("../../etc/passwd.tar") == "etc__passwd"
    assert shard_output_name(".hidden.tar") == "shard.hidden"


def test_listing_refuses_name_collisions(tmp_path):
    from berg_scale.errors import ConfigError
    from berg_scale.io.shard_listing import list_shards

    _touch(tmp_path / "one" / "s.tar")
    _touch(tmp_path / "two" / "s.tar")
    with pytest.raises(ConfigError, match="same output name"):
        list_shards([str(tmp_path / "one"), str(tmp_path / "two")])


def test_listing_skips_hidden_entries_and_takes_any_letter_case(tmp_path):
    from berg_scale.io.shard_listing import list_shards

    for name in ("s.tar", "UPPER.TAR", "z.TGZ", "._s.tar", ".Trash/old.tar", "sub/.cache/x.tar", "sub/t.tar"):
        _touch(tmp_path / name)
    assert [s.name for s in list_shards(str(tmp_path))] == ["UPPER.TAR", "s", "sub__t", "z.TGZ"]
    assert [s.name for s in list_shards(str(tmp_path / "**" / "*.tar"))] == ["s", "sub__t"]
    # A hidden file named on its own is what the user asked for.
    assert [s.name for s in list_shards(str(tmp_path / "._s.tar"))] == ["shard._s"]


def test_listing_refuses_one_file_under_two_names(tmp_path):
    from berg_scale.errors import ConfigError
    from berg_scale.io.shard_listing import list_shards

    _touch(tmp_path / "in" / "a.tar")
    _touch(tmp_path / "in" / "sub" / "b.tar")
    with pytest.raises(ConfigError, match=r"matched twice by input.shards, as 'sub__b' and 'b'.*written twice"):
        list_shards([str(tmp_path / "in"), str(tmp_path / "in" / "sub")])
    # The same file under the same name twice (a pattern repeated) is one shard.
    assert len(list_shards([str(tmp_path / "in"), str(tmp_path / "in" / "a.tar")])) == 2


def test_listing_refuses_tars_the_reader_cannot_stream(tmp_path):
    from berg_scale.errors import ConfigError
    from berg_scale.io.shard_listing import list_shards

    _touch(tmp_path / "s.tar")
    _touch(tmp_path / "x.tar.xz")
    with pytest.raises(ConfigError, match=r"x\.tar\.xz.*decompress them"):
        list_shards(str(tmp_path))
    assert [s.name for s in list_shards(str(tmp_path / "*.tar"))] == ["s"]


def test_clear_output_removes_markers_before_responses(tmp_path):
    from berg_scale.io.output_store import OutputStore, clear_output, done_shards, write_done_marker

    store = OutputStore(str(tmp_path / "out"))
    (tmp_path / "out" / "responses").mkdir(parents=True)
    (tmp_path / "out" / "responses" / "s0.parquet").write_bytes(b"x")
    write_done_marker(store, "s0", {})
    removed: list[str] = []
    original = store.remove_tree

    def remove_tree(relative: str) -> None:
        if relative == "responses":
            raise OSError("storage went away")  # the clear stops midway
        removed.append(relative)
        original(relative)

    store.remove_tree = remove_tree  # type: ignore[method-assign]
    with pytest.raises(OSError):
        clear_output(store)
    assert done_shards(store) == set(), "no marker may outlive the response file it vouches for"
    assert removed[:2] == ["_done", "_failed"]


def test_status_reports_missing_response_files_stale_quarantine_and_a_dead_driver(tmp_path, capsys):
    import socket
    import subprocess
    import time

    from berg_scale.cli import main
    from berg_scale.commands.status import output_status
    from berg_scale.io.output_store import write_failed_marker, write_manifest

    rows = [TarSample("k0", 0)]
    outputs = {"m/sub-02/eeg": np.zeros((1, 24), np.float32), "m/sub-02/eeg:mean": np.zeros(1, np.float32)}
    store, _ = _write_shard(tmp_path, rows, outputs, name="s0")
    _write_shard(tmp_path, rows, outputs, name="s1")
    (tmp_path / "out" / "responses" / "s1.parquet").unlink()
    write_failed_marker(store, "gone", {"error": "truncated tar"})
    write_manifest(store, {"status": "running", "input_shards": ["s0", "s1"]})
    exited = subprocess.Popen(["true"])
    exited.wait()
    lease = {"run_id": "r1", "host": socket.gethostname(), "pid": exited.pid, "renewed_at": time.time(),
             "ttl_s": 120}
    (tmp_path / "out" / "_lease.json").write_text(json.dumps(lease))

    summary = output_status(str(tmp_path / "out"))
    assert summary["shards"] == {"total": 2, "done": 1, "failed": 0, "pending": 1, "unlisted": 0,
                                 "unbacked": 1, "failed_not_listed": 1}
    assert summary["run_status"] == "stopped" and summary["lease_holder_gone"]
    assert summary["images"]["rows"] == 1, "a marker without its file counts no rows"
    assert main(["status", str(tmp_path / "out")]) == 0, "a stale quarantine record is not a failure"
    out = capsys.readouterr().out
    assert "stopped before finishing" in out and "1 shard marker(s) without their response file (first: s1)" in out
    assert "that process has exited" in out and "1 quarantine record(s)" in out and "gone: truncated" not in out


def test_status_of_a_first_run_still_starting(tmp_path, capsys):
    import os
    import socket
    import time

    from berg_scale.cli import main

    output = tmp_path / "out"
    output.mkdir()
    assert main(["status", str(output)]) == 2  # nothing there: not an output
    assert "is not a berg-scale output" in capsys.readouterr().err
    lease = {"run_id": "r1", "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": time.time(),
             "started_at": time.time(), "ttl_s": 120}
    (output / "_lease.json").write_text(json.dumps(lease))
    assert main(["status", str(output)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("(last run: running, starting up: the shard list comes with run.json, "
                                        "once its workers are ready)"), out
    assert "writer:  run r1" in out


def test_status_survives_a_closed_pipe(tmp_path):
    import subprocess
    import sys

    rows = [TarSample("k0", 0)]
    outputs = {"m/sub-02/eeg": np.zeros((1, 24), np.float32), "m/sub-02/eeg:mean": np.zeros(1, np.float32)}
    _write_shard(tmp_path, rows, outputs, name="s0")
    command = f"{sys.executable} -m berg_scale.cli status {tmp_path / 'out'} | head -c 1"
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} >/dev/null"], capture_output=True, text=True)
    assert "error" not in result.stderr and "Broken pipe" not in result.stderr, result.stderr


@pytest.mark.s3
def test_listing_on_s3(s3_server, s3_bucket):
    from berg_scale.io.shard_listing import list_shards

    client = s3_server.client()
    bucket = s3_bucket.removeprefix("s3://")
    for key in ("x/000000.tar", "x/000001.tar", "x/sub/000002.tar", "x/readme.md"):
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    storage = s3_server.storage_options()
    assert [s.name for s in list_shards(f"{s3_bucket}/x/", storage)] == ["000000", "000001", "sub__000002"]
    brace = list_shards(f"{s3_bucket}/x/{{000000..000001}}.tar", storage)
    assert [s.url for s in brace] == [f"{s3_bucket}/x/000000.tar", f"{s3_bucket}/x/000001.tar"]


def _columns():
    readout = StandInReadout(model_id="m", subject=2)
    return [
        StandInColumn("m/sub-02/eeg", (2, 3, 4), "float16", ("repetition", "channel", "time"),
                      {"channel": np.array(["Oz", "Cz", "Pz"]), "time": np.linspace(0, 0.3, 4)}, readout, "responses"),
        StandInColumn("m/sub-02/eeg:mean", (), "float32", (), {}, readout, "mean"),
    ]


def _write_shard(tmp_path, rows, outputs, name="s0"):
    from berg_scale.io.output_store import OutputStore, write_done_marker, write_readouts
    from berg_scale.io.response_writer import ResponseShardWriter, build_record_batch, build_schema, iter_descriptions

    store = OutputStore(str(tmp_path / "out"))
    schema = build_schema(iter_descriptions(_columns()), {"weight_hashes": {"w": "abc"}})
    with ResponseShardWriter(store, name, schema) as writer:
        writer.write(build_record_batch(schema, name, rows, outputs))
        path = writer.commit()
    write_done_marker(store, name, {"rows": len(rows)})
    write_readouts(store, iter_descriptions(_columns(), with_coords=True))
    return store, path


def test_writer_schema_nulls_float16_and_read_back(tmp_path):
    from berg_scale.io.response_writer import read_schema_metadata
    from berg_scale.io.results import readout_array, readout_xarray

    rows = [TarSample("k0", 0), TarSample("k1", 1, error="truncated"), TarSample("k2", 2)]
    eeg = np.arange(2 * 24, dtype=np.float32).reshape(2, 2, 3, 4) / 7
    outputs = {"m/sub-02/eeg": eeg, "m/sub-02/eeg:mean": np.array([0.5, 1.5], dtype=np.float32)}
    store, path = _write_shard(tmp_path, rows, outputs)

    table = pq.read_table(path)
    assert table.column_names[:5] == ["key", "shard", "index", "status", "error"]
    eeg_type = table.schema.field("m/sub-02/eeg").type
    assert eeg_type.list_size == 24 and str(eeg_type.value_type) == "halffloat"
    assert table.column("status").to_pylist() == ["ok", "error", "ok"]
    assert table.column("error").to_pylist() == [None, "truncated", None]
    assert table.column("m/sub-02/eeg").null_count == 1
    meta = read_schema_metadata(table.schema)
    assert meta["weight_hashes"] == {"w": "abc"}
    assert meta["columns"][0]["dims"] == ["repetition", "channel", "time"]
    assert list((tmp_path / "out" / "_tmp").iterdir()) == []

    keys, values = readout_array(str(tmp_path / "out"), "m/sub-02/eeg")
    assert list(keys) == ["k0", "k2"] and values.shape == (2, 2, 3, 4) and values.dtype == np.float16
    np.testing.assert_array_equal(values, eeg.astype(np.float16))
    _, with_errors = readout_array(str(tmp_path / "out"), "m/sub-02/eeg:mean", status_ok_only=False)
    assert np.isnan(with_errors[1]) and with_errors[2] == 1.5
    labelled = readout_xarray(str(tmp_path / "out"), "m/sub-02/eeg")
    assert labelled.dims == ("image", "repetition", "channel", "time")
    assert list(labelled.coords["channel"].values) == ["Oz", "Cz", "Pz"]


def test_only_committed_shards_are_read(tmp_path):
    from berg_scale.errors import BergScaleError
    from berg_scale.io.results import open_responses

    rows = [TarSample("k0", 0)]
    outputs = {"m/sub-02/eeg": np.zeros((1, 24), np.float32), "m/sub-02/eeg:mean": np.zeros(1, np.float32)}
    store, _ = _write_shard(tmp_path, rows, outputs, name="committed")
    # A response file without a marker (a crashed attempt) must be invisible.
    (tmp_path / "out" / "responses" / "orphan.parquet").write_bytes(
        (tmp_path / "out" / "responses" / "committed.parquet").read_bytes())
    assert open_responses(str(tmp_path / "out")).count_rows() == 1
    with pytest.raises(BergScaleError, match="no committed shards"):
        open_responses(str(tmp_path / "nothing"))


def test_writer_abort_leaves_nothing_behind(tmp_path):
    from berg_scale.io.output_store import OutputStore
    from berg_scale.io.response_writer import ResponseShardWriter, build_record_batch, build_schema, iter_descriptions

    store = OutputStore(str(tmp_path / "out"))
    schema = build_schema(iter_descriptions(_columns()), {})
    with pytest.raises(RuntimeError):
        with ResponseShardWriter(store, "s", schema) as writer:
            writer.write(build_record_batch(schema, "s", [TarSample("k", 0, error="bad")], {}))
            raise RuntimeError("worker failure")
    assert not (tmp_path / "out" / "responses").exists()
    assert list((tmp_path / "out" / "_tmp").iterdir()) == []


def test_wrong_output_width_is_an_error(tmp_path):
    from berg_scale.io.response_writer import build_record_batch, build_schema, iter_descriptions

    schema = build_schema(iter_descriptions(_columns()), {})
    with pytest.raises(ValueError, match="expected 24 values per image"):
        build_record_batch(schema, "s", [TarSample("k", 0)],
                           {"m/sub-02/eeg": np.zeros((1, 5), np.float32), "m/sub-02/eeg:mean": np.zeros(1)})


def test_status_of_an_output(tmp_path, capsys):
    from berg_scale.cli import main
    from berg_scale.commands.status import output_status
    from berg_scale.io.output_store import write_failed_marker, write_manifest

    rows = [TarSample("k0", 0), TarSample("k1", 1, error="bad")]
    outputs = {"m/sub-02/eeg": np.zeros((1, 24), np.float32), "m/sub-02/eeg:mean": np.zeros(1, np.float32)}
    store, _ = _write_shard(tmp_path, rows, outputs, name="s0")
    json_marker = json.loads((tmp_path / "out" / "_done" / "s0.json").read_text())
    json_marker.update(ok=1, errors=1, notes=2, note_examples=[
        {"key": "k0", "note": "json member is not valid JSON"}, {"key": None, "note": "1 hidden member skipped"}])
    (tmp_path / "out" / "_done" / "s0.json").write_text(json.dumps(json_marker))
    write_failed_marker(store, "s1", {"error": "truncated tar"})
    write_manifest(store, {"status": "incomplete", "input_shards": ["s0", "s1", "s2"]})
    summary = output_status(str(tmp_path / "out"))
    assert summary["shards"] == {"total": 3, "done": 1, "failed": 1, "pending": 1, "unlisted": 0,
                                 "unbacked": 0, "failed_not_listed": 0}
    assert summary["images"] == {"rows": 2, "ok": 1, "errors": 1, "notes": 2}
    assert main(["status", str(tmp_path / "out")]) == 1  # s1 is quarantined
    out = capsys.readouterr().out
    assert "1 done, 1 failed, 1 pending, of 3" in out and "s1: truncated tar" in out
    assert "notes:   2 reader note(s)" in out
    assert "         first, in s0, key 'k0': json member is not valid JSON\n" in out
    assert summary["first_note"] == {"shard": "s0", "key": "k0", "note": "json member is not valid JSON"}


def test_storage_retries_pass_a_refusal_on_at_once():
    from berg_scale.io.output_lease import OutputBusyError
    from berg_scale.io.output_store import with_storage_retries

    calls = []

    def busy():
        calls.append(1)
        raise OutputBusyError("out is in use by run r1")

    with pytest.raises(OutputBusyError):
        with_storage_retries(busy, "taking the output's lease", delay_s=5.0)
    assert len(calls) == 1, "a busy output is an answer, not an outage to wait out"


@pytest.mark.parametrize(("pending", "shown_more"), [(10, None), (12, 2), (60, 50)])
def test_status_counts_the_pending_shards_it_does_not_name(tmp_path, capsys, pending, shown_more):
    from berg_scale.cli import main
    from berg_scale.io.output_store import OutputStore, write_manifest

    write_manifest(OutputStore(str(tmp_path / "out")),
                   {"status": "running", "input_shards": [f"s{i:02d}" for i in range(pending)]})
    capsys.readouterr()
    main(["status", str(tmp_path / "out")])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pending:"))
    assert line.count(",") == 9, line
    if shown_more is None:
        assert "more" not in line, line
    else:
        assert line.endswith(f"(+{shown_more} more)"), line


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_response_files_say_how_they_were_computed(tmp_path, engine_berg_root, precision):
    from engine_support import in_process_worker

    from berg_scale.io.response_writer import read_schema_metadata
    from berg_scale.io.results import open_responses
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.models import ModelSet, ReadoutSpec
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 2)
    model = ModelSet(str(engine_berg_root), [ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})],
                     device="cpu", precision=precision)
    output = str(tmp_path / "out")
    worker = in_process_worker(output, model)
    assert worker.process(list_shards(str(tmp_path / "in"))[0], 1).status == "done"
    meta = read_schema_metadata(open_responses(output).schema)
    assert meta["precision"] == precision and meta["model_fingerprint"] == model.fingerprint
    assert meta["exact_resize"] is (precision == "fp32") and meta["compile"] is False


def test_status_reaches_inputs_and_weights_with_the_run_s_storage_settings():
    """Per-prefix endpoints and anonymous access come back from run.json (credentials never do)."""
    from berg_scale.commands.status import _recorded_storage
    from berg_scale.config import load_config

    config = load_config({
        "input": {"shards": "s3://images/{000000..000001}.tar"}, "berg_root": "s3://weights/berg",
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}], "output": "s3://out/run",
        "storage": {"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s",
                    "prefixes": {"s3://weights/": {"endpoint_url": "http://127.0.0.1:9100", "anon": True}}},
    }).redacted()
    options = _recorded_storage(config, None)
    assert options.for_url("s3://images/000000.tar").endpoint_url == "http://127.0.0.1:9000"
    weights = options.for_url("s3://weights/berg/x.npy")
    assert (weights.endpoint_url, weights.anon) == ("http://127.0.0.1:9100", True)
    assert options.key is None and options.secret is None
