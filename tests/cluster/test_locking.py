"""The weight-root lock across processes: exclusive while held, free once the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from berg_scale.errors import StorageError
from berg_scale.weights.locking import LOCK_NAME, directory_lock

HOLDER = """
import sys, time
from berg_scale.weights.locking import directory_lock
with directory_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_held_by_another_process_excludes_and_is_freed_when_it_dies(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(StorageError, match="held"), directory_lock(str(tmp_path), timeout_s=0.5, poll_s=0.05):
            pass
        assert time.monotonic() - started >= 0.5
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel frees the lock
        holder.wait(timeout=10)
        with directory_lock(str(tmp_path), timeout_s=5):
            assert (tmp_path / LOCK_NAME).exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
