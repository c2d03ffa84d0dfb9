"""Connecting to Ray: an existing cluster when one is named, else a local instance.

`berg-scale generate` starts a private local Ray unless RAY_ADDRESS (or --ray-address)
names a cluster; it never attaches to some other Ray that happens to run on the machine.
A Ray Job (`jobs/generate.py`) always runs inside a cluster, where Ray sets RAY_ADDRESS.
"""

from __future__ import annotations

import os

# Ray settings every berg-scale driver starts with unless the environment already sets
# them: no usage telemetry leaves the machine, worker logs are not folded together (a
# failing shard's traceback stays readable), and Ray's token authentication and
# Windows/macOS multi-node mode stay off, as a private local instance needs neither.
RAY_DEFAULT_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


_joined_cluster: bool | None = None  # set by ensure_ray: this driver joined an existing cluster


def ensure_ray(address: str | None = None, *, allow_auto: bool = False) -> bool:
    """Make sure this process is a Ray driver; True when the caller must `ray.shutdown()`."""
    import ray

    global _joined_cluster
    if ray.is_initialized():
        return False
    for key, value in RAY_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        _joined_cluster = True
        return True
    if allow_auto and not address and _recorded_cluster_answers():
        try:
            ray.init(address="auto", log_to_driver=True)
            _joined_cluster = True
            return True
        except ConnectionError:
            pass
    ray.init(include_dashboard=False, log_to_driver=False)
    _joined_cluster = False
    return True


def _recorded_cluster_answers(timeout_s: float = 2.0) -> bool:
    """Whether the cluster `address="auto"` would join answers at all.

    `ray start` records its address in `<temp dir>/ray/ray_current_cluster`; a file left by
    a node that is gone makes `ray.init(address="auto")` wait on it for good, so the
    address is probed first (one TCP connect) and a dead one means: start a local Ray.
    """
    import socket
    import sys
    import tempfile

    path = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(path) as handle:
            recorded = handle.read().split()[0]
        host, _, port = recorded.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except FileNotFoundError:
        return False  # no cluster was started here: ray.init(address="auto") would refuse anyway
    except (OSError, ValueError, IndexError):
        print(f"berg-scale: the Ray cluster recorded in {path} does not answer (a node that is gone?); "
              "starting a local Ray instead (set RAY_ADDRESS to join a cluster)", file=sys.stderr)
        return False


def joined_cluster() -> bool:
    """Whether this driver runs on an existing Ray cluster (which may add nodes for pending
    work) rather than a private local Ray (which has this machine's resources, no more)."""
    if _joined_cluster is not None:
        return _joined_cluster
    value = os.environ.get("RAY_ADDRESS")  # Ray initialised by the caller: as Ray Jobs set it
    return bool(value) and value != "local"
