"""The demo: its config file matches what it runs, and a small run completes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml


def test_configs_demo_yaml_is_the_demo_config():
    from berg_scale.commands.demo import demo_config
    from berg_scale.config import load_config

    shipped = yaml.safe_load(open("configs/demo.yaml"))
    assert shipped == demo_config("../berg-scale-demo")  # relative to configs/, the file's folder
    load_config("configs/demo.yaml").readout_specs()  # valid, and every readout resolves


def test_demo_refuses_sizes_its_rnc_step_cannot_use_before_writing_anything(tmp_path, capsys):
    from berg_scale.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--shards", "2", "--images-per-shard", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "give 39 readable images, but the demo's RNC step needs 88" in err
    assert "--images-per-shard 45 or more with --shards 2" in err and "--no-rnc" in err
    assert not out.exists(), "refused before anything is written"
    assert main(["demo", "--out", str(out), "--shards", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_demo_shards_are_remade_when_their_size_changes(tmp_path):
    from berg_scale.commands.demo import make_demo_shards
    from berg_scale.io.shard_reader import read_shard

    out = str(tmp_path / "demo")
    messages: list[str] = []
    make_demo_shards(out, 2, 3, messages.append)
    make_demo_shards(out, 2, 3, messages.append)
    assert sum("synthetic shards" in m for m in messages) == 1, "same sizes: the shards are reused"
    make_demo_shards(out, 2, 5, messages.append)
    assert sum("synthetic shards" in m for m in messages) == 2
    assert len(read_shard(str(tmp_path / "demo" / "shards" / "shard-000000.tar"))) == 5


@pytest.mark.slow
@pytest.mark.ray
def test_demo_generation_without_rnc(ray_session, tmp_path, capsys):
    from berg_scale.cli import main
    from berg_scale.io.results import readout_array

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-rnc", "--no-experiments", "--shards", "2",
                 "--images-per-shard", "3"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM" in printed and "fetch-weights" in printed
    assert not (out / "experiments").exists()
    keys, eeg = readout_array(str(out / "generated"), "eeg-things_eeg_2-vit_b_32/sub-01/sel-" +
                              _eeg_label(), status_ok_only=True)
    assert eeg.shape[1:] == (4, 8, 140) and len(keys) == 5  # 6 images, one planted truncated JPEG


def _eeg_label() -> str:
    from berg_scale.commands.demo import DEMO_EEG_CHANNELS
    from berg_scale.models import ReadoutSpec

    return ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"channels": DEMO_EEG_CHANNELS}).label.removeprefix("sel-")


@pytest.mark.slow
@pytest.mark.ray
def test_demo_experiments_step_recomputed_from_committed_responses(ray_session, tmp_path, capsys):
    """generate -> tripartite through the engine: the shares equal a recomputation from the
    committed responses, readouts.json and the label table the demo wrote."""
    from berg_scale.cli import main
    from berg_scale.io.results import open_responses

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-rnc", "--shards", "2", "--images-per-shard", "8"]) == 0
    printed = capsys.readouterr().out
    figures = [line.split()[-1] for line in printed.splitlines() if line.strip().endswith(".png")]
    assert {f.rsplit("/", 1)[-1] for f in figures} >= {"tripartite_surface.png", "eeg_decoding.png"}
    assert all(open(f, "rb").read(4) == b"\x89PNG" for f in figures)

    generated = str(out / "generated")
    with open(out / "experiments" / "labels.csv") as handle:
        labels = {(row["shard"], row["key"]): row["category"] for row in csv.DictReader(handle)}
    readouts = json.loads((out / "generated" / "readouts.json").read_text())["columns"]
    rois = {"V1v", "hV4"}
    columns = {c["name"].rsplit("/", 1)[-1]: c for c in readouts
               if c["model_id"] == "fmri-nsd_fsaverage-vit_b_32" and c["kind"] == "responses"}
    assert set(columns) == rois
    table = open_responses(generated).to_table(columns=["shard", "key", "status"] +
                                               [columns[r]["name"] for r in rois]).to_pylist()
    ok = [row for row in table if row["status"] == "ok"]
    assert len(ok) == len(table) - 1  # the planted truncated JPEG is an error row, left out
    categories = sorted({labels[(row["shard"], row["key"])] for row in ok})
    shares = {(r["roi"], r["category"]): r["share"]
              for r in pq.read_table(out / "experiments" / "tripartite" / "tripartite.parquet").to_pylist()
              if r["subject"] == "sub-01"}
    for roi in rois:
        values = np.asarray([row[columns[roi]["name"]] for row in ok], dtype=np.float64)
        codes = np.asarray([categories.index(labels[(row["shard"], row["key"])]) for row in ok])
        means = np.stack([values[codes == c].mean(axis=0) for c in range(len(categories))])
        preferred = np.argmax(means, axis=0)
        for index, category in enumerate(categories):
            assert shares[(roi, category)] == pytest.approx(np.mean(preferred == index), abs=1e-12)
    summary = json.loads((out / "experiments" / "eeg-decoding" / "summary.json").read_text())
    assert summary["n_exemplars"] == len(ok) and len(summary["times_ms"]) == 140
