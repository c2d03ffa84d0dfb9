"""`berg-scale plan`: size predictions against real output, and every shipped config."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from berg_scale.cli import main
from berg_scale.errors import BergScaleError
from berg_scale.io.tar_sample import TarSample
from berg_scale.planning import estimate_columns, id_bytes_per_image, make_plan, plan_hints

REPO = Path(__file__).resolve().parents[2]
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"
EEG = "eeg-things_eeg_2-vit_b_32"


def _generation_config(shards: str, output: str, berg_root: str, backbone: str | None, readouts):
    from berg_scale.config import load_config

    return load_config({
        "input": {"shards": shards, "image_size": 64},
        "berg_root": berg_root,
        "backbone": backbone,
        "readouts": readouts,
        "output": output,
        "resources": {"workers": 1, "batch_size": 8, "decode_threads": 1, "cpus_per_worker": 1},
        "retries": {"max_attempts": 2, "backoff_s": 0.2, "speculative_tail": False},
    })


def _within(predicted: float, actual: float, tolerance: float = 0.05) -> bool:
    return abs(predicted - actual) <= tolerance * actual


@pytest.fixture(scope="module")
def plan_root(tmp_path_factory):
    """fwRF (two ROIs, 300 and 120 voxels) and fsaverage (k = 3, hV4/PPA) for subject 1."""
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = tmp_path_factory.mktemp("plan_root")
    make_synthetic_root(
        root, models=[FWRF, FSAVERAGE], subjects=(1,), rois=("V1", "hV4"),
        fsaverage_rois=("hV4", "PPA"), fwrf_voxels={"V1": 300, "hV4": 120}, seed=4,
    )
    return str(root)


READOUTS = [
    {"model": FWRF, "subjects": [1], "rois": ["V1", "hV4"], "outputs": ["responses", "mean"]},
    {"model": FSAVERAGE, "subjects": [1], "rois": ["hV4"], "outputs": ["responses", "mean"], "dtype": "float16"},
    {"model": FSAVERAGE, "subjects": [1], "rois": ["PPA"], "outputs": ["mean"]},
]


def test_widths_come_from_metadata_when_the_root_has_it(plan_root, tmp_path):
    from berg_scale.models import families
    from berg_scale.models.store import WeightStore

    config = _generation_config("unused.tar", str(tmp_path / "o"), plan_root, None, READOUTS)
    columns = {c.name: c for c in estimate_columns(config.readout_specs(), plan_root)}
    assert columns[f"{FWRF}/sub-01/V1"].width == 300
    assert columns[f"{FWRF}/sub-01/hV4"].width == 120
    meta = WeightStore(plan_root).load(families.metadata_file(FSAVERAGE, 1), "metadata")["fmri"]
    expected = len(meta["lh_fsaverage_rois"]["hV4"]) + len(meta["rh_fsaverage_rois"]["hV4"])
    hv4 = columns[f"{FSAVERAGE}/sub-01/hV4"]
    assert hv4.width == expected and hv4.source == "metadata"
    assert hv4.bytes_per_image == expected * 2
    assert columns[f"{FSAVERAGE}/sub-01/PPA:mean"].width == 1
    assert f"{FSAVERAGE}/sub-01/PPA" not in columns

    without = {c.name: c for c in estimate_columns(config.readout_specs(), None)}
    assert without[f"{FWRF}/sub-01/V1"].width == 1350  # documented subject-1 count
    assert without[f"{FSAVERAGE}/sub-01/hV4"].width is None  # unknown, not guessed


def test_card_widths_for_eeg_and_whole_hemispheres():
    from berg_scale.models import ReadoutSpec

    specs = [
        ReadoutSpec(EEG, 2),
        ReadoutSpec(EEG, 3, selection={"channels": ["Oz", "O1"]}),
        ReadoutSpec(FSAVERAGE, 1),
        ReadoutSpec(FSAVERAGE, 1, downsample="fsaverage5"),
    ]
    widths = [c.width for c in estimate_columns(specs, None)]
    assert widths == [4 * 63 * 140, 4 * 2 * 140, 2 * 163842, 2 * 10242]


def test_identity_columns_match_arrow(tmp_path):
    """Identity columns are exact; values may carry validity bits (<= 1/32 for float32)."""
    from berg_scale.io.response_writer import build_record_batch, build_schema

    n = 1000
    rows = [TarSample(key=f"{i:09d}", index=i) for i in range(n)]
    schema = build_schema([{"name": "m/sub-01/x", "shape": [37], "dtype": "float32"},
                           {"name": "m/sub-01/x:mean", "shape": [], "dtype": "float32"}], {})
    batch = build_record_batch(schema, "shard-000001", rows,
                               {"m/sub-01/x": np.ones((n, 37), np.float32),
                                "m/sub-01/x:mean": np.ones(n, np.float32)})
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    actual = pq.read_table(path).nbytes
    predicted = n * (id_bytes_per_image(9, len("shard-000001")) + 37 * 4 + 4)
    assert _within(predicted, actual), (predicted, actual)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_zstd_parquet_of_responses_is_about_the_predicted_size(tmp_path, dtype):
    """The disk figure `plan` prints: noisy floats barely compress, levels add a little."""
    from berg_scale.io.response_writer import build_record_batch, build_schema
    from berg_scale.planning import ColumnEstimate

    n, width = 2000, 500
    rows = [TarSample(key=f"{i:09d}", index=i) for i in range(n)]
    schema = build_schema([{"name": "x", "shape": [width], "dtype": dtype}], {})
    values = np.random.default_rng(0).standard_normal((n, width)).astype(dtype)
    batch = build_record_batch(schema, "shard-000001", rows, {"x": values})
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path, compression="zstd")
    predicted = n * (ColumnEstimate("x", "responses", width, dtype, "").bytes_per_image
                     + id_bytes_per_image(9, len("shard-000001")))
    assert 0.85 * predicted < path.stat().st_size < 1.15 * predicted


@pytest.mark.slow
def test_plan_matches_a_real_run_within_5_percent(ray_session, plan_root, tmp_path):
    """Predicted Arrow bytes vs the engine's Parquet output read back (compression aside)."""
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.berg_root import backbone_file
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 3, 5, seed=2)
    output = str(tmp_path / "out")
    config = _generation_config(str(tmp_path / "in"), output, plan_root, str(backbone_file(plan_root)), READOUTS)
    plan = make_plan(config, images_per_second_per_gpu=10, gpus=1)
    assert plan.images == 15 and len(plan.shards) == 3
    assert not plan.unknown_columns

    result = run_generation(config, show_progress=False)
    assert result.exit_code == 0
    tables = [pq.read_table(p) for p in sorted(glob.glob(f"{output}/responses/*.parquet"))]
    table = pa.concat_tables(tables)
    assert table.num_rows == 15
    assert _within(plan.total_bytes, table.nbytes), (plan.total_bytes, table.nbytes)
    for column in plan.columns:
        actual = table.column(column.name).nbytes / table.num_rows
        assert _within(column.bytes_per_image, actual), (column.name, column.bytes_per_image, actual)


