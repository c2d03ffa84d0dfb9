"""An exclusive, time-limited lock on a directory, shared by processes on one machine.

`fcntl.flock` locks belong to the open file, so a lock held by a process that dies is
released by the kernel: a crashed worker can never wedge the others. Polling with a
deadline (instead of a blocking call) turns a stuck holder into a clear error, not a hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator

from berg_scale.errors import StorageError

LOCK_NAME = ".berg-scale.lock"


@contextlib.contextmanager
def directory_lock(directory: str, timeout_s: float = 3600.0, poll_s: float = 0.1) -> Iterator[None]:
    """Hold the exclusive lock of `directory` (created if missing) for the `with` block."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"another process has held {path} for over {timeout_s:.0f} s; if no "
                        "download is running, the holder is stuck: stop it and retry"
                    ) from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
