"""A throwaway Ray head node on loopback, started with `ray start --head --block`.

`--block` keeps every Ray process of the node as a child of one process in its own
session, so the node is stopped by signalling that process group: never `ray stop`,
which would also stop every other Ray instance of the same user on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from berg_scale.engine.ray_connect import RAY_DEFAULT_ENV
from berg_scale.testing.s3_server import LOOPBACK, free_port


class RayHead:
    def __init__(self, num_cpus: int = 2, num_gpus: int = 1) -> None:
        # Unix socket paths are limited to ~107 bytes: keep the temp dir short.
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"http://{LOOPBACK}:{self.dashboard_port}"
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        ports = {name: str(free_port()) for name in (
            "--object-manager-port", "--node-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
        )}
        self.command = [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            f"--node-ip-address={LOOPBACK}", f"--port={self.port}",
            "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
            "--object-store-memory=200000000", f"--temp-dir={self.temp_dir}",
            *(f"{flag}={value}" for flag, value in ports.items()),
        ]
        self.env = {**os.environ, **RAY_DEFAULT_ENV}
        self.env.pop("RAY_ADDRESS", None)
        # Job entrypoints run `python ...` through the shell: it must be this interpreter.
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", "")
        self.log_path = os.path.join(self.temp_dir, "head.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "RayHead":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"Ray head did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        pgid = self.process.pid  # the session leader's pid is the group id
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None
        self._kill_leftovers()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Ray processes that left the group (e.g. daemonised) still name our temp dir."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    cmdline = handle.read().decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmdline:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
