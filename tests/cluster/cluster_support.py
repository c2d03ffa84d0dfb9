"""Shared helpers of the cluster-area tests (kept out of conftest.py so that test
modules import them by a unique name)."""

from __future__ import annotations

import os

from berg_scale.models import families

# Readouts the tests fetch, and files in the bucket that no test asks for.
NEEDED = [
    ("fmri-nsd-fwrf", 1, "V1"),
    ("fmri-nsd-fwrf", 1, "lateral"),
    ("fmri-nsd_fsaverage-vit_b_32", 1, None),
    ("eeg-things_eeg_2-vit_b_32", 1, None),
]
UNNEEDED = [
    ("fmri-nsd-fwrf", 2, "V1"),
    ("fmri-nsd-fwrf", 1, "V2"),
    ("fmri-nsd_fsaverage-vit_b_32", 2, None),
]


def layout_paths(requests) -> list[str]:
    out: list[str] = []
    for model_id, subject, roi in requests:
        out.extend(families.weight_files(model_id, subject, roi))
        out.append(families.metadata_file(model_id, subject, roi))
    return list(dict.fromkeys(out))


def placeholder_bytes(rel: str, size: int) -> bytes:
    """Deterministic, path-dependent content, so a mixed-up file is detected."""
    import hashlib

    import numpy as np

    seed = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")

    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


class RemoteRoot:
    """A BERG-layout root uploaded to the test bucket, with the bytes of every file."""

    def __init__(self, url: str, storage, contents: dict[str, bytes], needed: list[str]):
        self.url = url
        self.storage = storage
        self.contents = contents
        self.needed = needed


def local_files(root: str) -> set[str]:
    found = set()
    for folder, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if not os.path.basename(rel).startswith("."):
                found.add(rel)
    return found
