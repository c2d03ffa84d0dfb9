"""Multivariate RNC on 200,000 images x 2,000-dim patterns runs in bounded memory (no N x N)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_multivariate_memory_is_linear_in_images():
    n, voxels, subjects = 200_000, 1000, 2  # D = 2,000 per ROI, two ROIs
    done = subprocess.run(
        [sys.executable, str(HERE / "rnc_memory_probe.py"), "--images", str(n), "--voxels", str(voxels),
         "--subjects", str(subjects), "--storage", "float16", "--generations", "2"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    n_squared_bytes = n * n * 4  # one float32 N x N RSM: 160 GB
    assert report["pattern_bytes"] == 2 * n * voxels * subjects * 2  # float16 storage
    # patterns (1.6 GB) + interpreter/torch + one gathered block; far below one N x N matrix
    assert report["peak_rss_bytes"] < 4 * 1024**3
    assert report["peak_rss_bytes"] < n_squared_bytes / 40
    assert len(report["best_scores"]) == 2 and report["best_scores"][1] >= report["best_scores"][0]
    assert report["null_finite"] == 2400
