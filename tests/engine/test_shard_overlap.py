"""Several shards in flight on one worker (`resources.shards_in_flight`): the next shard
reads and decodes while the current one runs the model, forwards never overlap, and
rows, markers and exactly-once commits are as with one shard at a time."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from engine_support import (
    KillOnceFactory,
    SlowOnceFactory,
    assert_each_key_once,
    assert_tables_equal,
    in_process_worker,
    make_config,
    output_table,
)

from berg_scale.engine.model_turns import ModelTurns
from berg_scale.engine.progress import ImageCounts, RunStats
from berg_scale.engine.stand_in_model import FixedCostModel

MARKER_FIELDS = ("rows", "ok", "errors", "error_reasons", "decoded_on", "input", "input_size")


# --------------------------------------------------------------------------- in-process worker


class Timeline:
    """What happened when, from every thread: forwards (by shard) and decodes (by thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0
        self.forwards: list[tuple[str, float, float]] = []  # (thread, start, end)
        self.decodes: list[tuple[str, float]] = []  # (thread, start)


@dataclass
class RecordingModel(FixedCostModel):
    """The stand-in model, noting each forward's thread and interval and how many ran at once."""

    timeline: Timeline = field(default_factory=Timeline)

    def forward(self, images):
        timeline = self.timeline
        with timeline.lock:
            timeline.active += 1
            timeline.most_active = max(timeline.most_active, timeline.active)
        started = time.perf_counter()
        try:
            return super().forward(images)
        finally:
            ended = time.perf_counter()
            with timeline.lock:
                timeline.active -= 1
                timeline.forwards.append((threading.current_thread().name, started, ended))


def _shards(tmp_path, n_shards, per_shard, **kwargs):
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), n_shards, per_shard, **kwargs)
    return infos, list_shards(str(tmp_path / "in"))


def _record_decodes(monkeypatch, timeline):
    """Note when each decode thread (named after its shard) starts a chunk."""
    from berg_scale.io import batch_decode_cpu

    original = batch_decode_cpu.decode_batch_cpu

    def recording(*args, **kwargs):
        with timeline.lock:
            timeline.decodes.append((threading.current_thread().name, time.perf_counter()))
        return original(*args, **kwargs)

    monkeypatch.setattr(batch_decode_cpu, "decode_batch_cpu", recording)


def _start(worker, shard, results):
    thread = threading.Thread(target=lambda: results.__setitem__(shard.name, worker.process(shard, 1)),
                              name=f"shard-{shard.name}")
    thread.start()
    return thread


