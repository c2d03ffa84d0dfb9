"""Overlap slow producers with their consumer: a background thread fills a queue.

Streaming a tar from object storage is latency-bound; without read-ahead the GPU would
idle during every range request. The one class serves every stage that runs ahead: the
byte chunks of a shard (`io/shard_reader.py`), its samples and its decoded chunks
(`engine/shard_pipeline.py`). The producer thread is the only reader of the source
iterator, errors travel through the queue in order, and `close()` stops the thread
promptly (a shard that is cancelled or fails must not leave a reader behind).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class ReadAhead(Generic[T], Iterator[T]):
    """Iterate `source` in a background thread, at most `depth` items ahead."""

    def __init__(self, source: Iterable[T], depth: int = 64, name: str = "read-ahead") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.busy_seconds = 0.0  # time spent inside the source iterator (the "read" stage)
        self._thread = threading.Thread(target=self._produce, args=(iter(source),), name=name, daemon=True)
        self._thread.start()

    def _produce(self, iterator: Iterator[T]) -> None:
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                finally:
                    self.busy_seconds += time.perf_counter() - started
                if not self._put(("item", item)):
                    return
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer, in order
            self._put(("error", exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a half-read stream may fail
                    pass
        self._put(("end", _END))

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def deepen(self, depth: int) -> None:
        """Let the producer run up to `depth` items ahead from now on (never shallower).

        A producer that shares CPUs with the work its consumer waits for first (a shard's
        first chunk being decoded) can start one item ahead and run ahead fully once the
        consumer is under way.
        """
        with self._queue.mutex:
            self._queue.maxsize = max(self._queue.maxsize, depth)
            self._queue.not_full.notify_all()

    def __iter__(self) -> "ReadAhead[T]":
        return self

    def __next__(self) -> T:
        kind, value = self._queue.get()
        if kind == "item":
            return value
        if kind == "error":
            raise value
        self._queue.put((kind, value))  # stay exhausted
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stop the producer and wait up to `timeout` seconds for it to leave its source."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=timeout)

    def __enter__(self) -> "ReadAhead[T]":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
