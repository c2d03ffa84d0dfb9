"""One writer per output: the lease refuses a second driver, and stale leases are handled."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from engine_support import FWRF, IMAGE_SIZE


def _config(tmp_path, shards: str, output: str, berg_root: str, name: str = "run.yaml", **resources) -> str:
    config = {
        "input": {"shards": shards, "image_size": IMAGE_SIZE},
        "berg_root": berg_root,
        "readouts": [{"model": FWRF, "subjects": [1], "rois": ["V1"], "outputs": ["responses", "mean"]}],
        "output": output,
        "resources": {"workers": 1, "batch_size": 4, "decode_threads": 1, "cpus_per_worker": 1, **resources},
        "retries": {"max_attempts": 1, "backoff_s": 0.1, "speculative_tail": False},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _generate(capsys, config: str, *extra: str) -> tuple[int, str]:
    from berg_scale.cli import main

    capsys.readouterr()
    code = main(["generate", config, "--no-progress", *extra])
    return code, capsys.readouterr().err


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lease(output, **holder) -> None:
    os.makedirs(output, exist_ok=True)
    payload = {"run_id": "old-run", "host": socket.gethostname(), "pid": _dead_pid(), "pid_start": None,
               "started_at": time.time() - 600, "renewed_at": time.time() - 5, **holder}
    with open(os.path.join(output, "_lease.json"), "w") as handle:
        json.dump(payload, handle)


# --------------------------------------------------------------------------- lease alone


def test_exactly_one_of_many_racing_drivers_gets_the_lease_locally(tmp_path):
    from berg_scale.io.output_lease import OutputBusyError, OutputLease
    from berg_scale.io.output_store import OutputStore

    output = str(tmp_path / "out")
    leases = [OutputLease(OutputStore(output), f"run-{i}") for i in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(leases))

    def claim(lease):
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("held")
        except OutputBusyError:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * 7
    holder = next(lease for lease in leases if lease.held)
    holder.release()
    assert not os.path.exists(os.path.join(output, "_lease.json"))


@pytest.mark.s3
def test_lease_on_s3_is_a_conditional_create_renewed_and_released(s3_server, s3_bucket):
    from berg_scale.io.output_lease import OutputBusyError, OutputLease, read_lease
    from berg_scale.io.output_store import OutputStore

    storage = s3_server.storage_options()
    output = f"{s3_bucket}/out"
    first = OutputLease(OutputStore(output, storage), "run-a", renew_s=0.2)
    first.acquire()
    second = OutputLease(OutputStore(output, storage), "run-b")
    with pytest.raises(OutputBusyError, match=r"in use by run run-a \(host .*, pid \d+"):
        second.acquire(take_over=True)  # a live lease is never taken over
    renewed_before = read_lease(OutputStore(output, storage))["renewed_at"]
    time.sleep(0.8)
    assert read_lease(OutputStore(output, storage))["renewed_at"] > renewed_before
    first.release()
    assert read_lease(OutputStore(output, storage)) is None
    second.acquire()
    assert read_lease(OutputStore(output, storage))["run_id"] == "run-b"
    second.release()


@pytest.mark.s3
def test_a_refused_s3_renewal_is_final_only_when_another_run_holds_the_lease(s3_server, s3_bucket):
    """After an object-store restart a renewal can be refused (a new ETag, a brief 404) while
    the lease object still names this run: the run keeps going."""
    from berg_scale.io.output_lease import OutputBusyError, OutputLease
    from berg_scale.io.output_store import OutputStore

    output = f"{s3_bucket}/out"
    lease = OutputLease(OutputStore(output, s3_server.storage_options()), "run-a", renew_s=3600)
    lease.acquire()
    client = s3_server.client()
    bucket, key = s3_bucket.removeprefix("s3://"), "out/_lease.json"
    ours = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(ours, indent=2).encode())  # same run, new ETag
    lease._renew_once()
    lease._renew_once()  # with the server's ETag adopted, the renewal goes through again
    assert lease.lost is None and lease.held
    client.delete_object(Bucket=bucket, Key=key)
    for _ in range(2):
        lease._renew_once()  # a lease object missing for a moment is not yet a take-over
    assert lease.lost is None
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({**ours, "run_id": "run-b"}).encode())
    lease._renew_once()
    with pytest.raises(OutputBusyError, match="taken over by another run"):
        lease.check()
    lease.release()
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["run_id"] == "run-b"


def test_a_run_that_lost_its_lease_stops(tmp_path):
    from berg_scale.io.output_lease import OutputBusyError, OutputLease
    from berg_scale.io.output_store import OutputStore

    output = str(tmp_path / "out")
    lease = OutputLease(OutputStore(output), "run-a", renew_s=0.1)
    lease.acquire()
    # Another run took the lease over (this one stalled past the TTL): the next renewal notices.
    with open(os.path.join(output, "_lease.json"), "w") as handle:
        json.dump({"run_id": "run-b", "host": "elsewhere", "pid": 1, "renewed_at": time.time()}, handle)
    deadline = time.time() + 5
    while lease.lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(OutputBusyError, match="taken over by another run"):
        lease.check()
    lease.release()
    assert json.load(open(os.path.join(output, "_lease.json")))["run_id"] == "run-b", "never remove another's lease"


# --------------------------------------------------------------------------- through generate


@pytest.mark.ray
def test_second_driver_is_refused_while_the_first_holds_the_output(ray_session, tmp_path, capsys, engine_berg_root):
    from berg_scale.io.output_lease import OutputLease
    from berg_scale.io.output_store import OutputStore
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 2, seed=1)
    output = str(tmp_path / "out")
    holder = OutputLease(OutputStore(output), "other-run", renew_s=0.5, command="berg-scale generate other.yaml")
    holder.acquire()
    try:
        code, err = _generate(capsys, _config(tmp_path, str(tmp_path / "in"), output, engine_berg_root))
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in err
        assert f"in use by run other-run (host {socket.gethostname()}, pid {os.getpid()}" in lines[-1]
        assert not os.path.exists(os.path.join(output, "run.json")), "the refused driver wrote nothing"
        assert not os.path.exists(os.path.join(output, "_done"))
    finally:
        holder.release()


@pytest.mark.ray
def test_lease_of_a_dead_driver_on_this_host_is_taken_over_and_only_its_staging_removed(
    ray_session, tmp_path, capsys, engine_berg_root
):
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 2, seed=1)
    output = tmp_path / "out"
    _write_lease(str(output))
    (output / "_tmp" / "old-run").mkdir(parents=True)
    (output / "_tmp" / "old-run" / "abc-shard-000000.parquet").write_bytes(b"partial")
    (output / "_tmp" / "someone-else").mkdir()
    (output / "_tmp" / "someone-else" / "keep.parquet").write_bytes(b"not ours")

    code, err = _generate(capsys, _config(tmp_path, str(tmp_path / "in"), str(output), engine_berg_root))
    assert code == 0, err
    assert "took over the lease of run old-run" in err and "which is no longer running" in err
    assert not (output / "_tmp" / "old-run").exists()
    assert (output / "_tmp" / "someone-else" / "keep.parquet").read_bytes() == b"not ours"
    assert not (output / "_lease.json").exists(), "released at the end"
    manifest = json.loads((output / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["shards"]["done"] == len(infos)


@pytest.mark.ray
def test_stale_lease_from_another_host_needs_take_over(ray_session, tmp_path, capsys, engine_berg_root):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 2, seed=1)
    output = str(tmp_path / "out")
    _write_lease(output, host="gpu-node-7", pid=4242, renewed_at=time.time() - 3600, ray_job="raysubmit_abc")
    config = _config(tmp_path, str(tmp_path / "in"), output, engine_berg_root)

    code, err = _generate(capsys, config)
    line = [line for line in err.splitlines() if line.strip()][-1]
    assert code == 2 and "gpu-node-7" in line and "stale" in line and "--take-over" in line

    code, err = _generate(capsys, config, "--take-over")
    assert code == 0 and "took over the lease" in err
    assert "not renewed for 3600 s" in err and "no longer running" not in err, err


def test_a_live_lease_from_another_host_says_when_it_goes_stale(tmp_path):
    from berg_scale.io.output_lease import OutputBusyError, OutputLease
    from berg_scale.io.output_store import OutputStore

    output = str(tmp_path / "out")
    _write_lease(output, host="gpu-node-7", pid=4242, renewed_at=time.time() - 20)
    with pytest.raises(OutputBusyError, match=r"renewed 2[01] s ago.*goes stale in (99|100) s; then rerun with --take-over"):
        OutputLease(OutputStore(output), "new-run", ttl_s=120).acquire()
    # a live holder on this machine: nothing to wait out, so no stale-lease advice
    _write_lease(output, pid=os.getpid(), renewed_at=time.time() - 20)
    with pytest.raises(OutputBusyError) as refused:
        OutputLease(OutputStore(output), "new-run", ttl_s=120).acquire(take_over=True)
    message = str(refused.value)
    assert "(a live lease cannot be taken over)" in message and message.endswith("or use a new output")


@pytest.mark.ray
@pytest.mark.slow
def test_two_drivers_started_together_on_a_fresh_output(tmp_path, engine_berg_root):
    """Two `generate` processes with different configs race for one new output: one runs,
    the other is refused, and run.json describes the columns in the files."""
    from berg_scale.io.results import open_responses
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 2, seed=1)
    output = str(tmp_path / "out")
    one = _config(tmp_path, str(tmp_path / "in"), output, engine_berg_root, name="one.yaml")
    two = yaml.safe_load(open(one))
    two["readouts"][0]["outputs"] = ["mean"]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    env = {**os.environ, "RAY_ADDRESS": ""}
    processes = [
        subprocess.Popen([sys.executable, "-m", "berg_scale.cli", "generate", path, "--no-progress"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for path in (one, str(tmp_path / "two.yaml"))
    ]
    results = [(process.wait(timeout=300), process.stdout.read()) for process in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(text for code, text in results if code == 2)
    assert "in use by run" in refused or "different config" in refused
    manifest = json.load(open(os.path.join(output, "run.json")))
    columns = set(open_responses(output).schema.names)
    wanted = {f"{FWRF}/sub-01/V1:mean"} | (
        {f"{FWRF}/sub-01/V1"} if "responses" in manifest["config"]["readouts"][0]["outputs"] else set()
    )
    assert wanted <= columns and len(columns - {"key", "shard", "index", "status", "error"}) == len(wanted)


def test_status_counts_listed_shards_and_names_the_writer(tmp_path, capsys):
    from berg_scale.cli import main
    from berg_scale.io.output_lease import OutputLease
    from berg_scale.io.output_store import OutputStore, write_done_marker, write_manifest

    output = str(tmp_path / "out")
    store = OutputStore(output)
    write_manifest(store, {"status": "running", "input_shards": ["a", "b", "c", "d"]})
    (tmp_path / "out" / "responses").mkdir()
    for name in ("a", "b", "e"):
        (tmp_path / "out" / "responses" / f"{name}.parquet").write_bytes(b"")
        write_done_marker(store, name, {"rows": 2, "ok": 2, "errors": 0})
    lease = OutputLease(store, "live-run")
    lease.acquire()
    try:
        capsys.readouterr()
        assert main(["status", output]) == 0
        out = capsys.readouterr().out
    finally:
        lease.release()
    assert "2 done, 0 failed, 2 pending, of 4" in out
    assert "unlisted: 1 committed shard(s)" in out and "(first: e)" in out
    assert "writer:  run live-run" in out


@pytest.mark.ray
def test_taking_over_a_stalled_driver_on_this_host_does_not_call_it_gone(
    ray_session, tmp_path, capsys, engine_berg_root
):
    import subprocess

    from berg_scale.io.output_lease import _process_start_ticks
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 2, seed=1)
    output = str(tmp_path / "out")
    stalled = subprocess.Popen(["sleep", "120"])  # alive, but its lease is an hour old
    try:
        _write_lease(output, pid=stalled.pid, pid_start=_process_start_ticks(stalled.pid),
                     renewed_at=time.time() - 3600)
        code, err = _generate(capsys, _config(tmp_path, str(tmp_path / "in"), output, engine_berg_root),
                              "--take-over")
        assert code == 0 and "took over the lease of run old-run" in err, err
        assert "no longer running" not in err and "although its process still exists" in err, err
    finally:
        stalled.kill()
        stalled.wait()


def test_only_the_lease_holder_s_workers_commit(tmp_path):
    """Workers can outlive their driver: once another run holds the output, theirs never
    commit, and a marker such a worker left is replaced by the holder's run, not trusted."""
    from berg_scale.engine.shard_pipeline import may_commit
    from berg_scale.io.output_lease import OutputLease
    from berg_scale.io.output_store import OutputStore

    store = OutputStore(str(tmp_path / "out"))
    os.makedirs(tmp_path / "out" / "_done")
    assert may_commit(store, "a", "run-1") and may_commit(store, "a", None)
    store.write_json(store.done_path("a"), {"run_id": "old-run"})
    assert not may_commit(store, "a", "run-1"), "without a lease, the first commit wins"

    lease = OutputLease(store, "run-1")
    lease.acquire()
    try:
        assert may_commit(store, "a", "run-1"), "a marker of another run, while run-1 holds the output"
        assert not may_commit(store, "a", "old-run") and not may_commit(store, "b", "old-run")
        store.write_json(store.done_path("a"), {"run_id": "run-1"})
        assert not may_commit(store, "a", "run-1"), "a second execution of run-1 itself"
        assert may_commit(store, "b", "run-1")
    finally:
        lease.release()