def test_forwards_never_overlap_and_the_next_shard_decodes_during_the_current_ones(tmp_path, monkeypatch):
    from berg_scale.engine.shard_result import ShardOutcome

    infos, shards = _shards(tmp_path, 2, 6, seed=4, defects={"not_image": 1})
    timeline = Timeline()
    _record_decodes(monkeypatch, timeline)
    worker = in_process_worker(str(tmp_path / "out"), RecordingModel(seconds_per_batch=0.15, timeline=timeline))
    first, second = shards
    results: dict = {}
    polls: list[dict] = []
    threads = [_start(worker, first, results)]
    while worker.model_turns.waiting() < 1:  # the first shard has arrived: it goes first
        time.sleep(0.001)
    threads.append(_start(worker, second, results))
    while any(thread.is_alive() for thread in threads):
        polls.append(worker.progress())
        time.sleep(0.01)
    for thread in threads:
        thread.join()

    assert {name: result.outcome for name, result in results.items()} == {
        first.name: ShardOutcome.DONE, second.name: ShardOutcome.DONE}
    assert timeline.most_active == 1, "two shards ran the model at the same time"
    forwards = sorted(timeline.forwards, key=lambda f: f[1])
    assert all(later[1] >= earlier[2] for earlier, later in itertools.pairwise(forwards))
    owners = [thread for thread, _, _ in forwards]
    assert owners == sorted(owners, key=[f"shard-{first.name}", f"shard-{second.name}"].index), \
        "the model goes shard by shard, in order of arrival"
    last_first_forward = max(end for thread, _, end in forwards if thread == f"shard-{first.name}")
    second_decodes = [at for thread, at in timeline.decodes if thread == f"decode-{second.name}"]
    assert second_decodes and min(second_decodes) < last_first_forward, \
        "the second shard must start decoding while the first still runs the model"

    # Progress: both shards at once (the waiting one at 0 rows), then nothing.
    both = [poll["shards"] for poll in polls if len(poll["shards"]) == 2]
    assert any(rows[first.name] > 0 and rows[second.name] == 0 for rows in both), polls
    assert worker.progress()["shards"] == {} and worker.model_turns.waiting() == 0
    counts = ImageCounts(RunStats(shards_total=2), todo_bytes=None, todo_shards=2)
    for poll in polls:
        counts.report_worker(0, poll["shards"])
        assert counts.images() == sum(poll["shards"].values())

    # The same shards one at a time on a fresh worker: identical files' contents and markers.
    alone = in_process_worker(str(tmp_path / "alone"), RecordingModel(seconds_per_batch=0.0))
    for shard in shards:
        assert alone.process(shard, 1).outcome is ShardOutcome.DONE
    assert_tables_equal(output_table(str(tmp_path / "out")), output_table(str(tmp_path / "alone")))
    for shard in shards:
        overlapped, single = (json.loads((tmp_path / out / "_done" / f"{shard.name}.json").read_text())
                              for out in ("out", "alone"))
        assert {k: overlapped[k] for k in MARKER_FIELDS} == {k: single[k] for k in MARKER_FIELDS}
    assert_each_key_once(output_table(str(tmp_path / "out")), infos)


def test_a_shard_cancelled_while_it_waits_for_the_model_gives_up_its_turn(tmp_path):
    from berg_scale.engine.shard_result import ShardOutcome

    _, shards = _shards(tmp_path, 3, 4, seed=5)
    timeline = Timeline()
    worker = in_process_worker(str(tmp_path / "out"), RecordingModel(seconds_per_batch=0.3, timeline=timeline))
    first, second, third = shards
    results: dict = {}
    threads = [_start(worker, first, results)]
    for shard in (second, third):
        while worker.model_turns.waiting() < len(threads):
            time.sleep(0.001)
        threads.append(_start(worker, shard, results))
    while worker.model_turns.waiting() < 3:
        time.sleep(0.001)
    worker.cancel(second.name)  # e.g. a duplicate elsewhere committed first
    threads[1].join(timeout=5)
    assert results[second.name].outcome is ShardOutcome.CANCELLED
    assert threads[0].is_alive(), "the waiting shard must leave without waiting for the model"
    for thread in threads:
        thread.join()
    assert results[first.name].outcome is ShardOutcome.DONE
    assert results[third.name].outcome is ShardOutcome.DONE
    done = sorted(p.stem for p in (tmp_path / "out" / "_done").glob("*.json"))
    assert done == sorted([first.name, third.name])
    assert not list((tmp_path / "out").glob(f"**/*{second.name}*.parquet"))
    assert {thread for thread, _, _ in timeline.forwards} == {f"shard-{first.name}", f"shard-{third.name}"}


def test_model_turns_go_in_order_of_arrival_and_skip_those_that_left():
    turns = ModelTurns()
    a, b, c = turns.ticket(), turns.ticket(), turns.ticket()
    order: list[str] = []

    def run(turn, name):
        assert turn.acquire()
        order.append(name)
        time.sleep(0.02)
        turn.release()

    threads = [threading.Thread(target=run, args=(c, "c")), threading.Thread(target=run, args=(a, "a"))]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    assert "c" not in order, "c must not go before a and b"
    b.release()  # b failed before its first forward
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["a", "c"]
    assert turns.waiting() == 0
    late = turns.ticket()
    assert late.acquire()  # alone in the queue: at once
    blocked = turns.ticket()
    assert blocked.acquire(lambda: True) is False  # cancelled while waiting behind `late`
    late.release()
    assert turns.waiting() == 0


