"""Random streams keyed by what they are for, never by where something sits in a study.

A permutation or bootstrap stream seeded with a pair's position would change that
pair's p-values and intervals when another pair is added or the pairs are reordered.
Here a stream depends only on the study seed, a purpose string and the identity of
what it serves (ROI names, subject, condition). The identity is hashed with SHA-256 of
its canonical JSON form, not with Python's hash(), which is salted per process.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from berg_scale.errors import ConfigError


def stream(seed: int, purpose: str, *identity: str | int | None) -> np.random.Generator:
    """A generator determined by (seed, purpose, identity) alone."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, not {seed!r}")
    key = json.dumps([purpose, *identity], separators=(",", ":"), ensure_ascii=True)
    words = np.frombuffer(hashlib.sha256(key.encode("ascii")).digest(), dtype="<u4")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(w) for w in words)]))
