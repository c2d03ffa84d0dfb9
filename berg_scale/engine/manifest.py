"""The run manifest (`run.json`): what ran, with which software, and how it went.

It holds the redacted config (no secrets), the fingerprints that guard resumes against
silently mixing outputs of different configs or weights, the list of input shards
(which `berg-scale status` needs to report pending shards), versions and totals.
"""

from __future__ import annotations

import platform
import time
from typing import Any

from berg_scale import __version__


def software_versions() -> dict[str, str]:
    versions = {"berg_scale": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "ray", "pyarrow", "numpy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            versions[name] = "not installed"
    return versions


def build_manifest(
    *,
    config: dict[str, Any],
    status: str,
    config_fingerprint: str,
    model_fingerprint: str | None,
    weight_hashes: dict[str, str] | None,
    input_shards: list[str],
    started_at: float,
    run_id: str | None = None,
    ray_job: str | None = None,
    model_weight_hashes: dict[str, str] | None = None,
    this_run: dict[str, Any] | None = None,
    shards: dict[str, int] | None = None,
    workers: list[dict[str, Any]] | None = None,
    scheduler: dict[str, Any] | None = None,
    failed: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "started_at": started_at,
        "updated_at": time.time(),
        "versions": software_versions(),
        "config": config,
        "fingerprints": {"config": config_fingerprint, "model": model_fingerprint},
        "run_id": run_id,
        "ray_job": ray_job,
        "weight_hashes": weight_hashes or {},
        "model_weight_hashes": model_weight_hashes or {},
        "input_shards": input_shards,
        "shards": shards or {},
        "this_run": this_run or {},
        "workers": workers or [],
        "scheduler": scheduler or {},
        "failed": failed or {},
    }
