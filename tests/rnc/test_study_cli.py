"""Config validation, the `berg-scale rnc` command, the Ray Job entry point, plots and image grids."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from berg_scale.cli import main as cli_main
from berg_scale.errors import ConfigError
from berg_scale.rnc.config import load_config, parse_config
from berg_scale.rnc.images import fetch_images
from berg_scale.rnc.responses import mean_column, response_column
from berg_scale.rnc.synthetic import image_key, shard_name, write_synthetic_output

from rnc_planted import MODEL

REPO = Path(__file__).resolve().parents[2]


def test_config_errors_are_one_line_and_name_the_field(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("responses: x\nout_dir: y\nunivariate:\n  margn: 0.04\n")
    with pytest.raises(ConfigError, match=r"univariate\.margn: unknown key") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    path.write_text("responses: x\nout_dir: y\nrois: [V1, hV4]\npairs: [[V1, PPA]]\n")
    with pytest.raises(ConfigError, match="pair V1 PPA .* names PPA, which rois .* does not list") as info:
        load_config(path)
    assert "responses" not in str(info.value)  # the pair, not a dump of the whole study
    path.write_text("responses: x\nout_dir: y\nrois: [V1, hV4]\npairs: [[V1, V1]]\n")
    with pytest.raises(ConfigError, match="names one ROI twice"):
        load_config(path)
    path.write_text("responses: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="multivariate.storage_dtype"):
        parse_config({"responses": "x", "out_dir": "y", "multivariate": {"storage_dtype": "int8"}})


def test_defaults_are_the_published_ones():
    config = parse_config({"responses": "x", "out_dir": "y"})
    assert config.seed == 20200220 and config.ncsnr_threshold == 0.5
    assert config.subjects is None and config.model_id is None  # both taken from the responses
    u, m = config.univariate, config.multivariate
    assert (u.n_images, u.margin, u.baseline_batches, u.n_bootstrap, u.n_permutations) == (25, 0.04, 10**6, 10**5, 10**5)
    assert (m.population, m.batch_size, m.generations, m.baseline_batches) == (200, 50, 2000, 10**6)
    assert config.roi_unions["FFA"] == ["FFA-1", "FFA-2"] and config.roi_unions["V1"] == ["V1v", "V1d"]
    assert load_config(REPO / "configs" / "rnc_v1_hv4.yaml").roi_pairs() == [("V1", "hV4")]


def test_cli_univariate_on_planted_output(planted, tmp_path, capsys):
    code = cli_main([
        "rnc", "univariate", "--responses", planted.url, "--out", str(tmp_path / "rnc"),
        "--subjects", *map(str, planted.subjects), "--rois", "V1", "hV4", "--baseline-batches", "5000",
        "--permutations", "500", "--bootstrap", "500", "--no-plots",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "high1-high2" in printed and "significant in 4/4" in printed
    rows = pq.read_table(tmp_path / "rnc" / "univariate" / "controlling.parquet").to_pylist()
    chosen = {r["key"] for r in rows if r["condition"] == "low1-high2" and r["fold"] == "all"}
    assert chosen == planted.planted["low1-high2"]
    assert not (tmp_path / "rnc" / "multivariate").exists()


def test_cli_reports_problems_as_one_line(tmp_path, capsys):
    code = cli_main(["rnc", "univariate", "--responses", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("berg-scale rnc: error:") and "none does not exist: check the path" in err and "\n" not in err


def _write_image_shards(root: Path, keys_per_shard: dict[str, list[str]], skip: set[str], corrupt: set[str]):
    root.mkdir(parents=True)
    for shard, keys in keys_per_shard.items():
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for n, key in enumerate(keys):
                if key in skip:
                    continue
                if key in corrupt:
                    data = b"not an image"
                else:
                    buffer = io.BytesIO()
                    Image.new("RGB", (40, 30), (n * 7 % 255, 80, 160)).save(buffer, format="PNG")
                    data = buffer.getvalue()
                info = tarfile.TarInfo(f"{key}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_fetch_images_by_key_with_missing_and_corrupt_members(tmp_path):
    _write_image_shards(tmp_path / "shards", {"000000": ["a", "b", "c"]}, skip={"b"}, corrupt={"c"})
    found = fetch_images(str(tmp_path / "shards"), [("000000", "a"), ("000000", "b"), ("000000", "c"),
                                                      ("000009", "z")], size=16)
    assert found["a"].size == (16, 12)
    assert found["b"] is None and found["c"] is None and found["z"] is None


def _multivariate_output(root: Path, n: int = 120, subjects=(1, 2, 3), n_shards: int = 3):
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(n, 6))
    voxels, ncsnr, means = {}, {}, {}
    for s in subjects:
        for roi, v in (("V1", 14), ("hV4", 9)):
            y = shared @ rng.normal(size=(6, v)) + rng.normal(size=(n, v))
            nc = rng.uniform(0.3, 1.0, size=v)
            column = response_column(MODEL, s, roi)
            voxels[column], ncsnr[column] = y, nc
            means[mean_column(MODEL, s, roi)] = y[:, nc > 0.5].mean(axis=1)
    keys = write_synthetic_output(str(root), means, voxels, ncsnr, n_shards=n_shards)
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    return {shard_name(j): keys[bounds[j]:bounds[j + 1]] for j in range(n_shards)}


def test_ray_job_entry_point_runs_a_small_study_with_plots(tmp_path):
    shards = _multivariate_output(tmp_path / "out")
    missing = shards["000001"][0]
    _write_image_shards(tmp_path / "images", shards, skip={missing}, corrupt=set())
    study = {
        "responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "rnc"), "subjects": [1, 2, 3],
        "rois": ["V1", "hV4"],
        "univariate": {"baseline_batches": 2000, "n_bootstrap": 200, "n_permutations": 200},
        "multivariate": {"enabled": True, "population": 20, "generations": 4, "baseline_batches": 600,
                         "n_bootstrap": 200, "n_permutations": 100},
        "plots": {"images": str(tmp_path / "images"), "formats": ["png", "svg"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))  # JSON is valid YAML
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "rnc.py"), str(path)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "rnc"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 20200220 and summary["n_images"] == 120
    assert len(summary["multivariate"]["final"]) == 8 and len(summary["multivariate"]["statistics"]) == 2
    generations = pq.read_table(out / "multivariate" / "generations.parquet").to_pylist()
    all_align = [g["train_score"] for g in generations if g["fold"] == "all" and g["condition"] == "align"]
    assert len(all_align) == 4 and all_align == sorted(all_align)
    controlling = pq.read_table(out / "multivariate" / "controlling.parquet").to_pylist()
    assert len([r for r in controlling if r["fold"] == "all" and r["condition"] == "align"]) == 50
    for name in ("univariate/scatter_V1-hV4", "univariate/images_V1-hV4", "multivariate/generations_V1-hV4",
                 "multivariate/images_V1-hV4"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 500, name
    assert image_key(0).startswith("img")


def test_bad_study_config_fails_cleanly_in_the_job(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("responses: x\nout_dir: y\nunknown: 1\n")
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "rnc.py"), str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("rnc: error:") and "unknown" in done.stderr


def test_cli_multivariate_options_reach_the_search(tmp_path, capsys):
    _multivariate_output(tmp_path / "out")
    code = cli_main([
        "rnc", "multivariate", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "rnc"),
        "--subjects", "1", "2", "3", "--generations", "3", "--population", "20", "--baseline-batches", "600",
        "--permutations", "100", "--bootstrap", "100", "--condition", "align", "--storage-dtype", "bfloat16",
        "--no-plots", "--no-cv",
    ])
    assert code == 0
    assert "multivariate V1-hV4 align" in capsys.readouterr().out
    summary = json.loads((tmp_path / "rnc" / "summary.json").read_text())
    assert [(r["condition"], r["fold"]) for r in summary["multivariate"]["final"]] == [("align", "all")]
    assert summary["config"]["multivariate"]["storage_dtype"] == "bfloat16"
    assert "univariate" not in summary
    generations = pq.read_table(tmp_path / "rnc" / "multivariate" / "generations.parquet")
    assert generations.num_rows == 3


def test_cli_names_every_setting_its_messages_advise(tmp_path):
    from berg_scale.cli import build_parser
    from berg_scale.commands.rnc import build_config

    args = build_parser().parse_args([
        "rnc", "univariate", "--responses", str(tmp_path / "out"), "--out", str(tmp_path / "rnc"),
        "--max-excluded-fraction", "0.05", "--no-figures",
    ])
    config = build_config(args)
    assert config.max_excluded_fraction == 0.05
    assert config.plots.enabled is False
