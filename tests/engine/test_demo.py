"""The demo: its config file matches what it runs, and a small run completes."""

from __future__ import annotations

import pytest
import yaml


def test_configs_demo_yaml_is_the_demo_config():
    from berg_scale.commands.demo import demo_config
    from berg_scale.config import load_config

    shipped = yaml.safe_load(open("configs/demo.yaml"))
    assert shipped == demo_config("berg-scale-demo")
    load_config("configs/demo.yaml").readout_specs()  # valid, and every readout resolves


@pytest.mark.slow
@pytest.mark.ray
def test_demo_generation_without_rnc(ray_session, tmp_path, capsys):
    from berg_scale.cli import main
    from berg_scale.io.results import readout_array

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-rnc", "--shards", "2", "--images-per-shard", "3"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM" in printed and "fetch-weights" in printed
    keys, eeg = readout_array(str(out / "generated"), "eeg-things_eeg_2-vit_b_32/sub-01/sel-" +
                              _eeg_label(), status_ok_only=True)
    assert eeg.shape[1:] == (4, 8, 140) and len(keys) == 5  # 6 images, one planted truncated JPEG


def _eeg_label() -> str:
    from berg_scale.commands.demo import DEMO_EEG_CHANNELS
    from berg_scale.models import ReadoutSpec

    return ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"channels": DEMO_EEG_CHANNELS}).label.removeprefix("sel-")
