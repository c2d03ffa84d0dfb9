"""Image grids from the inputs the `_done` markers name, figures sized for print, the console report."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from berg_scale.commands.rnc import result_lines
from berg_scale.rnc.config import parse_config
from berg_scale.rnc.images import fetch_images, fetch_thumbnails, input_urls_from_folder, locate_sources
from berg_scale.rnc.plots import CurveSet, GridPanel, condition_label, generations_figure, image_grid_figure
from berg_scale.rnc.responses import mean_column
from berg_scale.rnc.study import run_study
from berg_scale.rnc.synthetic import write_synthetic_output

from rnc_planted import MODEL

FORMATS = ("BMP", "TIFF", "GIF", "PNG")


def _image_bytes(fmt: str, n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 36), (n * 37 % 255, 90, 200 - n % 150)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _nested_inputs(root: Path, n: int, n_shards: int = 2, skip: frozenset = frozenset()):
    """Shards in sub-folders (`a/shard-000000.tar` -> output name `a__shard-000000`) whose
    members sit in folders inside the tar and are BMP, TIFF, GIF and PNG."""
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    names, urls, keys = [], [], []
    for j in range(n_shards):
        folder = "ab"[j % 2]
        members = {}
        for i in range(bounds[j], bounds[j + 1]):
            key = f"photos/{folder}{i:04d}"
            keys.append(key)
            if key not in skip:
                fmt = FORMATS[i % len(FORMATS)]
                members[f"{key}.{fmt.lower()}"] = _image_bytes(fmt, i)
        path = root / folder / f"shard-{j:06d}.tar"
        _write_tar(path, members)
        names.append(f"{folder}__shard-{j:06d}")
        urls.append(str(path))
    return names, urls, keys, bounds


def test_fetch_images_reads_every_format_and_nested_layout_through_the_markers(tmp_path):
    names, urls, keys, _ = _nested_inputs(tmp_path / "images", 8, skip=frozenset({"photos/b0005"}))
    write_synthetic_output(str(tmp_path / "out"), {mean_column(MODEL, 1, "V1"): np.zeros(8)}, n_shards=2,
                           shard_names=names, inputs=urls, keys=keys)
    wanted = [(names[0], keys[i]) for i in range(4)] + [(names[1], keys[i]) for i in range(4, 8)]
    found = fetch_images(None, wanted, size=32, responses=str(tmp_path / "out"))
    decoded = {k for k, image in found.items() if image is not None}
    assert decoded == set(keys) - {"photos/b0005"}  # BMP, TIFF, GIF and PNG members all decode
    assert max(found["photos/a0000"].size) == 32
    # the reason for the one that is not there, naming the tar
    fetched = fetch_thumbnails(locate_sources(names, str(tmp_path / "out")), wanted, size=32)
    warning = fetched.warning()
    assert warning.startswith("1 image(s) for the grids not found") and "photos/b0005" in warning
    assert "no such key" in warning and urls[1] in warning


def test_images_override_maps_output_names_to_nested_tars(tmp_path):
    names, urls, keys, _ = _nested_inputs(tmp_path / "moved", 4)
    assert input_urls_from_folder(str(tmp_path / "moved"), names) == dict(zip(names, urls))
    found = fetch_images(str(tmp_path / "moved"), [(names[1], keys[3])], size=16)
    assert found[keys[3]] is not None


def test_marker_without_input_url_is_reported_not_blank(tmp_path):
    write_synthetic_output(str(tmp_path / "out"), {mean_column(MODEL, 1, "V1"): np.zeros(4)}, n_shards=1)
    fetched = fetch_thumbnails(locate_sources(["000000"], str(tmp_path / "out")), [("000000", "img00000000")])
    assert "--images" in fetched.missing[("000000", "img00000000")]


def _study_output(tmp_path, n=120, subjects=(1, 2, 3), skip=frozenset()):
    rng = np.random.default_rng(4)
    names, urls, keys, _ = _nested_inputs(tmp_path / "images", n, skip=skip)
    latent = rng.normal(size=(n, 2))
    means = {mean_column(MODEL, s, roi): latent[:, r] + 0.3 * rng.normal(size=n)
             for s in subjects for r, roi in enumerate(("V1", "hV4"))}
    write_synthetic_output(str(tmp_path / "out"), means, n_shards=2, shard_names=names, inputs=urls, keys=keys)
    return keys


def test_study_draws_grids_from_marker_inputs_and_warns_about_missing_images(tmp_path):
    keys = _study_output(tmp_path)
    config = parse_config({
        "responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "rnc"), "model_id": MODEL,
        "univariate": {"baseline_batches": 2000, "n_bootstrap": 200, "n_permutations": 200},
        "plots": {"formats": ["png"]},
    })
    lines: list[str] = []
    summary = run_study(config, lines.append)
    assert summary["univariate"]["images_not_found"] == []
    assert not any("warning" in line for line in lines)
    out = tmp_path / "rnc" / "univariate"
    for name in ("images_V1-hV4.png", "baselines_V1-hV4.png", "scatter_V1-hV4.png"):
        with Image.open(out / name) as figure:
            width_in = figure.size[0] / 150
        assert 5 <= width_in <= 7.6, (name, width_in)  # about print width, so labels print near their size

    # an image that vanished from its tar: a warning line naming it, and the same in summary.json
    chosen = json.loads((tmp_path / "rnc" / "summary.json").read_text())["univariate"]["n_controlling"]
    assert chosen
    import pyarrow.parquet as pq

    gone = pq.read_table(out / "controlling.parquet").to_pylist()[0]["key"]
    _study_output(tmp_path / "again", skip=frozenset({gone}))
    config = config.model_copy(update={"responses": str(tmp_path / "again" / "out"),
                                       "out_dir": str(tmp_path / "again" / "rnc")})
    lines.clear()
    summary = run_study(config, lines.append)
    assert [m["key"] for m in summary["univariate"]["images_not_found"]] == [gone]
    assert any(line.startswith("warning: 1 image(s) for the grids not found") and gone in line for line in lines)
    assert keys


def test_condition_names_read_as_directions():
    assert condition_label("high1-low2", ("V1", "hV4")) == "V1↑ hV4↓"
    assert condition_label("low1-low2", ("V1", "hV4"), long=True) == "V1↓ hV4↓ (align)"
    assert condition_label("disentangle", ("V1", "hV4")) == "disentangle V1–hV4"


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]


def test_grid_wraps_fifty_images_at_print_width_and_notes_empty_sets():
    tiles = [(f"img{i:04d}", Image.new("RGB", (40, 30 + i)), "") for i in range(50)]
    fig = image_grid_figure([GridPanel("align", tiles), GridPanel("disentangle", [], 50, note="none eligible")],
                            columns=10, title="t", caption="units")
    width, height = fig.get_size_inches()
    assert width <= 7.5 and height < 2 * width  # 5 rows of 10, not one 50-image row
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 50
    fig.canvas.draw()  # ImageGrid places its axes at draw time
    rows = {round(ax.get_position().y0, 3) for ax in image_axes}
    assert len(rows) == 5
    assert any("none eligible" in t for t in _texts(fig))
    assert any("0 of 50 images" in t for t in _texts(fig))
    labels = [ax.get_xlabel() for ax in image_axes]
    assert labels[0] == "img0000" and all(ax.xaxis.label.get_fontsize() >= 6 for ax in image_axes)


def test_generations_figure_draws_each_fold_and_a_band():
    g = 12
    held = {f"sub-{s:02d}": np.linspace(0, 0.3, g) + 0.01 * s for s in range(1, 5)}
    band = (np.linspace(0, 0.3, g), np.linspace(0.05, 0.35, g))
    fig = generations_figure([CurveSet("align", np.linspace(0.2, 0.9, g), held, band, 0.02)], ("V1", "hV4"),
                             caption="RSA score: Pearson r")
    ax = fig.axes[0]
    assert len(ax.lines) == 4 + 1 + 1 + 1  # folds, mean, train, baseline
    assert ax.collections, "the CI band is drawn"
    assert ax.get_ylabel() == "RSA score (Pearson r)" and ax.get_xlabel() == "generation"
    assert any("Pearson r" in t for t in _texts(fig))


def test_console_puts_held_out_scores_and_significance_before_training_scores():
    summary = {"multivariate": {
        "final": [{"roi_1": "V1", "roi_2": "hV4", "condition": "align", "fold": "all", "train_score": 0.985,
                   "test_score": float("nan")}],
        "statistics": [{"roi_1": "V1", "roi_2": "hV4", "condition": "align", "mean_score": 0.12,
                        "mean_baseline": 0.10, "difference_ci": [-0.01, 0.05], "n_significant": 0,
                        "n_subjects": 8, "binomial_p": 1.0}],
    }}
    line = [x for x in result_lines(summary) if "multivariate V1-hV4 align" in x][0]
    assert line.index("held-out r=+0.120") < line.index("not significant") < line.index("train r=+0.985")


@pytest.mark.parametrize("cv", [True, False])
def test_console_univariate_lines_name_directions(cv, planted, tmp_path):
    config = parse_config({
        "responses": planted.url, "out_dir": str(tmp_path / "rnc"), "model_id": MODEL, "cross_validation": cv,
        "univariate": {"baseline_batches": 2000, "n_bootstrap": 200, "n_permutations": 200},
        "plots": {"enabled": False},
    })
    lines = result_lines(run_study(config, lambda m: None))
    if cv:
        assert any("V1↓ hV4↑" in x and "held-out" in x and "significant in 4/4" in x for x in lines)
    else:
        assert lines[0].startswith("univariate: no held-out test")


def test_tile_keys_keep_the_shard_and_the_image_apart():
    from berg_scale.rnc.plots import tile_key

    assert tile_key("short", 12) == "short"
    assert tile_key("shard000005-000007", 12) == "shard000005-\n000007"
    assert tile_key("small_objects/img12", 11) == "small_\nobjects/\nimg12"  # never "small_objec"
    assert tile_key("big_objects/img02", 11) == "big_objects\n/img02"
    for key in ("shard000005-000007", "photos_of_cats/cat_000123", "x" * 50):
        lines = tile_key(key, 12).split("\n")
        assert len(lines) <= 3 and all(len(line) <= 12 for line in lines), lines
        assert key.startswith(lines[0].rstrip("…")) and key.endswith(lines[-1])
        assert len(lines) < 3 or "".join(lines) == key, "three lines only when nothing is cut"
