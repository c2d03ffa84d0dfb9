"""From own images to RNC figures: nested BMP/TIFF shards, generate with FFA as means only
(as configs/fsaverage-1m.yaml writes it), two subjects, RNC with default subjects and no
--images. Every step must run without a refusal and every grid tile must be an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from berg_scale.cli import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _own_images(folder, n, offset):
    rng = np.random.default_rng(offset)
    for i in range(n):
        sub = folder / f"day{i % 2 + 1}" / ("close" if i % 3 == 0 else "wide")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48 + i % 5, 64, 3), dtype=np.uint8)
        fmt = ("bmp", "tiff", "png")[i % 3]
        Image.fromarray(pixels).save(sub / f"photo_{offset + i:03d}.{fmt}")


def test_own_images_to_rnc_figures_with_ffa_means_and_two_subjects(ray_session, tmp_path, capsys):
    from berg_scale.config import load_config
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.berg_root import make_synthetic_root

    for name, offset in (("a", 0), ("b", 100)):
        _own_images(tmp_path / "photos" / name, 30, offset)
        assert cli_main(["make-shards", str(tmp_path / "photos" / name), str(tmp_path / "images" / name),
                         "--per-shard", "15", "--quiet"]) == 0
    root = make_synthetic_root(tmp_path / "berg", models=["fmri-nsd-fwrf"], subjects=(1, 2),
                               rois=("V1", "hV4", "FFA-1", "FFA-2"), fwrf_voxels=16, write_backbone=False, seed=5)
    generate = {
        "input": {"shards": str(tmp_path / "images"), "image_size": 256, "crop": "center"},
        "berg_root": str(root),
        "readouts": [
            {"model": "fmri-nsd-fwrf", "subjects": [1, 2], "rois": ["FFA-1", "FFA-2"],
             "outputs": ["mean"], "ncsnr_threshold": 0.5},
            {"model": "fmri-nsd-fwrf", "subjects": [1, 2], "rois": ["V1", "hV4"], "outputs": ["responses", "mean"],
             "ncsnr_threshold": 0.5},
        ],
        "output": str(tmp_path / "out"),
        "resources": {"workers": 1, "batch_size": 8, "decode_threads": 1, "cpus_per_worker": 1},
    }
    (tmp_path / "generate.yaml").write_text(yaml.safe_dump(generate))
    result = run_generation(load_config(tmp_path / "generate.yaml"), show_progress=False)
    assert result.exit_code == 0 and result.stats.images == 60

    # univariate on the command line: default subjects, images through the _done markers
    code = cli_main(["rnc", "univariate", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "rnc"),
                     "--rois", "V1", "hV4", "FFA", "--baseline-batches", "2000", "--permutations", "200",
                     "--bootstrap", "200", "--baseline-batch-size", "10", "--margin", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "subjects 1, 2" in printed and "warning" not in printed and "held-out" in printed
    summary = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    assert summary["config"]["subjects"] == [1, 2]
    assert summary["univariate"]["images_not_found"] == []
    for pair in ("V1-hV4", "V1-FFA", "hV4-FFA"):
        assert (tmp_path / "rnc" / "univariate" / f"images_{pair}.png").stat().st_size > 10_000

    # a study config with a multivariate section and nothing saying `enabled`
    study = {
        "responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "study"), "rois": ["V1", "hV4"],
        "univariate": {"baseline_batches": 1000, "baseline_batch_size": 10, "n_bootstrap": 100,
                       "n_permutations": 100},
        "multivariate": {"generations": 3, "population": 10, "batch_size": 10, "baseline_batches": 300,
                         "n_bootstrap": 100, "n_permutations": 50},
        "plots": {"formats": ["png"]},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert cli_main(["rnc", "run", str(tmp_path / "study.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "multivariate V1-hV4 align" in printed and "warning" not in printed
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["multivariate"]["images_not_found"] == [] and summary["univariate"]["images_not_found"] == []
    assert (tmp_path / "study" / "multivariate" / "generations_V1-hV4.png").exists()
