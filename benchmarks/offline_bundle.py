"""Pack what the GPU benchmarks need beyond a CUDA PyTorch image into one small folder.

    python benchmarks/offline_bundle.py                      # -> .bundle/ for CPython 3.12, x86-64
    python benchmarks/offline_bundle.py --python-version 3.11 --out /tmp/bundle

A GPU machine without package access often has PyTorch, torchvision, NumPy, pyarrow,
fsspec, Pillow and friends already, but not Ray or pydantic. This downloads the missing
distributions' wheels (pinned by requirements/constraints.txt) for the target Python, and
packs Ray as a trimmed archive: its wheel alone is about 80 MB, while a worker needs only
the core runtime (no Java jars, RLlib, Serve, Tune, Train, LLM or dashboard web client),
which packs into about 25 MB with xz. `benchmarks/gpu_run.sh` unpacks the folder into a
temporary site directory and runs `gpu_feed.py` with it.
"""

from __future__ import annotations

import argparse
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE.parent / "requirements" / "constraints.txt"

# Imported by berg_scale's worker path and by Ray's core, and missing from a typical CUDA
# PyTorch image (which has numpy, pyarrow, fsspec, pillow, pyyaml, rich, tqdm, click,
# filelock, msgpack, packaging, protobuf, requests, attrs, matplotlib, scikit-learn).
WHEELS = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "braceexpand",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
)
# Parts of the Ray wheel a local cluster with actors and the object store never imports.
RAY_LEFT_OUT = ("ray/jars", "ray/rllib", "ray/serve", "ray/tune", "ray/train", "ray/llm", "ray/dashboard/client")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned_versions(path: Path = CONSTRAINTS) -> dict[str, str]:
    """name -> version from a pip constraints file (names normalised as pip does)."""
    versions = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            versions[_normalise(match.group(1))] = match.group(2)
    return versions


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _download(requirements: list[str], python_version: str, into: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(into)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)


def trimmed_ray_archive(wheel: Path, archive: Path) -> int:
    """The Ray wheel's contents without `RAY_LEFT_OUT`, as .tar.xz; returns its size."""
    with zipfile.ZipFile(wheel) as source, lzma.open(archive, "wb", preset=6) as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        for entry in source.infolist():
            if entry.is_dir() or entry.filename.startswith(RAY_LEFT_OUT):
                continue
            info = tarfile.TarInfo(entry.filename)
            info.size = entry.file_size
            mode = (entry.external_attr >> 16) & 0o777
            info.mode = mode or 0o644
            with source.open(entry) as data:
                tar.addfile(info, data)
    return archive.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--out", default=str(HERE.parent / ".bundle"))
    args = parser.parse_args(argv)
    versions = pinned_versions()
    missing = [name for name in ("ray", *WHEELS) if _normalise(name) not in versions]
    if missing:
        print(f"offline_bundle: {CONSTRAINTS} pins no version of {missing}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.whl"), *out.glob("*.tar.xz")]:
        old.unlink()
    _download([f"{name}=={versions[_normalise(name)]}" for name in WHEELS], args.python_version, out)
    with tempfile.TemporaryDirectory() as scratch:
        _download([f"ray=={versions['ray']}"], args.python_version, Path(scratch))
        wheel = next(Path(scratch).glob("ray-*.whl"))
        size = trimmed_ray_archive(wheel, out / f"{wheel.stem}.trimmed.tar.xz")
        print(f"ray: {wheel.stat().st_size / 2**20:.0f} MiB wheel -> {size / 2**20:.0f} MiB trimmed archive",
              file=sys.stderr)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{out}: {len(list(out.iterdir()))} files, {total / 2**20:.1f} MiB for CPython {args.python_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
