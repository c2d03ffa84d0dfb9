"""Environment hygiene for the tests: offline, loopback-only, fixed test credentials.

Must run before any AWS client or Ray instance exists: botocore reads the
metadata-service switch and credentials when a session is created, and Ray reads its
variables when it starts.
"""

from __future__ import annotations

import os
import tempfile

from berg_scale.offline_env import apply_offline_environment

TEST_ACCESS_KEY = "berg-scale-test"
TEST_SECRET_KEY = "berg-scale-test-secret"


def apply_test_environment() -> None:
    """The offline environment plus the loopback S3 server's credentials.

    Never reads ~/.aws of whoever runs the tests, nor writes their ~/.cache.
    """
    apply_offline_environment()
    os.environ["AWS_ACCESS_KEY_ID"] = TEST_ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET_KEY
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    # Remembered weight digests stay with this test process, never in the user's ~/.cache.
    os.environ["BERG_SCALE_DIGEST_CACHE"] = os.path.join(
        tempfile.gettempdir(), f"berg-scale-test-digests-{os.getpid()}.json"
    )
