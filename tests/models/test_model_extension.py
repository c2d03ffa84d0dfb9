"""A new encoding model is one module plus one card (toy_family.py, toy-colour-linear.yaml).

The toy family goes through every path a BERG model takes: ModelSet next to a BERG
model, preflight, `fetch-weights --dry-run`, `plan` and a `generate` run on Ray workers,
with nothing outside its module and card knowing it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import toy_family
import yaml

from berg_scale.cli import main
from berg_scale.models import ModelSet, ReadoutSpec, known_model_ids
from berg_scale.models.registry import (
    install_plugin,
    uninstall_plugin,
    unregister_model,
)

TOY = toy_family.CARD.model_id
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0


@pytest.fixture
def toy_model():
    from ray import cloudpickle  # Ray's own copy pickles what workers receive

    # Ray workers cannot import tests/; an installed plug-in package would ship by reference.
    cloudpickle.register_pickle_by_value(toy_family)
    install_plugin(toy_family.install)
    yield toy_family
    uninstall_plugin(toy_family.install)
    unregister_model(TOY)
    cloudpickle.unregister_pickle_by_value(toy_family)


@pytest.fixture
def toy_root(tmp_path, berg_root):
    root = tmp_path / "root"
    root.mkdir()
    (root / "encoding_models").symlink_to(berg_root / "encoding_models", target_is_directory=True)
    toy_family.write_toy_files(root, 2, WEIGHTS)
    return root


def _expected(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float64).mean(axis=(2, 3)) / 255.0) @ WEIGHTS.T


def test_toy_model_runs_next_to_a_berg_model(toy_model, toy_root):
    assert TOY in known_model_ids()
    with pytest.raises(Exception, match="Subject must be one of"):
        ReadoutSpec(TOY, 3).resolve()
    specs = [ReadoutSpec(TOY, 2), ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})]
    ms = ModelSet(str(toy_root), specs, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 20, 30), dtype=np.uint8)
    out = ms.forward(images)
    np.testing.assert_allclose(out[f"{TOY}/sub-02/all"], _expected(images), rtol=1e-5)
    assert out["fmri-nsd-fwrf/sub-01/V1"].shape == (5, 9)
    assert "toy/weights_subject-02.npy" in ms.weight_hashes


def _config(tmp_path: Path, root: Path) -> Path:
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 3, seed=3)
    config = {
        "input": {"shards": str(tmp_path / "in"), "image_size": 32},
        "berg_root": str(root),
        "readouts": [{"model": TOY, "subjects": [2]}],
        "output": str(tmp_path / "out"),
        "resources": {"workers": 1, "batch_size": 4, "decode_threads": 1, "cpus_per_worker": 1},
        "retries": {"max_attempts": 1, "speculative_tail": False},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_toy_family_through_preflight_fetch_weights_and_plan(toy_model, toy_root, tmp_path, capsys):
    from berg_scale.config import load_config
    from berg_scale.engine.preflight import (
        MissingWeightsError,
        check_weights,
        required_weight_files,
    )

    config_path = _config(tmp_path, toy_root)
    specs = load_config(config_path).readout_specs()
    # Preflight: the family names the files; metadata is optional for the toy model.
    assert required_weight_files(specs) == [(f"{TOY}/sub-02/all", "toy/weights_subject-02.npy")]
    check_weights(str(toy_root), specs, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="toy/weights_subject-02.npy"):
        check_weights(str(tmp_path / "empty"), specs, None)

    # fetch-weights: the toy root is the source bucket.
    dest = tmp_path / "copy"
    args = ["fetch-weights", "--models", TOY, "--subjects", "2", "--bucket", str(toy_root), "--to", str(dest)]
    assert main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "toy/weights_subject-02.npy" in listing and "toy/metadata_subject-02.npy" in listing
    assert not dest.exists() or not any(dest.rglob("*.npy"))
    assert main(args) == 0
    capsys.readouterr()
    assert (dest / "toy/weights_subject-02.npy").read_bytes() == (toy_root / "toy/weights_subject-02.npy").read_bytes()

    # plan: the width comes from the toy metadata, through the family.
    assert main(["plan", str(config_path), "--images", "10", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    columns = {c["name"]: c for c in plan["columns"]}
    assert columns[f"{TOY}/sub-02/all"]["width"] == WEIGHTS.shape[0]
    assert columns[f"{TOY}/sub-02/all"]["source"] == "metadata"


@pytest.mark.ray
@pytest.mark.slow
def test_toy_family_generates_on_ray_workers(toy_model, toy_root, tmp_path, ray_session):
    from berg_scale.config import load_config
    from berg_scale.engine.run import run_generation
    from berg_scale.io.decode import decode_batch_cpu
    from berg_scale.io.results import readout_array
    from berg_scale.io.shard_reader import read_shard

    config = load_config(_config(tmp_path, toy_root))
    result = run_generation(config, show_progress=False)
    assert result.exit_code == 0
    keys, values = readout_array(config.output, f"{TOY}/sub-02/all")
    assert values.shape == (6, WEIGHTS.shape[0])
    expected = {}
    for shard in sorted((tmp_path / "in").glob("*.tar")):
        samples = read_shard(str(shard))
        decoded = decode_batch_cpu([s.image for s in samples], config.input.image_size, "center")
        for row, index in enumerate(decoded.ok_indices):
            expected[samples[index].key] = _expected(decoded.images[decoded.ok_indices].numpy())[row]
    assert sorted(expected) == sorted(keys)
    for key, value in zip(keys, values):
        np.testing.assert_allclose(value, expected[key], rtol=1e-5)