def test_plan_counts_images_in_local_shards(tmp_path):
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 2, 7, seed=1)
    config = _generation_config(str(tmp_path / "in"), str(tmp_path / "o"), "/nonexistent",
                                None, [{"model": FWRF, "subjects": [1], "rois": ["V1"]}])
    plan = make_plan(config, images_per_second_per_gpu=7, gpus=2)
    assert plan.images == 14
    assert plan.gpu_hours == pytest.approx(14 / 7 / 3600)
    assert plan.wall_hours == pytest.approx(plan.gpu_hours / 2)
    assert plan.total_bytes == pytest.approx(14 * plan.bytes_per_image)


def test_plan_needs_images_when_shards_cannot_be_listed(tmp_path):
    config = _generation_config(str(tmp_path / "missing" / "x-{000..003}.tar"), str(tmp_path / "o"),
                                "/nonexistent", None, [{"model": FWRF, "subjects": [1], "rois": ["V1"]}])
    with pytest.raises(BergScaleError, match="--images"):
        make_plan(config)
    assert make_plan(config, images=10).images == 10


def test_an_unreadable_first_shard_is_a_clear_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard-000000.tar").write_bytes(b"not a tar archive" * 64)
    config = _generation_config(str(tmp_path / "in"), str(tmp_path / "o"), "/nonexistent", None,
                                [{"model": FWRF, "subjects": [1], "rois": ["V1"]}])
    with pytest.raises(BergScaleError, match="--images"):
        make_plan(config)


def test_plan_hints_are_parsed_and_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# plan: gpus=8 images=1_000_000 images_per_second_per_gpu=400\nx: 1\n")
    assert plan_hints(str(path)) == {"gpus": 8, "images": 1e6, "images_per_second_per_gpu": 400}
    path.write_text("# plan: gpu=8\n")
    with pytest.raises(BergScaleError, match="unknown plan hint"):
        plan_hints(str(path))


