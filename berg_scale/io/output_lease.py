"""One writer per output at a time: the lease file `_lease.json` at the output root.

Two drivers on one output would each trust their own view of `_done/` and `run.json`,
clean each other's staging files and leave a manifest that describes only one of them.
The lease makes the second driver stop before it reads or writes anything:

* **Acquire** is an exclusive create: `If-None-Match: *` on S3 (refused with
  PreconditionFailed when the key exists), a hard link of a fully written temporary file
  on a local filesystem (`link` fails when the target exists). Exactly one of two racing
  drivers wins.
* **Renew**: a daemon thread rewrites the lease every `renew_s` seconds with a fresh
  `renewed_at`; on S3 the rewrite is conditional on the ETag of the lease this run wrote,
  so a run whose lease was taken over finds out instead of overwriting the new holder.
* **Stale leases**: a lease not renewed for `ttl_s` seconds belongs to a driver that is
  gone or cut off. It is taken over only when asked (`--take-over`), except when the
  holder ran on this host and its process no longer exists (checked by pid and process
  start time): then there is nobody to ask, and the lease is taken over at once.
* **Release** removes the lease only if this run still holds it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from berg_scale.errors import BergScaleError
from berg_scale.io.output_store import OutputStore
from berg_scale.io.storage import is_remote

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 120.0
DEFAULT_RENEW_S = 20.0


class OutputBusyError(BergScaleError):
    """Another run holds the output's lease."""


def new_run_id() -> str:
    """A run's identity: sortable by start time, unique across hosts."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def ray_submission_id() -> str | None:
    """The `ray job submit` id of this driver, when it is a Ray job (what `ray job stop` takes).

    Ray's job supervisor hands the driver its job config, metadata included, as JSON in
    the environment variable RAY_JOB_CONFIG_JSON_ENV_VAR.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    value = metadata.get("job_submission_id")
    return str(value) if value else None


