"""The driver's shard scheduler: dynamic dispatch, retries, quarantine, speculative tail.

Each worker holds up to `shards_in_flight` shards while work is pending and gets the
next one as soon as it finishes one (fast workers take more): the worker reads and
decodes a queued shard while the one before it still runs the model, so the device
never waits for a shard's start (open, read, first decode) or end (close, commit, the
round trip to the driver). The driver waits on all in-flight calls with `ray.wait`. Every shard in flight on a
worker that dies is requeued (the actor restarts); a shard that fails is retried with
back-off until `max_attempts`, then quarantined with its error in `_failed/`; a shard
the worker rejects (damaged tar, too many bad images: the same bytes would fail again)
is quarantined after that one attempt. When the
queue is empty and workers are idle (nothing in flight), the slowest running shards are
executed again on the idle workers; whichever execution commits first wins, the other is cancelled.
Output keys are derived from the shard name and written atomically, so a duplicate
execution can never add rows.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from berg_scale.config import MAX_BACKOFF_S, ResourcesConfig, RetriesConfig, default_of
from berg_scale.engine.shard_result import ShardOutcome, ShardResult
from berg_scale.io.output_store import OutputStore, read_done_marker, with_storage_retries, write_failed_marker
from berg_scale.io.shard_listing import InputShard

WAIT_TIMEOUT_S = 0.2
PROBE_INTERVAL_S = 0.5


@dataclass
class WorkerSlot:
    """Driver-side view of one actor."""

    index: int
    handle: Any
    state: str = "idle"  # idle | busy (shards in flight) | starting | dead
    in_flight: int = 0  # executions submitted to this actor and not yet finished
    ready_ref: Any = None
    losses: int = 0
    shards_done: int = 0
    next_probe: float = 0.0
    starting_since: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # device, GPU ids, host, pid (from ready())


@dataclass
class Execution:
    shard: InputShard
    attempt: int
    slot: WorkerSlot
    started: float
    speculative: bool = False


@dataclass
class RetryPolicy:
    max_attempts: int = default_of(RetriesConfig, "max_attempts")
    backoff_s: float = default_of(RetriesConfig, "backoff_s")
    max_backoff_s: float = MAX_BACKOFF_S  # the wait grows with each attempt up to this
    speculative_tail: bool = default_of(RetriesConfig, "speculative_tail")
    speculative_min_elapsed_s: float = default_of(RetriesConfig, "speculative_min_elapsed_s")
    speculative_factor: float = 1.5
    # A worker (re)starting for longer is given up.
    startup_timeout_s: float = default_of(ResourcesConfig, "startup_timeout_s")
    # Shards queued on one worker at a time while work is pending (1: one at a time).
    shards_in_flight: int = default_of(ResourcesConfig, "shards_in_flight")


@dataclass
class SchedulerReport:
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    speculative_started: int = 0
    speculative_won: int = 0
    worker_losses: int = 0
    workers_dead: int = 0
    executions_per_worker: dict[int, int] = field(default_factory=dict)


class ShardScheduler:
    """Runs `shards` over `workers` until every shard is done or quarantined."""

    def __init__(
        self,
        workers: Sequence[WorkerSlot],
        shards: Sequence[InputShard],
        store: OutputStore,
        policy: RetryPolicy,
        on_done: Callable[[str, dict[str, Any]], None] = lambda name, marker: None,
        on_failed: Callable[[str, dict[str, Any]], None] = lambda name, info: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = list(workers)
        self.store = store
        self.policy = policy
        self.on_done = on_done
        self.on_failed = on_failed
        self.clock = clock
        self.pending: deque[InputShard] = deque(shards)
        self.unresolved = {shard.name for shard in shards}
        self.attempts: dict[str, int] = {}
        self.errors: dict[str, list[str]] = {}
        self.not_before: dict[str, float] = {}
        self.in_flight: dict[Any, Execution] = {}
        self.restarting: dict[Any, WorkerSlot] = {}
        self.durations: list[float] = []
        self.report = SchedulerReport()

    # ------------------------------------------------------------------ main loop
    def run(self) -> SchedulerReport:
        import ray

        for slot in self.slots:
            if slot.state == "starting" and slot.ready_ref is not None:
                self.restarting[slot.ready_ref] = slot
        while self.unresolved:
            if not any(slot.state != "dead" for slot in self.slots):
                self._fail_remaining("no workers left: every worker died more often than "
                                     "retries.max_worker_restarts allows")
                break
            self._dispatch()
            refs = [*self.in_flight, *self.restarting]
            if not refs:
                time.sleep(WAIT_TIMEOUT_S)  # everything pending is in back-off
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_TIMEOUT_S)
            for ref in ready:
                if ref in self.restarting:
                    self._on_worker_ready(ref)
                else:
                    self._on_execution_finished(ref)
        for ref, execution in list(self.in_flight.items()):
            execution.slot.handle.cancel.remote(execution.shard.name)
        self.report.workers_dead = sum(slot.state == "dead" for slot in self.slots)
        return self.report

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.state != "starting":
                continue
            slot.starting_since = slot.starting_since or now
            if now - slot.starting_since > self.policy.startup_timeout_s:
                slot.state = "dead"  # e.g. its node is gone and no other node has room
                if slot.ready_ref is not None:
                    self.restarting.pop(slot.ready_ref, None)
                continue
            if slot.ready_ref is None and slot.next_probe <= now:
                slot.ready_ref = slot.handle.ready.remote()
                self.restarting[slot.ready_ref] = slot
        # Level by level: every worker gets its first shard before any gets a second, so
        # a short queue is spread over the workers instead of piling up on the first.
        depth = max(1, int(self.policy.shards_in_flight))
        for level in range(depth):
            for slot in self.slots:
                if slot.state not in ("idle", "busy") or slot.in_flight > level:
                    continue
                shard = self._next_pending(now)
                if shard is not None:
                    self.attempts[shard.name] = self.attempts.get(shard.name, 0) + 1
                    self._submit(slot, shard, self.attempts[shard.name], speculative=False)
                    continue
                if level == 0 and self.policy.speculative_tail and not self.pending:
                    execution = self._speculation_candidate(now)
                    if execution is not None:
                        self.report.speculative_started += 1
                        self._submit(slot, execution.shard, execution.attempt, speculative=True)

    def _next_pending(self, now: float) -> InputShard | None:
        for _ in range(len(self.pending)):
            shard = self.pending.popleft()
            if shard.name not in self.unresolved:
                continue
            if self.not_before.get(shard.name, 0.0) <= now:
                return shard
            self.pending.append(shard)
        return None

    def _speculation_candidate(self, now: float) -> Execution | None:
        if not self.durations:
            return None
        threshold = max(
            self.policy.speculative_min_elapsed_s,
            self.policy.speculative_factor * statistics.median(self.durations),
        )
        candidates = [
            execution
            for execution in self.in_flight.values()
            if not execution.speculative
            and self._running(execution.shard.name) == 1
            and now - execution.started >= threshold
        ]
        return min(candidates, key=lambda e: e.started) if candidates else None

    def _running(self, name: str) -> int:
        return sum(1 for execution in self.in_flight.values() if execution.shard.name == name)

    def _submit(self, slot: WorkerSlot, shard: InputShard, attempt: int, speculative: bool) -> None:
        ref = slot.handle.process.remote(shard, attempt)
        slot.state = "busy"
        slot.in_flight += 1
        self.in_flight[ref] = Execution(shard, attempt, slot, self.clock(), speculative)
        counts = self.report.executions_per_worker
        counts[slot.index] = counts.get(slot.index, 0) + 1

    # ------------------------------------------------------------------ results
    def _on_worker_ready(self, ref: Any) -> None:
        import ray

        slot = self.restarting.pop(ref)
        slot.ready_ref = None
        from ray.exceptions import ActorUnavailableError

        try:
            slot.info = ray.get(ref).get("info", {})
        except ActorUnavailableError:
            slot.next_probe = self.clock() + PROBE_INTERVAL_S  # still restarting: ask again
            return
        except Exception:  # noqa: BLE001 - out of restarts, or the constructor failed
            slot.state = "dead"
            return
        slot.state = "idle"
        slot.starting_since = None

    def _on_execution_finished(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError

        execution = self._pop_execution(ref)
        slot = execution.slot
        try:
            result: ShardResult = ray.get(ref)
        except RayActorError as exc:
            self._on_worker_lost(slot, [execution], f"worker {slot.index} was lost: {_short(exc)}")
            return
        except Exception as exc:  # noqa: BLE001 - an exception outside the worker's own handler
            self._attempt_failed(execution, f"{type(exc).__name__}: {_short(exc)}", transient=True)
            return
        if result.outcome is ShardOutcome.DONE:
            slot.shards_done += 1
            self.durations.append(self.clock() - execution.started)
            self._mark_done(execution, result.marker or {})
        elif result.outcome is ShardOutcome.CANCELLED:
            self._on_cancelled(execution)
        else:
            self._attempt_failed(execution, result.failure(), transient=result.retryable)

    def _pop_execution(self, ref: Any) -> Execution:
        execution = self.in_flight.pop(ref)
        slot = execution.slot
        slot.in_flight = max(0, slot.in_flight - 1)
        if slot.state == "busy" and not slot.in_flight:
            slot.state = "idle"
        return execution

    def _on_worker_lost(self, slot: WorkerSlot, lost: list[Execution], error: str) -> None:
        """One loss, however many shards were in flight on the actor: the others fail with
        it (their calls die with the process), so all of them are retried now and their
        late errors are never counted as further losses."""
        for ref, other in list(self.in_flight.items()):
            if other.slot is slot:
                lost.append(self._pop_execution(ref))
        slot.in_flight = 0
        slot.losses += 1
        self.report.worker_losses += 1
        slot.state = "starting"
        slot.ready_ref = slot.handle.ready.remote()
        self.restarting[slot.ready_ref] = slot
        for execution in lost:
            self._attempt_failed(execution, error, transient=True)

    def _mark_done(self, execution: Execution, marker: dict[str, Any]) -> None:
        name = execution.shard.name
        if name not in self.unresolved:
            return  # a duplicate finished after the winner: same key, nothing to add
        self.unresolved.discard(name)
        if execution.speculative:
            self.report.speculative_won += 1
        self.report.done[name] = marker
        for other in self.in_flight.values():
            if other.shard.name == name:
                other.slot.handle.cancel.remote(name)
        self.on_done(name, marker)

    def _on_cancelled(self, execution: Execution) -> None:
        name = execution.shard.name
        if name not in self.unresolved or self._running(name):
            return
        # Cancelled because a commit marker already exists (another execution's): adopt it.
        marker = with_storage_retries(lambda: read_done_marker(self.store, name), f"reading _done/{name}.json")
        if marker is not None:
            self._mark_done(execution, marker)
        else:
            self._attempt_failed(execution, "cancelled without a commit", transient=True)

    def _attempt_failed(self, execution: Execution, error: str, transient: bool) -> None:
        name = execution.shard.name
        if name not in self.unresolved:
            return
        self.errors.setdefault(name, []).append(f"attempt {execution.attempt}: {error}")
        if self._running(name):
            return  # another execution of this shard may still succeed
        if not transient or self.attempts.get(name, 0) >= self.policy.max_attempts:
            self._quarantine(execution.shard, error)
            return
        delay = min(self.policy.backoff_s * self.attempts.get(name, 1), self.policy.max_backoff_s)
        self.not_before[name] = self.clock() + delay
        self.pending.append(execution.shard)

    def _quarantine(self, shard: InputShard, error: str) -> None:
        info = {
            "input": shard.url,
            "error": error,
            "attempts": self.attempts.get(shard.name, 0),
            "history": self.errors.get(shard.name, []),
        }
        with_storage_retries(lambda: write_failed_marker(self.store, shard.name, info),
                             f"writing _failed/{shard.name}.json")
        self.unresolved.discard(shard.name)
        self.report.failed[shard.name] = info
        self.on_failed(shard.name, info)

    def _fail_remaining(self, reason: str) -> None:
        for shard in list(self.pending):
            if shard.name in self.unresolved:
                self._quarantine(shard, reason)
        for execution in list(self.in_flight.values()):
            if execution.shard.name in self.unresolved:
                self._quarantine(execution.shard, reason)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__
