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


def ensure_ray(address: str | None = None, *, allow_auto: bool = False) -> bool:
    """Make sure this process is a Ray driver; True when the caller must `ray.shutdown()`."""
    import ray

    if ray.is_initialized():
        return False
    for key, value in RAY_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    if allow_auto:
        try:
            ray.init(address="auto", log_to_driver=True)
            return True
        except ConnectionError:
            pass
    ray.init(include_dashboard=False, log_to_driver=False)
    return True