def _process_start_ticks(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, start_ticks: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start_ticks is None:
        return True
    current = _process_start_ticks(pid)
    return current is None or current == start_ticks


@dataclass
class LeaseState:
    """What a lease file says, and how we read it."""

    holder: dict[str, Any]
    etag: str | None


class OutputLease:
    """The lease of one output for one run; use as a context manager or acquire/release."""

    def __init__(
        self,
        store: OutputStore,
        run_id: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        renew_s: float = DEFAULT_RENEW_S,
        command: str | None = None,
        noun: str = "output",
    ) -> None:
        self.store = store
        self.noun = noun  # what the messages call the leased place ("output", "destination")
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.renew_s = float(renew_s)
        self.path = store.path(LEASE_FILE)
        self.remote = is_remote(store.url)
        self.started_at = time.time()
        self.command = command if command is not None else " ".join(sys.argv[:3])
        self.held = False
        self.lost: str | None = None  # why the lease was lost while running, if it was
        self.taken_over: dict[str, Any] | None = None  # the previous holder, when taken over
        self._etag: str | None = None
        self._unseen_renewals = 0  # refused renewals in a row that found no lease object at all
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def acquire(self, take_over: bool = False) -> None:
        """Hold the lease or raise OutputBusyError naming the holder and the way out."""
        for _ in range(3):
            if self._create():
                self.held = True
                self._start_renewing()
                return
            state = self._read()
            if state is None:
                continue  # released between our create and our read: try again
            holder = state.holder
            age = time.time() - float(holder.get("renewed_at") or 0)
            gone_here = self._holder_gone_on_this_host(holder)
            if not (gone_here or (take_over and age > self.ttl_s)):
                raise OutputBusyError(self._busy_message(holder, age, take_over))
            if self._remove_if_unchanged(state):
                self.taken_over = holder
            # loop: create again (another driver may win the race; then we are refused)
        raise OutputBusyError(
            f"{self.store.url} is being claimed by another run at the same time: wait for it or "
            f"use a new {self.noun}"
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            if not self.held:
                return
            self.held = False
            state = self._read()
            if state is not None and state.holder.get("run_id") == self.run_id:
                self._remove_if_unchanged(state)

    def check(self) -> None:
        """Raise if the lease was lost while running (a long stall let another run take it)."""
        if self.lost:
            raise OutputBusyError(self.lost)

    def __enter__(self) -> "OutputLease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ holder
    def holder(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _process_start_ticks(pid),
            "started_at": self.started_at,
            "renewed_at": time.time(),
            "ttl_s": self.ttl_s,
            "command": self.command,
            "ray_job": ray_submission_id(),
        }

    def _busy_message(self, holder: dict[str, Any], age: float, take_over: bool) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started_at") or 0)))
        who = f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, started {since}"
        if holder.get("ray_job"):
            who += f", Ray job {holder['ray_job']}"
        who += ")"
        if age > self.ttl_s:
            return (
                f"{self.store.url} is held by {who}, last renewed {age:.0f} s ago (stale): if that "
                f"run has stopped, rerun with --take-over; otherwise wait for it or use a new {self.noun}"
            )
        stop = f"`ray job stop {holder['ray_job']}`" if holder.get("ray_job") else "stop it"
        extra = " (a live lease cannot be taken over)" if take_over else ""
        stale_in = max(self.ttl_s - age, 0.0)
        if holder.get("host") == socket.gethostname():
            later = ""  # a holder on this host that is gone is taken over without asking
        else:
            later = (f" (if that driver was killed on another machine, its lease goes stale in "
                     f"{stale_in:.0f} s; then rerun with --take-over)")
        return (
            f"{self.store.url} is in use by {who}, renewed {age:.0f} s ago{extra}: wait for it to "
            f"finish, or {stop} and run again, or use a new {self.noun}{later}"
        )

    def _holder_gone_on_this_host(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and _holder_pid(holder) == os.getpid() \
                and holder.get("run_id") != self.run_id:
            # Same process, another run object (tests, notebooks): that run is gone only
            # if it stopped renewing.
            return time.time() - float(holder.get("renewed_at") or 0) > self.ttl_s
        return holder_process_gone(holder)

    # ------------------------------------------------------------------ storage
    def _payload(self) -> bytes:
        return json.dumps(self.holder(), indent=1, sort_keys=True).encode()

    def _create(self) -> bool:
        data = self._payload()
        if self.remote:
            bucket, key = self._bucket_key()
            try:
                response = self.store.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:  # noqa: BLE001 - botocore errors arrive as OSError subclasses or ClientError
                if _is_precondition_failure(exc):
                    return False
                raise
            self._etag = response.get("ETag")
            return True
        directory = self.path.rsplit("/", 1)[0]
        os.makedirs(directory, exist_ok=True)
        temp = f"{self.path}.{self.run_id}.{uuid.uuid4().hex[:6]}.tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def _read(self) -> LeaseState | None:
        if self.remote:
            bucket, key = self._bucket_key()
            try:
                raw, etag = _s3_get(self.store.fs, bucket, key)
            except Exception as exc:  # noqa: BLE001
                if _is_missing(exc):
                    return None
                raise
        else:
            try:
                with open(self.path, "rb") as handle:
                    raw = handle.read()
            except FileNotFoundError:
                return None
            etag = None
        try:
            holder = json.loads(raw)
            if not isinstance(holder, dict):
                raise ValueError("not an object")
        except ValueError:
            holder = {"run_id": "unknown", "renewed_at": 0, "host": "unknown", "pid": None,
                      "note": "unreadable lease file"}
        return LeaseState(holder, etag)

    def _remove_if_unchanged(self, state: LeaseState) -> bool:
        if self.remote:
            bucket, key = self._bucket_key()
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if state.etag:
                kwargs["IfMatch"] = state.etag
            try:
                self.store.fs.call_s3("delete_object", **kwargs)
            except Exception as exc:  # noqa: BLE001
                if _is_precondition_failure(exc) or _is_missing(exc):
                    return False
                raise
            return True
        # Locally, rename the exact file we read out of the way; a newer lease has a new inode.
        aside = f"{self.path}.{uuid.uuid4().hex[:6]}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as handle:
                same = json.loads(handle.read()).get("run_id") == state.holder.get("run_id")
        except (OSError, ValueError, AttributeError):
            same = state.holder.get("run_id") == "unknown"
        if not same:  # someone else's new lease: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def _renew_once(self) -> None:
        with self._lock:
            if not self.held:
                return
            data = self._payload()
            if self.remote:
                bucket, key = self._bucket_key()
                kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
                if self._etag:
                    kwargs["IfMatch"] = self._etag
                try:
                    response = self.store.fs.call_s3("put_object", **kwargs)
                except Exception as exc:  # noqa: BLE001
                    if (_is_precondition_failure(exc) or _is_missing(exc)) and self._taken_from_us():
                        self._mark_lost()
                    return  # a transient outage: try again at the next tick
                self._etag = response.get("ETag")
                self._unseen_renewals = 0
                return
            state = self._read()
            if state is None or state.holder.get("run_id") != self.run_id:
                self._mark_lost()
                return
            temp = f"{self.path}.{self.run_id}.renew.tmp"
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, self.path)

    def _taken_from_us(self) -> bool:
        """Whether a refused renewal means another run holds the lease now.

        An object store that has just restarted can answer 404, or a new ETag, for a lease
        object that still names this run: then this run keeps it (and the server's ETag).
        Only another run's lease object, or none at all at three renewals in a row, is final.
        """
        try:
            state = self._read()
        except Exception:  # noqa: BLE001 - still unreachable: decide at the next tick
            return False
        if state is not None and state.holder.get("run_id") == self.run_id:
            self._etag = state.etag
            self._unseen_renewals = 0
            return False
        if state is None:
            self._unseen_renewals += 1
            return self._unseen_renewals >= 3
        return True

    def _mark_lost(self) -> None:
        self.held = False
        self.lost = (
            f"{self.store.url}: this run's lease was taken over by another run (this driver "
            f"stalled for over {self.ttl_s:.0f} s); stopping so that the other run owns the {self.noun}"
        )

    def _start_renewing(self) -> None:
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.renew_s):
                try:
                    self._renew_once()
                except Exception:  # noqa: BLE001 - a failed renewal is retried at the next tick
                    pass

        self._thread = threading.Thread(target=loop, name="output-lease", daemon=True)
        self._thread.start()

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.path.partition("/")
        return bucket, key


def _s3_get(fs: Any, bucket: str, key: str) -> tuple[bytes, str | None]:
    """Body and ETag of one object in a single request (no window between the two)."""
    from fsspec.asyn import sync

    async def get() -> tuple[bytes, str | None]:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return data, response.get("ETag")

    return sync(fs.loop, get)


def holder_process_gone(holder: dict[str, Any]) -> bool:
    """True when the lease's driver ran on this host and its process no longer exists.

    Another host's process cannot be probed from here: False means "not known to be gone".
    """
    if holder.get("host") != socket.gethostname():
        return False
    pid = _holder_pid(holder)
    if pid is None:
        return False
    return not _process_alive(pid, holder.get("pid_start"))


def _holder_pid(holder: dict[str, Any]) -> int | None:
    try:
        return int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return None


def read_lease(store: OutputStore) -> dict[str, Any] | None:
    """The current holder of an output's lease (for `status`), or None."""
    return store.read_json(store.path(LEASE_FILE))


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    cause = exc.__cause__ or exc.__context__
    return _error_code(cause) if cause is not None and cause is not exc else ""


def _is_precondition_failure(exc: BaseException) -> bool:
    code = _error_code(exc)
    text = str(exc)
    return code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"} or (
        "PreconditionFailed" in text or "pre-conditions" in text or "412" in text
    )


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    return _error_code(exc) in {"NoSuchKey", "404", "NotFound"}
