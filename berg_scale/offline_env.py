"""Environment for runs that must stay on this machine: the demo and benchmarks.

Must run before any AWS client or Ray instance exists: botocore reads the
metadata-service switch when a session is created, and Ray reads its variables when it
starts. Credentials are left alone (the demo never needs any); the tests add their own
loopback credentials on top.
"""

from __future__ import annotations

import os

from berg_scale.engine.ray_connect import RAY_DEFAULT_ENV


def apply_offline_environment() -> None:
    """Keep AWS clients off the metadata service and force berg-scale's Ray settings."""
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    for key, value in RAY_DEFAULT_ENV.items():
        os.environ[key] = value
