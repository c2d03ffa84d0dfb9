"""Tripartite experiment: planted category preferences are recovered exactly.

Responses are laid out in the engine's format (`write_synthetic_output`) with fsaverage
column names and readouts.json coordinates; every expectation is recomputed here from the
raw arrays and the label table, independently of the module's streaming code.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main
from berg_scale.experiments import tripartite
from berg_scale.experiments.labels import read_label_table
from berg_scale.rnc.synthetic import image_key, write_synthetic_output

MODEL = tripartite.MODEL_ID
CATEGORIES = ("animals", "big objects", "small objects")
N_PER_CATEGORY = 24
N_EXTRA = 5  # response rows that the label table does not list
N_LH, N_RH = 40, 30
# ROI membership (hemisphere, vertex indices); FFA is the union of FFA-1 (lh) and FFA-2 (rh).
ROI_VERTICES = {
    "FFA-1": ("lh", np.arange(0, 12)),
    "FFA-2": ("rh", np.arange(0, 8)),
    "PPA": ("lh", np.arange(20, 32)),
}
PLANTED = {"FFA-1": "animals", "FFA-2": "animals", "PPA": "big objects"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _whole_brain() -> tuple[np.ndarray, np.ndarray]:
    hemi = np.array(["lh"] * N_LH + ["rh"] * N_RH)
    vertex = np.concatenate([np.arange(N_LH), np.arange(N_RH)])
    return hemi, vertex


def make_dataset(tmp_path, seed: int = 0, subjects=(1, 2), n_shards: int = 3):
    """Write planted responses and a label table; returns (output, labels path, truth dict)."""
    rng = np.random.default_rng(seed)
    n_labelled = N_PER_CATEGORY * len(CATEGORIES)
    n = n_labelled + N_EXTRA
    codes = np.repeat(np.arange(len(CATEGORIES)), N_PER_CATEGORY)
    rng.shuffle(codes)
    hemi, vertex = _whole_brain()
    voxel_columns, coords = {}, {}
    raw = {}
    for s in subjects:
        effect = rng.normal(0.0, 0.3, (len(CATEGORIES), hemi.size))  # random preferences elsewhere
        for roi, (h, idx) in ROI_VERTICES.items():
            cols = np.flatnonzero((hemi == h) & np.isin(vertex, idx))
            effect[:, cols] = 0.0
            effect[CATEGORIES.index(PLANTED[roi]), cols] = 1.0  # vs noise 1: weakly correlated vertices
        image_codes = np.concatenate([codes, rng.integers(0, 3, N_EXTRA)])
        values = effect[image_codes] + rng.normal(0.0, 1.0, (n, hemi.size))
        name = f"{MODEL}/sub-{s:02d}/all"
        voxel_columns[name] = values.astype(np.float32)
        coords[name] = {"hemisphere": hemi, "vertex": vertex}
        raw[s] = values.astype(np.float32)
        for roi, (h, idx) in ROI_VERTICES.items():
            cols = np.flatnonzero((hemi == h) & np.isin(vertex, idx))
            roi_name = f"{MODEL}/sub-{s:02d}/{roi}"
            voxel_columns[roi_name] = values[:, cols].astype(np.float32)
            coords[roi_name] = {"hemisphere": hemi[cols], "vertex": vertex[cols]}
    output = str(tmp_path / "responses")
    error_row = 3
    keys = write_synthetic_output(output, {}, voxel_columns, n_shards=n_shards, error_rows=[error_row],
                                  coords=coords)
    labels_path = tmp_path / "labels.csv"
    lines = ["key,label"] + [f"{keys[i]},{CATEGORIES[codes[i]]}" for i in range(n_labelled)]
    lines += ["ghost-1,animals", "ghost-2,small objects"]  # keys the responses do not have
    labels_path.write_text("\n".join(lines) + "\n")
    truth = {"raw": raw, "codes": codes, "error_row": error_row, "hemi": hemi, "vertex": vertex,
             "subjects": tuple(subjects)}
    return output, str(labels_path), truth


def expected_tables(truth) -> dict[tuple[str, str], dict[str, float]]:
    """(subject label, ROI) -> category -> share, recomputed straight from the arrays."""
    used = np.ones(len(truth["codes"]), dtype=bool)
    used[truth["error_row"]] = False
    codes = truth["codes"][used]
    hemi, vertex = truth["hemi"], truth["vertex"]
    means = {}
    for s in truth["subjects"]:
        x = truth["raw"][s][: len(truth["codes"])][used].astype(np.float64)
        means[s] = np.stack([x[codes == c].mean(axis=0) for c in range(len(CATEGORIES))])
    means["mean"] = np.mean([means[s] for s in truth["subjects"]], axis=0)
    rois = {"FFA": (("lh", ROI_VERTICES["FFA-1"][1]), ("rh", ROI_VERTICES["FFA-2"][1])),
            "PPA": (("lh", ROI_VERTICES["PPA"][1]),)}
    out = {}
    for who, m in means.items():
        pref = np.argmax(m, axis=0)
        label = who if who == "mean" else f"sub-{who:02d}"
        for roi, parts in rois.items():
            member = np.zeros(hemi.size, dtype=bool)
            for h, idx in parts:
                member |= (hemi == h) & np.isin(vertex, idx)
            out[(label, roi)] = {c: float(np.mean(pref[member] == i)) for i, c in enumerate(CATEGORIES)}
    return out, means


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tripartite")
    output, labels, truth = make_dataset(tmp)
    out = tmp / "out"
    rc = main(["experiment", "tripartite", "--responses", output, "--labels", labels, "--out", str(out),
               "--permutations", "199", "--seed", "1"])
    assert rc == 0
    return output, labels, truth, out


def test_shares_match_independent_recomputation(planted):
    _, _, truth, out = planted
    table = pq.read_table(out / "tripartite.parquet").to_pylist()
    expected, _ = expected_tables(truth)
    got = {(r["subject"], r["roi"], r["category"]): r for r in table}
    assert {(r["subject"], r["roi"]) for r in table} == set(expected)
    for (who, roi), shares in expected.items():
        for category, share in shares.items():
            row = got[(who, roi, category)]
            assert row["share"] == pytest.approx(share, abs=1e-12)
            assert row["n_preferring"] == round(share * row["n_vertices"])
    # planted: every FFA vertex prefers animals, every PPA vertex big objects
    assert got[("mean", "FFA", "animals")]["share"] == 1.0
    assert got[("mean", "PPA", "big objects")]["share"] == 1.0
    assert got[("mean", "FFA", "animals")]["n_vertices"] == 20
    error_category = CATEGORIES[truth["codes"][truth["error_row"]]]
    for category in CATEGORIES:  # the labelled error row is left out of its category
        n_images = N_PER_CATEGORY - (category == error_category)
        assert got[("mean", "FFA", category)]["n_images"] == n_images


def test_preferences_per_vertex(planted):
    _, _, truth, out = planted
    prefs = pq.read_table(out / "preferences.parquet").to_pandas()
    _, means = expected_tables(truth)
    for who in ("sub-01", "sub-02", "mean"):
        rows = prefs[prefs.subject == who]
        assert len(rows) == N_LH + N_RH
        assert list(rows.hemisphere) == list(truth["hemi"]) and list(rows.vertex) == list(truth["vertex"])
        key = who if who == "mean" else int(who[-2:])
        assert list(rows.preferred) == [CATEGORIES[i] for i in np.argmax(means[key], axis=0)]
        for i, category in enumerate(CATEGORIES):
            np.testing.assert_allclose(rows[f"mean:{category}"], means[key][i], rtol=1e-6, atol=1e-6)


def test_labels_reported_and_pvalues(planted, capsys):
    _, _, _, out = planted
    summary = json.loads((out / "summary.json").read_text())
    report = summary["labels"]
    assert report["table_keys_missing_from_responses"] == 2
    assert report["first_missing"] == ["ghost-1", "ghost-2"]
    assert report["response_rows_without_label"] == N_EXTRA
    assert report["labelled_error_rows"] == 1
    assert summary["rois"]["FFA"]["top_category"] == "animals"
    assert summary["rois"]["FFA"]["parts"] == ["FFA-1", "FFA-2"]
    assert summary["rois"]["PPA"]["percent"]["big objects"] == 100.0
    # Planted preferences are far beyond label shuffles (p >= 1/200 with 199 permutations).
    assert 1 / 200 <= summary["rois"]["FFA"]["p_value"] < 0.05
    assert 1 / 200 <= summary["rois"]["PPA"]["p_value"] < 0.05


def test_console_lines(tmp_path, capsys):
    output, labels, _ = make_dataset(tmp_path, seed=2, subjects=(1,), n_shards=2)
    assert main(["experiment", "tripartite", "--responses", output, "--labels", labels,
                 "--out", str(tmp_path / "o"), "--permutations", "20", "--rois", "PPA", "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "2 table keys not in the responses" in text
    assert f"{N_EXTRA} response rows without a label left out" in text
    assert re.search(r"PPA: animals 0\.0%, big objects 100\.0%, small objects 0\.0% \(p=0\.0\d+\)", text), text
    assert str(tmp_path / "o") in text


def test_shuffled_labels_give_large_pvalues(tmp_path):
    """Planted data: p small; the same data with shuffled labels: p roughly uniform, mostly large."""
    output, labels, _ = make_dataset(tmp_path, seed=3, subjects=(1,), n_shards=1)
    table = read_label_table(labels)
    planted_result = tripartite.analyse(output, table, n_permutations=99, seed=0)
    assert all(r["p_value"] < 0.05 for r in planted_result.rows if r["top"])
    keys = [k for (_, k) in table.by_key if not k.startswith("ghost")]
    values = [table.by_key[(None, k)] for k in keys]
    pvalues = []
    for shuffle in range(8):
        np.random.default_rng(shuffle).shuffle(values)
        path = tmp_path / f"shuffled-{shuffle}.csv"
        path.write_text("key,label\n" + "\n".join(f"{k},{v}" for k, v in zip(keys, values)) + "\n")
        result = tripartite.analyse(output, read_label_table(str(path)), n_permutations=99, seed=shuffle)
        pvalues += [r["p_value"] for r in result.rows if r["top"] and r["subject"] == "mean"]
    assert np.median(pvalues) > 0.2 and sum(p < 0.05 for p in pvalues) <= 2, pvalues


def test_figures_are_pngs(planted):
    _, _, _, out = planted
    for name in ("tripartite_surface.png", "tripartite_shares.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert (out / "tripartite_surface.svg").read_text().lstrip().startswith("<?xml")


def test_a_rerun_without_figures_removes_the_earlier_figures(planted, tmp_path, capsys):
    import shutil

    output, labels, _, earlier = planted
    out = tmp_path / "again"
    shutil.copytree(earlier, out)
    (out / "notes.txt").write_text("kept")
    capsys.readouterr()
    assert main(["experiment", "tripartite", "--responses", output, "--labels", labels, "--out", str(out),
                 "--permutations", "0", "--rois", "PPA", "--no-figures"]) == 0
    console = capsys.readouterr().out
    assert "removed 4 files of an earlier tripartite run" in console
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "preferences.parquet", "summary.json",
                                                     "tripartite.parquet"]


def test_label_column_picks_the_category_column(tmp_path, capsys):
    output, labels, _ = make_dataset(tmp_path, subjects=(1,), n_shards=1)
    renamed = tmp_path / "categories.csv"
    renamed.write_text(Path(labels).read_text().replace("key,label", "key,category", 1))
    args = ["experiment", "tripartite", "--responses", output, "--labels", str(renamed), "--out",
            str(tmp_path / "o"), "--permutations", "0", "--no-figures"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "has no column 'label' (it has key, category)" in err and "--label-column category" in err
    assert main([*args, "--label-column", "category"]) == 0


def test_streaming_equals_one_shard(tmp_path):
    """Per-shard accumulation gives the same table as one shard of everything."""
    a, labels_a, _ = make_dataset(tmp_path / "a", seed=4, subjects=(1,), n_shards=1)
    b, labels_b, _ = make_dataset(tmp_path / "b", seed=4, subjects=(1,), n_shards=5)
    ra = tripartite.analyse(a, read_label_table(labels_a), n_permutations=0)
    rb = tripartite.analyse(b, read_label_table(labels_b), n_permutations=0)
    assert [(r["roi"], r["category"], r["share"]) for r in ra.rows] == \
           [(r["roi"], r["category"], r["share"]) for r in rb.rows]
    assert all(math.isnan(r["p_value"]) for r in ra.rows)


@pytest.mark.parametrize("extra, labels_text, message", [
    (["--subjects", "7"], None, "subject 7 is not in the fsaverage responses"),
    (["--rois", "EBA"], None, "ROI 'EBA' is not in the fsaverage metadata"),
    ([], "key,label\n{k0},animals\n{k1},animals\n", "at least 2 categories"),
    (["--categories", "animals", "plants"], "key,label\n{k0},animals\n{k1},big\nnope,plants\n",
     "category 'plants' has no images"),
    (["--categories", "animals"], None,
     "--categories kept animals of the 3 labels of"),
])
def test_errors(tmp_path, capsys, extra, labels_text, message):
    output, labels, _ = make_dataset(tmp_path, subjects=(1,), n_shards=1)
    if labels_text is not None:
        labels = tmp_path / "l.csv"
        labels.write_text(labels_text.format(k0=image_key(0), k1=image_key(1)))
    rc = main(["experiment", "tripartite", "--responses", output, "--labels", str(labels),
               "--out", str(tmp_path / "o"), "--permutations", "0", "--no-figures", *extra])
    assert rc != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_no_fsaverage_columns(tmp_path, capsys):
    output = str(tmp_path / "r")
    keys = write_synthetic_output(output, {"fmri-nsd-fwrf/sub-01/V1:mean": np.zeros(4)}, n_shards=1)
    labels = tmp_path / "l.csv"
    labels.write_text("key,label\n" + "\n".join(f"{k},{'ab'[i % 2]}" for i, k in enumerate(keys)) + "\n")
    rc = main(["experiment", "tripartite", "--responses", output, "--labels", str(labels),
               "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "no fmri-nsd_fsaverage-vit_b_32 responses columns" in capsys.readouterr().err


def test_a_label_table_naming_other_shards_says_so():
    from berg_scale.experiments.labels import LabelTable, match_labels

    table = LabelTable("labels.csv", {("000000", "a"): "x", ("000000", "b"): "y", ("000000", "ghost"): "y"},
                       uses_shard=True)
    match = match_labels(table, ["shard-000000", "shard-000000"], ["a", "b"], [True, True])
    assert match.missing_in_responses == ["a", "b", "ghost"]
    assert match.other_shard == ("a", "000000", "shard-000000") and match.other_shard_count == 2
    text = match.describe()
    assert "2 of them are in the responses under another shard (first: 'a', shard '000000' in the table" in text
    assert match.report()["table_keys_in_another_shard"] == 2
    right = LabelTable("labels.csv", {("shard-000000", "a"): "x"}, uses_shard=True)
    assert match_labels(right, ["shard-000000"], ["a"], [True]).other_shard is None
