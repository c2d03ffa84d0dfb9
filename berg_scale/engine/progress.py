"""Run statistics, the start-up phases, and the driver's live per-image progress.

A shard is the unit of commit, but on a CPU one 1,000-image shard takes minutes, so
progress counts images: every second the driver asks each worker how many rows of each
shard it holds it has written (`EncoderWorker.progress`, answered from the actor's spare
method thread while `process` runs; a worker holds up to `resources.shards_in_flight`
shards), and adds them to the rows of committed shards.
Per shard the largest count wins (a speculative duplicate is not counted twice) and
a shard's live count is dropped once its marker is in. The total is estimated from the
committed shards' images per input byte (or per shard when sizes are unknown), so the
ETA appears with the first committed shard and sharpens as more arrive.

Start-up (Ray, workers, model load, output description) is timed phase by phase and
shown while it runs; the images/s in the summary and in run.json count from the first
ready worker, and the summary says so next to the overall figure.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from berg_scale.engine.shard_pipeline import STAGES

POLL_INTERVAL_S = 1.0
LOG_INTERVAL_S = 30.0  # without a terminal: one progress line this often
HEARTBEAT_S = 15.0  # without a terminal: a line this often while a start-up phase runs


def where_noted(note: dict[str, Any]) -> str:
    """Where a reader note was made, as the summaries quote it: the shard, and its key if any."""
    return f"{note['shard']}, key {note['key']!r}" if note.get("key") else str(note["shard"])


@dataclass
class RunStats:
    shards_total: int
    shards_skipped: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    images: int = 0
    images_ok: int = 0
    images_error: int = 0
    input_bytes_done: int = 0
    notes: int = 0  # reader notes: members left out, sidecars not read
    first_note: dict[str, Any] | None = None  # {"shard", "key", "note"} of the first one seen
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started: float = field(default_factory=time.monotonic)
    startup_seconds: float = 0.0
    startup_phases: dict[str, float] = field(default_factory=dict)
    finished: float | None = None

    def add_marker(self, marker: dict[str, Any], name: str = "") -> None:
        self.shards_done += 1
        self.notes += int(marker.get("notes", 0))
        examples = marker.get("note_examples") or []
        if self.first_note is None and examples:
            self.first_note = {"shard": name, **examples[0]}
        self.images += int(marker.get("rows", 0))
        self.images_ok += int(marker.get("ok", 0))
        self.images_error += int(marker.get("errors", 0))
        self.input_bytes_done += int(marker.get("input_size") or 0)
        for stage in STAGES:
            self.stage_seconds[stage] += float(marker.get("seconds", {}).get(stage, 0.0))

    @property
    def elapsed(self) -> float:
        """Seconds of processing: from the first ready worker (or the start, before it)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def images_per_second(self) -> float:
        """Processing rate: images over `elapsed`, start-up not included."""
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def wall_seconds_with_startup(self) -> float:
        return self.elapsed + self.startup_seconds

    @property
    def images_per_second_overall(self) -> float:
        """Images over the whole run, start-up included."""
        total = self.wall_seconds_with_startup
        return self.images / total if total > 0 else 0.0

    def rate_line(self) -> str:
        """What the summary says about throughput, naming what each figure covers."""
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.startup_phases.items())
        startup = f"start-up {self.startup_seconds:.1f} s" + (f": {phases}" if phases else "")
        return (
            f"{self.images_per_second:.1f} images/s over {self.elapsed:.1f} s of processing (from the "
            f"first ready worker); {self.images_per_second_overall:.1f} images/s over "
            f"{self.wall_seconds_with_startup:.1f} s including {startup}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards_total": self.shards_total,
            "shards_skipped_already_done": self.shards_skipped,
            "shards_done": self.shards_done,
            "shards_failed": self.shards_failed,
            "images": self.images,
            "images_ok": self.images_ok,
            "images_error": self.images_error,
            "notes": self.notes,
            "startup_seconds": round(self.startup_seconds, 3),
            "startup_phases": {k: round(v, 3) for k, v in self.startup_phases.items()},
            # Processing only: counted from the first ready worker, start-up excluded.
            "wall_seconds": round(self.elapsed, 3),
            "images_per_second": round(self.images_per_second, 3),
            "images_per_second_overall": round(self.images_per_second_overall, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


# --------------------------------------------------------------------------- start-up


class StartupPhases:
    """Names and times the start-up phases while they run.

    On a terminal the current phase shows with a running clock; without one, a line
    when each phase ends and a heartbeat line while a long one (model loading) runs.
    """

    def __init__(self, stats: RunStats, log: Callable[[str], None], live: bool) -> None:
        self.stats = stats
        self.log = log
        self.live = live
        self.started = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str, doing: str) -> Iterator[None]:
        started = time.monotonic()
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(doing, started, stop), daemon=True,
                                  name=f"startup-{name}")
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
        seconds = time.monotonic() - started
        self.stats.startup_phases[name] = seconds
        self.log(f"start-up: {doing}: done in {seconds:.1f} s")

    def record(self, name: str, seconds: float) -> None:
        """A phase measured elsewhere (a worker's model load)."""
        self.stats.startup_phases[name] = seconds

    def total(self) -> float:
        return time.monotonic() - self.started

    def _tick(self, doing: str, started: float, stop: threading.Event) -> None:
        if self.live:
            from tqdm.auto import tqdm

            with tqdm(total=None, desc=f"start-up: {doing}", bar_format="{desc} ({elapsed})",
                      file=sys.stderr, leave=False) as bar:
                while not stop.wait(0.5):
                    bar.refresh()
            return
        while not stop.wait(HEARTBEAT_S):
            self.log(f"start-up: {doing} ... {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------- live images


class ImageCounts:
    """Images written so far: committed shards plus the in-flight rows workers report."""

    def __init__(self, stats: RunStats, todo_bytes: int | None, todo_shards: int) -> None:
        self.stats = stats
        self.todo_bytes = todo_bytes
        self.todo_shards = todo_shards
        self._lock = threading.Lock()
        self._in_flight: dict[str, dict[int, int]] = {}  # shard -> worker -> rows written
        self._closed: set[str] = set()

    def report(self, shard: str | None, rows: int, worker: int = 0) -> None:
        """A worker's latest count for its one shard (a retry on the same worker starts again
        from 0); a worker between shards (`shard` None) no longer counts for any."""
        self.report_worker(worker, {shard: rows} if shard else {})

    def report_worker(self, worker: int, shards: dict[str, int]) -> None:
        """A worker's latest counts for every shard it holds now: those it no longer holds
        stop counting for it (their rows arrive with their markers)."""
        with self._lock:
            for name, by_worker in self._in_flight.items():
                if name not in shards:
                    by_worker.pop(worker, None)
            for name, rows in shards.items():
                if name not in self._closed:
                    self._in_flight.setdefault(name, {})[worker] = int(rows)

    def close_shard(self, shard: str) -> None:
        """The shard committed or was quarantined: its rows are counted by its marker (or not at all)."""
        with self._lock:
            self._closed.add(shard)
            self._in_flight.pop(shard, None)

    def images(self) -> int:
        """Duplicates of one shard (speculative executions) count once: the furthest one."""
        with self._lock:
            return self.stats.images + sum(max(rows.values()) for rows in self._in_flight.values() if rows)

    def estimated_total(self) -> int | None:
        """Images the run will have written in all, once a committed shard tells the density."""
        s = self.stats
        if not s.shards_done:
            return None
        if self.todo_bytes and s.input_bytes_done:
            return max(round(s.images / s.input_bytes_done * self.todo_bytes), self.images())
        return max(round(s.images / s.shards_done * self.todo_shards), self.images())


class LiveProgress:
    """A tqdm bar over images (terminal), or a progress line every 30 s (logs).

    A background thread polls the workers once a second; each worker has at most one
    poll outstanding, so a busy or restarting actor never piles calls up.
    """

    def __init__(
        self,
        stats: RunStats,
        slots: Sequence[Any],
        shards: Sequence[Any],
        *,
        live: bool,
        log: Callable[[str], None],
        poll_interval_s: float | None = None,
        log_interval_s: float | None = None,
    ) -> None:
        sizes = [getattr(shard, "size", None) for shard in shards]
        known = [int(size) for size in sizes if size]
        todo_bytes = sum(known) if sizes and len(known) == len(sizes) else None
        self.stats = stats
        self.slots = list(slots)
        self.counts = ImageCounts(stats, todo_bytes, len(shards))
        self.todo_shards = len(shards)
        self.live = live
        self.log = log
        self.poll_interval_s = poll_interval_s or POLL_INTERVAL_S
        self.log_interval_s = log_interval_s or LOG_INTERVAL_S
        self._pending: dict[int, Any] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.polls_answered = 0
        self.bar = None
        if live:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, unit="img", desc="generate", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._thread.start()

    # -- scheduler callbacks (main thread)
    def shard_done(self, name: str, marker: dict[str, Any]) -> None:
        self.counts.close_shard(name)
        self.refresh()

    def shard_failed(self, name: str) -> None:
        self.counts.close_shard(name)
        self.refresh()

    # -- polling thread
    def _loop(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(self.poll_interval_s):
            self.poll()
            self.refresh()
            if not self.live and time.monotonic() - last_log >= self.log_interval_s:
                last_log = time.monotonic()
                self.log(self.line())

    def poll(self) -> None:
        """Collect the answers that are in and ask the workers without a pending question."""
        import ray

        for slot in self.slots:
            if slot.state == "dead":
                self._pending.pop(slot.index, None)
                continue
            ref = self._pending.get(slot.index)
            if ref is None:
                try:
                    self._pending[slot.index] = slot.handle.progress.remote()
                except Exception:  # noqa: BLE001, S112 - a worker without the method or already gone
                    continue
        refs = list(self._pending.values())
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2)
        ready_set = set(ready)
        for index, ref in list(self._pending.items()):
            if ref not in ready_set:
                continue
            del self._pending[index]
            try:
                answer = ray.get(ref)
            except Exception:  # noqa: BLE001, S112 - the scheduler handles lost workers
                continue
            self.polls_answered += 1
            shards = answer.get("shards")
            if shards is None:  # a worker that reports one shard
                shard = answer.get("shard")
                shards = {shard: answer.get("rows", 0)} if shard else {}
            self.counts.report_worker(index, shards)

    # -- display
    def refresh(self) -> None:
        with self._lock:
            if self.bar is None:
                return
            images = self.counts.images()
            total = self.counts.estimated_total()
            if total is not None and self.bar.total != total:
                self.bar.total = total
            if images > self.bar.n:
                self.bar.update(images - self.bar.n)
            s = self.stats
            self.bar.set_postfix_str(
                f"shards {s.shards_done}/{self.todo_shards}"
                + (f", {s.images_error} error rows" if s.images_error else "")
                + (f", {s.shards_failed} quarantined" if s.shards_failed else ""),
                refresh=True,
            )

    def line(self) -> str:
        """One progress line for logs: images, estimate, rate, ETA, shards."""
        s = self.stats
        images = self.counts.images()
        total = self.counts.estimated_total()
        rate = images / s.elapsed if s.elapsed > 0 else 0.0
        text = f"generate: {images:,}"
        if total:
            text += f" of ~{total:,} images ({images / total:.0%})"
            if rate > 0:
                text += f", {rate:.1f} images/s, ETA {_eta(max(total - images, 0) / rate)}"
        else:
            text += f" images, {rate:.1f} images/s (ETA after the first committed shard)"
        return text + f"; shards {s.shards_done}/{self.todo_shards} done"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.bar is not None:
            self.refresh()
            self.bar.close()


def _eta(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