def test_driver_totals_count_every_shard_a_worker_holds_once():
    stats = RunStats(shards_total=4)
    counts = ImageCounts(stats, todo_bytes=None, todo_shards=4)
    counts.report_worker(0, {"a": 40, "b": 0})  # b waits for the model behind a
    counts.report_worker(1, {"c": 10})
    assert counts.images() == 50
    counts.report_worker(0, {"a": 100, "b": 20})
    stats.add_marker({"rows": 100})
    counts.close_shard("a")
    counts.report_worker(0, {"a": 100, "b": 30})  # a late answer still naming committed a
    assert counts.images() == 100 + 30 + 10
    counts.report_worker(0, {"b": 50, "d": 5})
    counts.report_worker(1, {"b": 45, "c": 12})  # a speculative duplicate of b: the furthest counts
    assert counts.images() == 100 + 50 + 5 + 12
    counts.report_worker(0, {})  # worker 0 holds nothing any more
    assert counts.images() == 100 + 45 + 12


# --------------------------------------------------------------------------- whole runs (Ray)


@pytest.fixture(scope="module")
def overlap_inputs(tmp_path_factory):
    """Four shards of five images (one undecodable), and their output one shard at a time."""
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.synthetic.shards import write_synthetic_shards

    root = tmp_path_factory.mktemp("overlap")
    infos = write_synthetic_shards(str(root / "in"), 4, 5, seed=8, defects={"not_image": 1})
    return root, infos, FixedCostModelFactory(), run_generation


def _run(overlap_inputs, name, in_flight, factory=None, resources=None, retries=None):
    root, _, stand_in, run_generation = overlap_inputs
    output = str(root / name)
    config = make_config(str(root / "in"), output,
                         resources={"batch_size": 2, "shards_in_flight": in_flight, **(resources or {})},
                         retries=retries or {})
    result = run_generation(config, model_factory=factory or stand_in, show_progress=False)
    assert result.exit_code == 0, result.failed
    return result, output


@pytest.fixture(scope="module")
def one_at_a_time(overlap_inputs, ray_session):
    result, output = _run(overlap_inputs, "one-at-a-time", 1)
    return result, output_table(output)


def _markers(output):
    from pathlib import Path

    return {path.stem: json.loads(path.read_text()) for path in Path(output, "_done").glob("*.json")}


@pytest.mark.ray
def test_two_in_flight_write_what_one_at_a_time_writes(overlap_inputs, one_at_a_time, tmp_path):
    _, infos, _, _ = overlap_inputs
    _, table = one_at_a_time
    result, output = _run(overlap_inputs, "two", 2)
    assert_each_key_once(output_table(output), infos)
    assert_tables_equal(output_table(output), table)
    ones = _markers(str(overlap_inputs[0] / "one-at-a-time"))
    twos = _markers(output)
    assert sorted(twos) == sorted(ones)
    for name, marker in twos.items():
        assert {k: marker[k] for k in MARKER_FIELDS} == {k: ones[name][k] for k in MARKER_FIELDS}
    assert sum(result.scheduler.executions_per_worker.values()) == len(infos) == len(result.scheduler.done)
    assert result.stats.shards_done == len(infos) and result.stats.images == sum(len(i.keys) for i in infos)


