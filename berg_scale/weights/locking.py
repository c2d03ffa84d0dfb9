"""An exclusive, time-limited lock on a directory, shared by processes on one machine.

`filelock` takes an OS lock on a file in the directory (flock on POSIX), which the kernel
releases when the holding process dies, so a crashed worker can never wedge the others.
A deadline instead of an unbounded wait turns a stuck holder into a clear error, not a hang.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from filelock import FileLock, Timeout

from berg_scale.errors import StorageError

LOCK_NAME = ".berg-scale.lock"


@contextlib.contextmanager
def directory_lock(directory: str, timeout_s: float = 3600.0, poll_s: float = 0.1) -> Iterator[None]:
    """Hold the exclusive lock of `directory` (created if missing) for the `with` block."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    # Not thread-local and not a singleton: two holders in one process exclude each other
    # exactly like two processes do.
    lock = FileLock(path, thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=timeout_s, poll_interval=poll_s)
    except Timeout:
        raise StorageError(
            f"another process has held {path} for over {timeout_s:.0f} s; if no "
            "download is running, the holder is stuck: stop it and retry"
        ) from None
    try:
        yield
    finally:
        lock.release()
