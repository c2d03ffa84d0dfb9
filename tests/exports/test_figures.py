"""Figure helpers: files are written, colours follow the data, missing vertices are legend grey.

The categorical map is planted from fsaverage5 coordinates (three bands front to back)
with the right hemisphere lacking vertices 9,000 and up, the layout that used to appear
as dark speckle; every face is checked against the rule the helper documents.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from matplotlib.colors import to_rgba_array

from berg_scale.errors import BergScaleError
from berg_scale.exports import hemisphere_arrays, to_mne, to_surface_image
from berg_scale.figures import eeg_overview, save_figure, surface_map, time_courses
from berg_scale.figures.surface_figures import _colouring, face_colours
from berg_scale.models.vit_readouts import eeg_time_attrs
from berg_scale.rnc.synthetic import write_synthetic_output

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLOURS = ["#d62728", "#1f77b4", "#2ca02c"]


@pytest.fixture(scope="module")
def mesh():
    from nilearn import datasets

    return datasets.load_fsaverage("fsaverage5")


def png_magic(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_MAGIC


def _sorted_rows(rgba: np.ndarray) -> np.ndarray:
    return rgba[np.lexsort(rgba.T[::-1])]


def banded_codes(mesh) -> dict[str, np.ndarray]:
    out = {}
    for side in ("left", "right"):
        y = np.asarray(mesh["pial"].parts[side].coordinates)[:, 1]
        out[side] = ((y > -40).astype(float) + (y > 0))
    out["right"][9000:] = np.nan
    return out


def test_categorical_map_colours_every_face_by_rule(tmp_path, mesh):
    from nilearn import datasets

    codes = banded_codes(mesh)
    fig = surface_map(codes, categories=["a", "b", "c"], colours=COLOURS, views=("lateral",),
                      title="planted bands", legend_title="category")
    paths = save_figure(fig, str(tmp_path / "bands"))
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "svg"]
    assert png_magic(paths[0])
    table = to_rgba_array(COLOURS)
    sulcal = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    for col, side in enumerate(("left", "right")):
        faces = np.asarray(mesh["inflated"].parts[side].faces)
        colour_of = _colouring({"left": codes["left"], "right": codes["right"]}, ["a", "b", "c"], COLOURS,
                               "RdBu_r", None, None)[0]
        expected = face_colours(codes[side], faces, np.asarray(sulcal.data.parts[side]), colour_of)
        # matplotlib depth-sorts the faces when it draws: the drawn colours are the same multiset
        drawn = fig.axes[col].collections[-1].get_facecolor()
        assert drawn.shape == (faces.shape[0], 4)
        np.testing.assert_allclose(_sorted_rows(drawn), _sorted_rows(expected))
        drawn = expected
        corner = codes[side][faces]
        present = (~np.isnan(corner)).sum(axis=1)
        full = present == 3
        middle = np.sort(corner[full], axis=1)[:, 1].astype(int)
        np.testing.assert_allclose(drawn[full], table[middle])
        missing = present <= 1
        assert missing.any() == (side == "right")
        if side == "right":
            grey = drawn[missing]
            # legend grey, lightly shaded: never the black/white sulcal map, never a category colour
            assert np.allclose(grey[:, 0], grey[:, 1]) and np.allclose(grey[:, 1], grey[:, 2])
            assert grey[:, :3].min() >= 0.72 - 1e-9 and grey[:, :3].max() <= 0.86 + 1e-9
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "right: 1,242 of 10,242 vertices without data" in texts
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a", "b", "c", "no data"]
    matplotlib.pyplot.close(fig)


def test_continuous_map_from_a_column_has_a_labelled_colour_bar(tmp_path, mesh):
    hemi = np.array(["lh"] * 10242 + ["rh"] * 10242)
    vertex = np.concatenate([np.arange(10242), np.arange(10242)])
    z = np.concatenate([np.asarray(mesh["pial"].parts[s].coordinates)[:, 2] for s in ("left", "right")])
    values = np.stack([z, 2 * z])  # two images
    arrays = hemisphere_arrays(values, hemi, vertex, mesh="fsaverage")
    assert arrays["left"].shape == (2, 163842) and np.isnan(arrays["left"][:, 10242:]).all()
    np.testing.assert_allclose(arrays["right"][1, :10242], 2 * z[10242:])
    image = to_surface_image({side: a[:, :10242] for side, a in arrays.items()})
    assert image.shape == (20484, 2)
    fig = surface_map({s: a.mean(axis=0) for s, a in arrays.items()}, colorbar_label="response (a.u.)",
                      views=("lateral",), cmap="viridis")
    bars = [ax for ax in fig.axes if ax.get_xlabel() == "response (a.u.)"]
    assert len(bars) == 1
    path = save_figure(fig, str(tmp_path / "continuous"), formats=("png",))[0]
    assert png_magic(path)
    matplotlib.pyplot.close(fig)
    with pytest.raises(BergScaleError, match="category codes"):
        surface_map({"left": np.full(10242, 5.0), "right": np.zeros(10242)}, categories=["a", "b"])
    with pytest.raises(BergScaleError, match="at least 10,242"):
        surface_map({"left": np.zeros(100), "right": np.zeros(10242)})


def test_eeg_overview_draws_group_means_in_display_units(tmp_path):
    channels = ["O1", "Oz", "O2", "PO7", "P7", "Pz", "Cz", "C3", "Fp1", "F3"]
    n_t = 60
    times = np.round(-0.1 + 0.005 * np.arange(n_t), 6)
    rng = np.random.default_rng(1)
    values = rng.normal(0, 0.001, (6, 2, len(channels), n_t))
    values[:, :, :4, 40] += 0.01  # occipital peak at 100 ms
    name = "eeg-things_eeg_2-vit_b_32/sub-01/all"
    output = str(tmp_path / "out")
    write_synthetic_output(output, {}, {name: values.astype(np.float32)}, n_shards=1,
                           layouts={name: {"shape": values.shape[1:], "dims": ["repetition", "channel", "time"]}},
                           coords={name: {"repetition": [1, 2], "channel": channels, "time": times}})
    path = tmp_path / "out" / "readouts.json"
    readouts = json.loads(path.read_text())
    readouts["columns"][0]["attrs"] = eeg_time_attrs(times, np.arange(n_t), "V/m^2")
    path.write_text(json.dumps(readouts))
    epochs = to_mne(output, name, repetitions="average")
    groups = {"occipital": ["O1", "Oz", "O2", "PO7"], "frontal": ["Fp1", "F3"]}
    ax = time_courses(epochs, groups)
    occipital = ax.lines[0].get_ydata()
    np.testing.assert_allclose(occipital, values[:, :, :4].astype(np.float32).mean(axis=(0, 1, 2)) * 1e3, rtol=1e-4)
    assert int(np.argmax(occipital)) == 40 and ax.get_ylabel() == "CSD (mV/m²)"
    assert ax.get_xlabel() == "time from stimulus onset (ms)"
    matplotlib.pyplot.close(ax.figure)
    fig = eeg_overview(epochs, latency_s=0.1)
    left, right = fig.axes[0], fig.axes[1]
    assert [t.get_text().split(" (")[0] for t in left.get_legend().get_texts()] == [
        "occipital", "parietal", "central", "frontal"]
    assert right.get_title() == "100 ms"
    assert any("mV/m²" in a.get_ylabel() for a in fig.axes[2:])  # topomap colour bar
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = left.get_legend().get_window_extent(renderer)
    plot_box = left.get_window_extent(renderer)
    assert legend_box.y0 >= plot_box.y1  # above the curves, never over them
    assert not any(legend_box.overlaps(t.get_window_extent(renderer)) for t in fig.texts)  # nor the title
    paths = save_figure(fig, str(tmp_path / "eeg"))
    assert png_magic(paths[0])
    matplotlib.pyplot.close(fig)
    with pytest.raises(BergScaleError, match="outside the epoch"):
        eeg_overview(epochs, latency_s=0.9)


def test_save_figure_creates_the_folder_of_its_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig, ax = matplotlib.pyplot.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    paths = save_figure(fig, "figures/surface")  # as docs/exports.md writes it, figures/ absent
    assert paths == ["figures/surface.png", "figures/surface.svg"]
    assert png_magic(str(tmp_path / "figures" / "surface.png"))
    assert save_figure(fig, "plain", formats=("png",)) == ["plain.png"]  # no folder in the stem
    matplotlib.pyplot.close(fig)