SHIPPED = sorted(glob.glob(str(REPO / "configs" / "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).name)
def test_every_shipped_config_validates(path):
    with open(path) as handle:
        raw = yaml.safe_load(handle)
    if "readouts" in raw:
        from berg_scale.config import load_config

        load_config(path).readout_specs()
    elif "responses" in raw:
        from berg_scale.rnc.config import load_config as load_study

        load_study(path)
    else:
        pytest.fail(f"{path} is neither a generation config (readouts) nor an RNC study (responses)")


@pytest.mark.parametrize("name", ["fsaverage-1m.yaml", "eeg-things-10subj.yaml", "fwrf-rnc-rois.yaml"])
def test_plan_cli_on_the_cluster_configs(name, capsys):
    path = str(REPO / "configs" / name)
    hints = plan_hints(path)
    assert set(hints) == {"gpus", "images", "images_per_second_per_gpu"}, "each config states its sizing"
    # --cards-only: the configs' berg_root is BERG's public bucket, and tests stay on loopback.
    assert main(["plan", path, "--assume-width", "4000", "--json", "--cards-only"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["images"] == hints["images"] and report["gpus"] == hints["gpus"]
    assert report["gpu_hours"] == pytest.approx(hints["images"] / hints["images_per_second_per_gpu"] / 3600)
    assert report["total_bytes"] > 0


def test_plan_cli_prints_a_readable_estimate(capsys):
    path = str(REPO / "configs" / "fwrf-rnc-rois.yaml")
    assert main(["plan", path, "--images", "1000", "--gpus", "2", "--images-per-second-per-gpu", "50",
                 "--cards-only"]) == 0
    out = capsys.readouterr().out
    assert "1,000 images (--images)" in out
    assert "fmri-nsd-fwrf/sub-01/V1 " in out and "1,350" in out
    assert "0.01 GPU-hours at 50.0 images/s per GPU (--images-per-second; nominal rate, not measured)" in out
    assert "on 2 GPUs (--gpus)" in out
    assert "compute rates are nominal" in out
    assert "model step: precision fp32 (exact), images resampled on the CPU as BERG does" in out
    assert "compile off" in out
    assert "shards_in_flight 2: the next shards read and decode while one runs the model" in out


def test_plan_names_the_model_step_settings():
    from berg_scale.config import ResourcesConfig
    from berg_scale.planning import model_step

    line = model_step(ResourcesConfig(precision="bf16", compile=True, shards_in_flight=1))
    assert "precision bf16 (backbone and ViT PCA projection in bf16" in line
    assert "compile on" in line and "shards_in_flight 1: one shard at a time" in line
    assert "resampled on the device (exact_resize off)" in line


def test_plan_explains_a_study_config(capsys):
    study = REPO / "configs" / "rnc_v1_hv4.yaml"
    if not study.exists():
        pytest.skip("no RNC study config in the tree")
    assert main(["plan", str(study)]) == 2
    assert "RNC study config" in capsys.readouterr().err


def test_config_comments_state_what_plan_prints():
    """The sizes written in the configs' comments are the ones `plan` computes."""
    from berg_scale.config import load_config

    expected = {"eeg-things-10subj.yaml": 705_600, "fwrf-rnc-rois.yaml": 10_021 * 8 * 4}
    for name, response_bytes in expected.items():
        path = str(REPO / "configs" / name)
        plan = make_plan(load_config(path), config_path=path, read_metadata=False)
        responses = sum(c.width * (2 if c.dtype == "float16" else 4) for c in plan.columns if c.kind == "responses")
        assert responses == response_bytes, name


@pytest.mark.parametrize("has_gpu", [False, True])
def test_plan_says_when_this_machine_would_run_the_config_on_the_cpu(capsys, monkeypatch, has_gpu):
    from berg_scale.commands import plan as plan_command

    monkeypatch.setattr(plan_command, "_has_nvidia_gpu", lambda: has_gpu)
    path = str(REPO / "configs" / "fwrf-rnc-rois.yaml")
    argv = ["plan", path, "--images", "1000", "--gpus", "1", "--images-per-second-per-gpu", "50", "--cards-only"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "on 1 GPU (--gpus)" in out
    assert ("this machine has no NVIDIA GPU" in out) is (not has_gpu)
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on 1 CPU worker (--workers)" in out and "no NVIDIA GPU" not in out
