"""Where an S3 endpoint comes from when none is given, in one place.

Kept free of heavy imports: every command's `--help` text reads it.
"""

from __future__ import annotations

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")

ENDPOINT_HELP = (
    "S3-compatible endpoint (default: the first of $" + ", $".join(ENDPOINT_VARIABLES)
    + " that is set, else AWS)"
)