@pytest.mark.ray
def test_two_shards_share_one_decode_pool_each_in_its_own_order(ray_session):
    """Two `decoded` calls at once (two shards on one worker): each gets its own chunks
    back in its own order, within its own in_flight bound, and the queue counts add up."""
    import numpy as np

    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.synthetic.shards import encode, synthetic_image

    rng = np.random.default_rng(3)
    chunks = {shard: [[encode(synthetic_image(rng, 20 + i, 18), "png") for i in range(16)] for _ in range(6)]
              for shard in ("a", "b")}
    chunks["b"][2][3] = b"junk"
    pool = DecodePool(2, DecodeOptions(size=8), in_flight=2)
    seen: dict[str, list] = {"a": [], "b": []}
    ahead: dict[str, int] = {"a": 0, "b": 0}
    errors: list[BaseException] = []

    def shard(name):
        handed = []

        def jobs():
            for index, chunk in enumerate(chunks[name]):
                handed.append(index)
                yield (name, index), chunk

        try:
            for tag, parts in pool.decoded(jobs()):
                ahead[name] = max(ahead[name], len(handed) - len(seen[name]))
                seen[name].append((tag, parts))
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=shard, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert pool.queued == [0, 0], "every submitted part was taken back exactly once"
    finally:
        pool.close()
    for name in ("a", "b"):
        assert [tag for tag, _ in seen[name]] == [(name, i) for i in range(6)]
        assert ahead[name] <= 2, "each shard keeps its own backpressure"
        for (_, index), parts in seen[name]:
            expected = decode_batch_cpu(chunks[name][index], 8)
            assert [e for part in parts for e in part.errors] == expected.errors
            np.testing.assert_array_equal(np.concatenate([part.images for part in parts]),
                                          expected.images[expected.ok_indices].numpy())


@pytest.mark.ray
def test_a_lost_worker_retries_both_shards_it_held(overlap_inputs, one_at_a_time, tmp_path):
    _, infos, _, _ = overlap_inputs
    flag = tmp_path / "kill-once"
    flag.write_text("armed")
    result, output = _run(overlap_inputs, "killed", 2, factory=KillOnceFactory(str(flag)),
                          retries={"max_worker_restarts": 2, "max_attempts": 3})
    assert not flag.exists(), "the worker must have killed itself once"
    assert result.scheduler.worker_losses == 1, "one loss, however many shards it held"
    attempts = sorted(marker["attempt"] for marker in result.scheduler.done.values())
    assert attempts == [1, 1, 2, 2], "both shards in flight on the lost worker were redone"
    assert sum(result.scheduler.executions_per_worker.values()) == len(infos) + 2
    table = output_table(output)
    assert_each_key_once(table, infos)
    assert_tables_equal(table, one_at_a_time[1])
    assert len(_markers(output)) == len(infos)


@pytest.mark.ray
def test_a_speculative_duplicate_still_cancels_the_straggler(overlap_inputs, one_at_a_time, tmp_path):
    _, infos, _, _ = overlap_inputs
    flag = tmp_path / "slow-once"
    flag.write_text("armed")
    result, output = _run(overlap_inputs, "speculative", 2, factory=SlowOnceFactory(str(flag), slow_seconds=1.0),
                          resources={"workers": 2},
                          retries={"speculative_tail": True, "speculative_min_elapsed_s": 0.3})
    assert result.scheduler.speculative_started >= 1
    assert result.scheduler.speculative_won >= 1
    table = output_table(output)
    assert_each_key_once(table, infos)
    assert_tables_equal(table, one_at_a_time[1])
    staging = overlap_inputs[0] / "speculative" / "_tmp"
    left = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
    assert not left, f"no staging files may be left behind: {left}"


def test_shards_in_flight_is_validated_and_reaches_the_scheduler_and_the_actor(tmp_path):
    from berg_scale.config import ConfigError, ResourcesConfig
    from berg_scale.engine.scheduler import RetryPolicy
    from berg_scale.engine.worker import remote_worker_class

    assert ResourcesConfig().shards_in_flight == 2 and RetryPolicy().shards_in_flight == 2
    assert make_config(str(tmp_path), str(tmp_path / "out"),
                       resources={"shards_in_flight": 8}).resources.shards_in_flight == 8
    for bad in (0, 9, True):
        with pytest.raises(ConfigError, match="resources.shards_in_flight"):
            make_config(str(tmp_path), str(tmp_path / "out"), resources={"shards_in_flight": bad})
    assert remote_worker_class(3)._default_options["max_concurrency"] == 4  # + one for cancel/progress
