"""SIGTERM as a clean stop for a driver.

Schedulers stop a job with SIGTERM (`kubectl delete`, `ray job stop`, a batch system's
time limit). Ray's own handler answers it with a stack dump and exit status 1, which
reads like a crash and skips the driver's clean-up; raising `Terminated` instead lets the
run stop its workers, record `interrupted` in run.json and release the output's lease,
exactly as Ctrl-C does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process was asked to stop with SIGTERM."""


_received = threading.Event()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    _received.set()
    raise Terminated()


def sigterm_received() -> bool:
    """Whether a stop came from SIGTERM, even where Ray re-raised it as a plain KeyboardInterrupt."""
    return _received.is_set()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
