"""README's "From your own images to RNC figures": its commands, run as written.

The only additions: fetch-weights reads from a synthetic BERG root on disk (`--bucket`)
instead of BERG's public bucket, and `rnc univariate` gets small iteration counts, since
its defaults are sized for 10^5 images and this folder has 60.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from berg_scale.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### From your own images to RNC figures"
QUICK_RNC = ["--baseline-batches", "2000", "--permutations", "200", "--bootstrap", "200",
             "--baseline-batch-size", "10", "--margin", "0"]


def _section_blocks() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n### ", 1)[0]
    return {lang: code for lang, code in re.findall(r"```(\w+)\n(.*?)```", body, re.DOTALL)}


def _commands(bash: str) -> list[list[str]]:
    commands = []
    for line in bash.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            argv = shlex.split(line)
            assert argv[0] == "berg-scale", line
            commands.append(argv[1:])
    return commands


def _photos(folder: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    for i in range(n):
        sub = folder / ("garden" if i % 2 else "street") / ("near" if i % 3 == 0 else "far")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (60 + i % 7, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img_{i:03d}.{('bmp', 'tiff', 'png', 'jpg')[i % 4]}")


def test_readme_journey_runs_as_written(ray_session, tmp_path, monkeypatch, capsys):
    from berg_scale.synthetic.berg_root import make_synthetic_root

    blocks = _section_blocks()
    commands = _commands(blocks["bash"])
    assert [c[0] for c in commands] == ["make-shards", "fetch-weights", "plan", "generate", "status", "rnc"]
    (tmp_path / "run.yaml").write_text(blocks["yaml"])
    _photos(tmp_path / "photos", 60)
    source = make_synthetic_root(tmp_path / "berg-source", models=["fmri-nsd-fwrf"], subjects=(1, 2),
                                 rois=("V1", "hV4"), fwrf_voxels=16, write_backbone=False, seed=11)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        if argv[0] == "fetch-weights":
            argv = argv + ["--bucket", str(source), "--no-progress"]
        if argv[0] == "rnc":
            argv = argv + QUICK_RNC
        code = main(argv)
        printed = capsys.readouterr()
        assert code == 0, f"`berg-scale {shlex.join(argv)}` exited {code}:\n{printed.out}\n{printed.err}"
        assert "Traceback" not in printed.err
        if argv[0] == "rnc":
            rnc_console = printed.out + printed.err
    assert (tmp_path / "shards" / "labels.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "berg").rglob("*") if p.is_file())  # fetched for real
    figures = sorted(p.name for p in (tmp_path / "rnc").rglob("*.png"))
    assert any(name.startswith("images_") for name in figures) and any(n.startswith("scatter") for n in figures)
    assert "not found" not in rnc_console
