"""Environment hygiene for offline, loopback-only runs (tests, demo, benchmarks).

Must run before any AWS client or Ray instance exists: botocore reads the
metadata-service switch and credentials when a session is created, and Ray reads its
variables when it starts.
"""

from __future__ import annotations

import os

TEST_ACCESS_KEY = "berg-scale-test"
TEST_SECRET_KEY = "berg-scale-test-secret"

RAY_LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def apply_offline_environment(*, credentials: bool = True) -> None:
    """Point every client at loopback-safe settings.

    With `credentials`, test credentials are forced (tests); without, only unset
    credentials get no defaults (the demo never needs them).
    """
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    for key, value in RAY_LOOPBACK_ENV.items():
        os.environ[key] = value
    if credentials:
        os.environ["AWS_ACCESS_KEY_ID"] = TEST_ACCESS_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET_KEY
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        # Never read ~/.aws of whoever runs the tests.
        os.environ["AWS_CONFIG_FILE"] = os.devnull
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
