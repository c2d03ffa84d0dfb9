"""The GPU benchmark's helpers that run without a GPU: the offline bundle and the floors."""

from __future__ import annotations

import io
import lzma
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_floors  # noqa: E402
import offline_bundle  # noqa: E402


def test_every_bundled_distribution_is_pinned():
    pinned = offline_bundle.pinned_versions()
    names = ["ray", *offline_bundle.WHEELS]
    assert [n for n in names if offline_bundle._normalise(n) not in pinned] == []
    # pip's normalisation: pydantic_core in the file is pydantic-core here
    assert "pydantic-core" in pinned and "pydantic_core" not in pinned


def test_trimmed_ray_archive_keeps_the_runtime_and_drops_the_rest(tmp_path):
    wheel = tmp_path / "ray-0.0-cp312-cp312-manylinux2014_x86_64.whl"
    kept = {"ray/__init__.py": b"x = 1\n", "ray/_raylet.so": b"\x7fELF", "ray/dashboard/agent.py": b"a\n",
            "ray-0.0.dist-info/METADATA": b"Name: ray\n"}
    dropped = {"ray/jars/ray_dist.jar": b"j" * 100, "ray/rllib/x.py": b"r\n",
               "ray/dashboard/client/build/index.js": b"js\n"}
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in {**kept, **dropped}.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            archive.writestr(info, data)
    out = tmp_path / "ray.tar.xz"
    size = offline_bundle.trimmed_ray_archive(wheel, out)
    assert size == out.stat().st_size
    with lzma.open(out) as packed, tarfile.open(fileobj=io.BytesIO(packed.read())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == set(kept)
        assert tar.extractfile("ray/__init__.py").read() == b"x = 1\n"
        assert members["ray/_raylet.so"].mode == 0o755  # the shared library stays loadable


def test_gpu_run_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_run.sh")], check=True)


def test_limiting_stage_is_the_slowest_measured_one():
    floors = [gpu_floors.Floor("tar read", 9000.0), gpu_floors.Floor("nvJPEG decode", None, "no CUDA device"),
              gpu_floors.Floor("CPU decode pool", 3500.0), gpu_floors.Floor("model alone", 12000.0)]
    assert gpu_floors.limiting(floors).stage == "CPU decode pool"
    assert gpu_floors.limiting([gpu_floors.Floor("x", None)]) is None
    table = gpu_floors.floor_table(floors)
    assert table[3] == "| nvJPEG decode | not measured | no CUDA device |"


def test_decode_floors_measure_on_the_cpu():
    import numpy as np
    import torch

    from berg_scale.synthetic.shards import encode, synthetic_image

    rng = np.random.default_rng(0)
    payloads = [encode(synthetic_image(rng, 64 + i, 48), "jpg") for i in range(6)]
    threads = gpu_floors.cpu_threads([payloads[:3], payloads[3:]], 32, threads=2)
    assert threads.images_per_s is not None and threads.images_per_s > 0
    if not torch.cuda.is_available():
        assert gpu_floors.nvjpeg([payloads], 32, "cpu") == gpu_floors.Floor("nvJPEG decode", None, "no CUDA device")
        assert gpu_floors.host_to_device(4, 32, "cpu").images_per_s is None


@pytest.mark.slow
def test_gpu_feed_smoke_run_writes_every_row(tmp_path):
    """The one-shot GPU script, end to end at toy sizes on the CPU (about a minute)."""
    import os

    out = tmp_path / "RESULTS-gpu.md"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_feed.py"), "--smoke", "--shards", "1", "--images-per-shard", "8",
         "--batch-size", "4", "--compile-budget-s", "0", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| ViT-B/32 +", "| fwRF,"))]
    assert len(rows) == 8 and not any("failed" in row for row in rows), text
    assert "| CPU decode pool, 1 process(es) |" in text and "| nvJPEG decode | not measured | no CUDA device |" in text
    assert "#### What limits end to end" in text and "the lowest stage on its path is" in text
