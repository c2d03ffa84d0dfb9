"""Reruns with something changed: every committed response stays bound to its causes.

Each case runs `berg-scale generate` as a user would, then changes one thing (weights,
input bytes, the dataset behind the same names, the input root) and runs it again. The
rerun either does the right thing or refuses in one line; it never leaves a table that
mixes causes, and a refused run leaves run.json as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from engine_support import FWRF, IMAGE_SIZE

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fwrf_roots(tmp_path_factory, engine_berg_root):
    """Two BERG roots that differ only in the fwRF V1 weights (root B is a linked copy)."""
    from berg_scale.models.families import metadata_file, weight_files
    from berg_scale.synthetic.berg_root import _write_fwrf

    root_b = tmp_path_factory.mktemp("berg_root_b") / "root"
    shutil.copytree(engine_berg_root, root_b, copy_function=os.link)
    relative = weight_files(FWRF, 1, "V1")[0]
    for linked in (relative, metadata_file(FWRF, 1, "V1")):
        (root_b / linked).unlink()  # never write through a hard link into root A
    _write_fwrf(root_b, 1, "V1", 0, seed=99, n_voxels=6)
    return engine_berg_root, str(root_b), relative


def _write_config(path: Path, shards: str, output: str, berg_root: str) -> str:
    config = {
        "input": {"shards": shards, "image_size": IMAGE_SIZE},
        "berg_root": berg_root,
        "readouts": [{"model": FWRF, "subjects": [1], "rois": ["V1"], "outputs": ["responses", "mean"]}],
        "output": output,
        "resources": {"workers": 1, "batch_size": 4, "decode_threads": 1, "cpus_per_worker": 1},
        "retries": {"max_attempts": 1, "backoff_s": 0.1, "speculative_tail": False},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _generate(capsys, config: str, *extra: str) -> tuple[int, str]:
    from berg_scale.cli import main

    capsys.readouterr()
    code = main(["generate", config, "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.err


def _status(capsys, output: str, *extra: str) -> str:
    from berg_scale.cli import main

    capsys.readouterr()
    main(["status", output, *extra])
    return capsys.readouterr().out


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "a refusal must say why"
    assert "Traceback" not in err
    return lines[-1]


def _keys(output: str) -> list[str]:
    from berg_scale.io.results import open_responses

    return open_responses(output).to_table().column("key").to_pylist()


def _first_response(output: str) -> list[float]:
    from berg_scale.io.results import open_responses

    table = open_responses(output).to_table().sort_by("key")
    return table.column(f"{FWRF}/sub-01/V1").to_pylist()[0]


def test_rerun_with_other_weights_is_refused_naming_the_file(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    root_a, root_b, relative = fwrf_roots
    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=1)
    output = str(tmp_path / "out")
    config_a = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, root_a)
    assert _generate(capsys, config_a)[0] == 0
    run_json = (tmp_path / "out" / "run.json").read_bytes()
    before = _first_response(output)

    config_b = _write_config(tmp_path / "b.yaml", str(tmp_path / "in"), output, root_b)
    code, err = _generate(capsys, config_b)
    line = _error_line(err)
    assert code == 2
    assert relative in line and "weights" in line and "--overwrite" in line
    assert (tmp_path / "out" / "run.json").read_bytes() == run_json, "a refused run must not touch run.json"
    assert _first_response(output) == before

    code, _ = _generate(capsys, config_b, "--overwrite")
    assert code == 0
    assert sorted(_keys(output)) == sorted(k for info in infos for k in info.keys)
    assert _first_response(output) != before, "--overwrite regenerates with the new weights"
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["config"]["berg_root"] == root_b
    from berg_scale.models.store import WeightStore

    assert manifest["weight_hashes"][relative] == WeightStore(root_b).sha256(relative)
    marker = json.loads((tmp_path / "out" / "_done" / "shard-000000.json").read_text())
    assert marker["weights"][relative] == manifest["weight_hashes"][relative]


def test_same_tar_names_from_another_dataset_are_refused(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "first"), 2, 3, seed=1)
    write_synthetic_shards(str(tmp_path / "second"), 2, 4, seed=2)
    output = str(tmp_path / "out")
    assert _generate(capsys, _write_config(tmp_path / "a.yaml", str(tmp_path / "first"), output, fwrf_roots[0]))[0] == 0
    keys = sorted(_keys(output))

    code, err = _generate(capsys, _write_config(tmp_path / "b.yaml", str(tmp_path / "second"), output, fwrf_roots[0]))
    line = _error_line(err)
    assert code == 2 and "different file" in line and "shard-000000" in line and "--overwrite" in line
    assert sorted(_keys(output)) == keys


def test_input_rewritten_in_place_is_refused(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=1)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, fwrf_roots[0])
    assert _generate(capsys, config)[0] == 0
    assert _status(capsys, output).splitlines()[0].endswith("(last run: complete)")
    write_synthetic_shards(str(tmp_path / "in"), 2, 5, seed=7)  # same names, new images

    # status says what the next generate will say, instead of calling the output complete
    printed = _status(capsys, output)
    assert "(last run: complete, but its inputs changed since: see below)" in printed
    assert "inputs:  the next `generate` would refuse: the input of 2 committed shard(s)" in printed
    assert "inputs:" not in _status(capsys, output, "--no-input-check")
    code, err = _generate(capsys, config)
    line = _error_line(err)
    assert code == 2 and "changed since it was committed" in line
    assert printed.split("would refuse: ", 1)[1].split(";")[0] in line  # the very same words


def test_weights_rewritten_in_place_are_named_by_status(ray_session, tmp_path, capsys, monkeypatch, fwrf_roots):
    from berg_scale.synthetic.berg_root import _write_fwrf
    from berg_scale.synthetic.shards import write_synthetic_shards

    monkeypatch.setenv("BERG_SCALE_DIGEST_CACHE", str(tmp_path / "digests.json"))
    root = tmp_path / "root"
    shutil.copytree(fwrf_roots[0], root)  # a real copy: its files are rewritten below
    write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=1)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, str(root))
    assert _generate(capsys, config)[0] == 0
    printed = _status(capsys, output)
    assert printed.splitlines()[0].endswith("(last run: complete)") and "weights:" not in printed

    _write_fwrf(root, 1, "V1", 0, seed=99, n_voxels=6)  # other V1 weights under the same root
    # The driver's digest cache knows only the old bytes: status cannot vouch for the new ones
    printed = _status(capsys, output)
    assert "weights: 2 weight file(s) not verified" in printed and "--hash-weights" in printed
    assert printed.splitlines()[0].endswith("(last run: complete)")
    from berg_scale.commands.status import output_status

    found = output_status(output, check_inputs=True)["weights"]
    assert (found["ok"], found["all_verified"], found["unverified"], found["problem"]) == (True, False, 2, None)

    printed = _status(capsys, output, "--hash-weights")
    assert "(last run: complete, but its weights changed since: see below)" in printed
    assert f"weights: the next `generate` would refuse: the weights under berg_root differ" in printed
    assert fwrf_roots[2] in printed
    # the digests it read are remembered: a plain status now gives the same answer, reading nothing
    assert "the next `generate` would refuse" in _status(capsys, output)
    code, err = _generate(capsys, config)
    line = _error_line(err)
    assert code == 2 and printed.split("would refuse: ", 1)[1].split(" (sha256")[0] in line

    (root / fwrf_roots[2]).unlink()
    printed = _status(capsys, output)
    assert f"{root / fwrf_roots[2]}, which made committed shards of {output}, is no longer at berg_root" in printed
    assert "weights:" not in _status(capsys, output, "--no-input-check")


def test_moved_root_with_new_shard_names_is_refused_not_written_twice(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "data"), 2, 3, seed=1)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "data"), output, fwrf_roots[0])
    assert _generate(capsys, config)[0] == 0
    # The user moves the tars one level down and keeps pointing at the old root: the shard
    # names become sub__shard-00000x, but the files are the same (os.rename keeps mtimes).
    (tmp_path / "data" / "sub").mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar"):
        os.rename(tmp_path / "data" / name, tmp_path / "data" / "sub" / name)

    code, err = _generate(capsys, config)
    line = _error_line(err)
    assert code == 2 and "same file as committed shard 'shard-000000'" in line and "written twice" in line
    assert "moved inside the input folder" in line and "1 more committed shard(s)" in line
    assert "move it back to shard-000000.tar" in line and "input root moved" not in line
    keys = _keys(output)
    assert len(keys) == len(set(keys)) == sum(len(info.keys) for info in infos)

    # The way out the message gives for keeping the new layout: drop the old shards' pairs.
    assert "responses/shard-000000.parquet" in line
    for name in ("shard-000000", "shard-000001"):
        (tmp_path / "out" / "_done" / f"{name}.json").unlink()
        (tmp_path / "out" / "responses" / f"{name}.parquet").unlink()
    assert _generate(capsys, config)[0] == 0
    keys = _keys(output)
    assert len(keys) == len(set(keys)) == sum(len(info.keys) for info in infos)
    assert "complete" in _status(capsys, output)


def test_pointing_at_a_sub_folder_is_named_as_a_moved_root(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "data" / "sub"), 1, 3, seed=1)
    output = str(tmp_path / "out")
    assert _generate(capsys, _write_config(tmp_path / "a.yaml", str(tmp_path / "data"), output, fwrf_roots[0]))[0] == 0
    code, err = _generate(capsys, _write_config(tmp_path / "b.yaml", str(tmp_path / "data" / "sub"), output,
                                                fwrf_roots[0]))
    line = _error_line(err)
    assert code == 2 and "same file as committed shard 'sub__shard-000000'" in line
    assert "the input root moved" in line and "moved inside" not in line


def test_moved_folder_with_same_names_is_the_same_input(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "old"), 2, 3, seed=1)
    output = str(tmp_path / "out")
    assert _generate(capsys, _write_config(tmp_path / "a.yaml", str(tmp_path / "old"), output, fwrf_roots[0]))[0] == 0
    os.rename(tmp_path / "old", tmp_path / "new")

    code, err = _generate(capsys, _write_config(tmp_path / "b.yaml", str(tmp_path / "new"), output, fwrf_roots[0]))
    assert code == 0 and "nothing to do" in err and "new location" in err


def test_extending_input_shards_resumes_and_dropping_one_is_refused(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 3, 2, seed=4)
    output = str(tmp_path / "out")
    first = _write_config(tmp_path / "a.yaml", str(tmp_path / "in" / "shard-{000000..000001}.tar"), output,
                          fwrf_roots[0])
    assert _generate(capsys, first)[0] == 0
    assert not (tmp_path / "out" / "_tmp").exists(), "a finished run leaves no staging folder"
    extended = _write_config(tmp_path / "b.yaml", str(tmp_path / "in" / "shard-{000000..000002}.tar"), output,
                             fwrf_roots[0])
    code, err = _generate(capsys, extended)
    assert code == 0 and "generating 1 shard (2 already done)" in err
    assert not (tmp_path / "out" / "_tmp").exists()
    assert sorted(_keys(output)) == sorted(k for info in infos for k in info.keys)

    shrunk = _write_config(tmp_path / "c.yaml", str(tmp_path / "in" / "shard-000000.tar"), output, fwrf_roots[0])
    code, err = _generate(capsys, shrunk)
    line = _error_line(err)
    assert code == 2 and "not among input.shards" in line
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(manifest["input_shards"]) == 3, "run.json still describes the files beside it"


def test_a_marker_whose_response_file_is_gone_is_generated_again(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.commands.status import output_status
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=2)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, fwrf_roots[0])
    assert _generate(capsys, config)[0] == 0
    before = sorted(_keys(output))
    (tmp_path / "out" / "responses" / "shard-000001.parquet").unlink()
    assert output_status(output)["shards"]["unbacked"] == 1

    code, err = _generate(capsys, config)
    assert code == 0 and "1 shard marker(s) have no response file (first: shard-000001)" in err
    assert "generating 1 shard (1 already done)" in err
    assert sorted(_keys(output)) == before == sorted(k for info in infos for k in info.keys)
    assert output_status(output)["shards"]["unbacked"] == 0


def test_overwrite_keeps_the_output_when_the_models_do_not_load(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=3)
    output = str(tmp_path / "out")
    assert _generate(capsys, _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, fwrf_roots[0]))[0] == 0
    before = sorted(_keys(output))
    broken = tmp_path / "broken_root"
    shutil.copytree(fwrf_roots[0], broken)
    (broken / fwrf_roots[2]).write_bytes(b"not a weight file")

    code, err = _generate(capsys, _write_config(tmp_path / "b.yaml", str(tmp_path / "in"), output, str(broken)),
                          "--overwrite")
    line = _error_line(err)
    assert code == 2 and "no worker could load the models" in line and "refusing to load" in line, line
    assert sorted(_keys(output)) == before, "a run that cannot start must not discard the existing responses"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "complete"


def test_a_changed_setting_is_named_in_the_refusal(ray_session, tmp_path, capsys, fwrf_roots):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 3, seed=5)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, fwrf_roots[0])
    assert _generate(capsys, config)[0] == 0
    code, err = _generate(capsys, config, "--set", "readouts.0.outputs=[mean]")
    line = _error_line(err)
    assert code == 2 and 'readouts[0].outputs: ["responses", "mean"] -> ["mean"]' in line, line
    assert "another order" not in line
    code, err = _generate(capsys, config, "--set", "readouts.0.outputs=[mean, responses]")
    line = _error_line(err)
    assert code == 2 and 'readouts[0].outputs: ["responses", "mean"] -> ["mean", "responses"]' in line, line
    assert "the same entries in another order, which sets the column order" in line

    code, err = _generate(capsys, config)
    assert code == 0 and "nothing to do" in err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "nothing-to-do"
    assert _status(capsys, output).splitlines()[0].endswith(
        "(last run: complete; the last `generate` found nothing to do)")


@pytest.mark.parametrize("changed", ["weights", "metadata"])
def test_files_rewritten_keeping_size_and_time_are_caught_by_the_workers(
    ray_session, tmp_path, capsys, fwrf_roots, changed
):
    """The driver reuses digests of files it hashed before (same URL, size, mtime); a
    weight or metadata file (ncsnr picks the voxels of `:mean`) rewritten behind that
    stamp is still refused, by the workers' own hashes, and the next run hashes it
    afresh and refuses it as changed weights."""
    from berg_scale.models import store as weight_store
    from berg_scale.models.families import metadata_file
    from berg_scale.synthetic.shards import write_synthetic_shards

    root_a, root_b, relative = fwrf_roots
    if changed == "metadata":
        relative = metadata_file(FWRF, 1, "V1")
    root = tmp_path / "root"
    shutil.copytree(root_a, root)
    write_synthetic_shards(str(tmp_path / "in"), 1, 3, seed=2)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, str(root))
    assert _generate(capsys, config)[0] == 0
    weight_store._HASH_CACHE.clear()  # as a new driver process would start
    before = weight_store.hash_computations
    code, err = _generate(capsys, config)
    assert code == 0 and "nothing to do" in err
    assert weight_store.hash_computations == before, "an unchanged root is not read again"

    target = root / relative
    stat = target.stat()
    replacement = (Path(root_b) / relative).read_bytes()
    assert len(replacement) == stat.st_size and replacement != target.read_bytes()
    target.write_bytes(replacement)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    weight_store._HASH_CACHE.clear()
    run_json = (tmp_path / "out" / "run.json").read_bytes()
    write_synthetic_shards(str(tmp_path / "more"), 2, 3, seed=2)
    shutil.copy(tmp_path / "more" / "shard-000001.tar", tmp_path / "in")  # one more shard: work to do

    code, err = _generate(capsys, config)
    line = _error_line(err)
    assert code == 2 and relative in line and "keeping its size and modification time" in line, line
    assert (tmp_path / "out" / "run.json").read_bytes() == run_json
    assert not (tmp_path / "out" / "_done" / "shard-000001.json").exists()

    weight_store._HASH_CACHE.clear()
    code, err = _generate(capsys, config)
    line = _error_line(err)
    assert code == 2 and relative in line and "--overwrite" in line, line


def test_status_names_input_shards_added_since_and_markers_removed(ray_session, tmp_path, capsys, fwrf_roots):
    import shutil as shutil_module

    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=2)
    output = str(tmp_path / "out")
    config = _write_config(tmp_path / "a.yaml", str(tmp_path / "in"), output, fwrf_roots[0])
    assert _generate(capsys, config)[0] == 0
    assert _status(capsys, output).splitlines()[0].endswith("(last run: complete)")
    write_synthetic_shards(str(tmp_path / "more"), 1, 3, seed=3)
    shutil_module.copy(tmp_path / "more" / "shard-000000.tar", tmp_path / "in" / "extra.tar")

    printed = _status(capsys, output)
    assert printed.splitlines()[0].endswith(
        "(last run: complete; the next `generate` has work: 1 new input shard)"), printed
    assert "new:     1 input shard under input.shards that the last run did not list (first: extra)" in printed
    assert json.loads(_status(capsys, output, "--json"))["inputs"]["new_shards"] == 1
    assert "new input shard" not in _status(capsys, output, "--no-input-check")
    code, err = _generate(capsys, config)
    assert code == 0 and "generating 1 shard (2 already done)" in err
    assert _status(capsys, output).splitlines()[0].endswith("(last run: complete)")

    (tmp_path / "out" / "_done" / "extra.json").unlink()
    (tmp_path / "out" / "responses" / "extra.parquet").unlink()
    assert _status(capsys, output).splitlines()[0].endswith(
        "(last run: complete; the next `generate` has work: 1 shard no longer committed)")
