"""Turns at the model for the shards one worker runs at once, in order of arrival.

A worker may hold several shards (`resources.shards_in_flight`): while one runs the model,
the next reads its tar and decodes its first chunks, and the one before it closes its
Parquet file and commits. Only the model is exclusive: one shard runs it from its first
forward to its last, so the device never splits its time between two shards, each
shard's forwards stay one after another, and a shard finishes as soon as it would alone.

Turns go in the order the shards arrived (a ticket each), not to whichever decoded
first: the driver handed them out in that order, and the oldest is the one whose
commit the others wait behind. A shard that ends before its turn (failure, cancellation)
gives its ticket back, so the ones behind it move up.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable

POLL_S = 0.05  # how often a waiting shard checks whether it was cancelled


class ModelTurns:
    """First come, first served access to one model, shard by shard."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._tickets = itertools.count()
        self._queue: deque[int] = deque()  # tickets waiting or holding, oldest first

    def ticket(self) -> ModelTurn:
        """Take a place in the queue now (when the shard arrives); wait for it later."""
        with self._changed:
            number = next(self._tickets)
            self._queue.append(number)
        return ModelTurn(self, number)

    def waiting(self) -> int:
        """Shards holding a ticket (running the model or queued for it)."""
        with self._changed:
            return len(self._queue)

    def _wait(self, number: int, cancelled: Callable[[], bool]) -> bool:
        with self._changed:
            while self._queue and self._queue[0] != number:
                if number not in self._queue or cancelled():
                    return False
                self._changed.wait(POLL_S)
            return bool(self._queue) and self._queue[0] == number

    def _leave(self, number: int) -> None:
        with self._changed:
            try:
                self._queue.remove(number)
            except ValueError:
                return
            self._changed.notify_all()


class ModelTurn:
    """One shard's place in the queue: `acquire` before the first forward, `release` after
    the last; also a context manager that gives the place back however the shard ends."""

    def __init__(self, turns: ModelTurns, number: int) -> None:
        self._turns = turns
        self.number = number
        self.held = False
        self.released = False

    def acquire(self, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every shard that arrived earlier is done with the model; False when
        `cancelled()` turned true while waiting (the place is then given back)."""
        if self.released:
            raise RuntimeError("this model turn was already given back")
        if self.held:
            return True
        if self._turns._wait(self.number, cancelled):
            self.held = True
            return True
        self.release()
        return False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.held = False
            self._turns._leave(self.number)

    def __enter__(self) -> ModelTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
