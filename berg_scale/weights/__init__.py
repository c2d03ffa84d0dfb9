"""Getting BERG weight files onto the machine that runs the models.

`fetch_weights` copies what a set of readouts needs from BERG's public bucket (or any
S3-compatible store) into a local BERG root, resumably; `ensure_local_weights` does the
same into a node-local cache where many workers on one node share a single download.
No torch import here: fetching runs before any model is built.
"""

from berg_scale.weights.fetch import FetchReport, FileStatus, fetch_files, fetch_weights
from berg_scale.weights.node_cache import ensure_local_weights
from berg_scale.weights.selection import DEFAULT_BUCKET, DEFAULT_REGION, files_for_readouts

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_REGION",
    "FetchReport",
    "FileStatus",
    "ensure_local_weights",
    "fetch_files",
    "fetch_weights",
    "files_for_readouts",
]
