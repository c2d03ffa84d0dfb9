"""Labelled arrays: unique neuroid and image indexes, so `sel`, `align` and `concat` work.

Whole-brain fsaverage columns list vertex 5 of both hemispheres; the values are planted so
that every (hemisphere, vertex) carries a recognisable number.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from berg_scale.errors import BergScaleError
from berg_scale.exports import to_xarray
from berg_scale.io.results import readout_xarray
from berg_scale.rnc.synthetic import image_key, shard_name, write_synthetic_output

FSAV = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"
N_IMAGES, N_LH, N_RH = 7, 12, 10


def planted(subject: int, hemi: np.ndarray, vertex: np.ndarray) -> np.ndarray:
    """value[image, column] = 1000 * subject + 100 * (rh) + vertex + image / 100."""
    site = 1000 * subject + 100 * (hemi == "rh") + vertex
    return (site[None, :] + np.arange(N_IMAGES)[:, None] / 100).astype(np.float32)


@pytest.fixture(scope="module")
def fsaverage_output(tmp_path_factory):
    hemi = np.array(["lh"] * N_LH + ["rh"] * N_RH)
    vertex = np.concatenate([np.arange(N_LH), np.arange(N_RH)])
    ffa = np.flatnonzero(((hemi == "lh") & (vertex < 4)) | ((hemi == "rh") & (vertex >= 6)))
    columns, coords = {}, {}
    for subject in (1, 2):
        values = planted(subject, hemi, vertex)
        columns[f"{FSAV}/sub-0{subject}/all"] = values
        coords[f"{FSAV}/sub-0{subject}/all"] = {"hemisphere": hemi, "vertex": vertex}
    columns[f"{FSAV}/sub-01/FFA-1"] = planted(1, hemi[ffa], vertex[ffa])
    coords[f"{FSAV}/sub-01/FFA-1"] = {"hemisphere": hemi[ffa], "vertex": vertex[ffa]}
    output = str(tmp_path_factory.mktemp("xr") / "out")
    keys = write_synthetic_output(output, {}, columns, n_shards=2, coords=coords, error_rows=[2])
    return output, keys


def test_whole_brain_vertex_selection_is_unambiguous(fsaverage_output):
    output, keys = fsaverage_output
    da = readout_xarray(output, f"{FSAV}/sub-01/all")
    assert da.dims == ("image", "neuroid")
    assert da.indexes["neuroid"].is_unique and list(da.indexes["neuroid"].names) == ["hemisphere", "vertex"]
    one = da.sel(hemisphere="rh", vertex=5)
    assert one.dims == ("image",)
    ok_rows = [i for i in range(N_IMAGES) if i != 2]
    np.testing.assert_allclose(one.values, 1105 + np.array(ok_rows) / 100, rtol=1e-6)
    assert one.coords["subject"] == 1 and str(one.coords["roi"].values) == "all"
    np.testing.assert_allclose(da.sel(neuroid=("lh", 5)).values, 1005 + np.array(ok_rows) / 100, rtol=1e-6)
    # vertex number alone: both hemispheres, each labelled with its hemisphere
    both = da.sel(vertex=5)
    assert both.sizes["hemisphere"] == 2 and sorted(both.coords["hemisphere"].values) == ["lh", "rh"]
    assert list(da.coords["image"].values) == [keys[i] for i in ok_rows]
    assert set(da.coords["shard"].values) == {shard_name(0), shard_name(1)}


def test_subjects_align_on_the_common_surface(fsaverage_output):
    output, _ = fsaverage_output
    first = readout_xarray(output, f"{FSAV}/sub-01/all")
    second = readout_xarray(output, f"{FSAV}/sub-02/all").isel(neuroid=slice(None, None, -1))
    a, b = xr.align(first, second)
    assert a.sizes == b.sizes == first.sizes
    np.testing.assert_allclose((b - a).values, 1000.0, rtol=1e-6)  # same site, subject offset only
    ffa = readout_xarray(output, f"{FSAV}/sub-01/FFA-1")
    a, b = xr.align(first, ffa)  # inner join: the ROI's vertices
    assert a.sizes["neuroid"] == ffa.sizes["neuroid"] == 8
    np.testing.assert_array_equal(a.values, b.values)
    stacked = xr.concat([first, readout_xarray(output, f"{FSAV}/sub-02/all")], dim="subject")
    assert stacked.dims == ("subject", "image", "neuroid") and list(stacked.coords["subject"].values) == [1, 2]


def test_combined_columns_keep_a_unique_index(fsaverage_output):
    output, _ = fsaverage_output
    names = [f"{FSAV}/sub-01/all", f"{FSAV}/sub-02/all", f"{FSAV}/sub-01/FFA-1"]
    combined = to_xarray(output, names)
    assert list(combined.indexes["neuroid"].names) == ["subject", "roi", "hemisphere", "vertex"]
    assert combined.indexes["neuroid"].is_unique and combined.sizes["neuroid"] == 2 * (N_LH + N_RH) + 8
    value = combined.sel(subject=2, roi="all", hemisphere="lh", vertex=3)
    np.testing.assert_allclose(value.values[0], 2003.0, rtol=1e-6)
    with pytest.raises(BergScaleError, match="listed twice"):
        to_xarray(output, [names[0], names[0]])


def test_fwrf_voxels_carry_volume_indices_and_affine(tmp_path):
    n = 5
    values = np.arange(4 * n, dtype=np.float32).reshape(4, n)
    ijk = np.array([[1, 2, 3], [1, 2, 4], [2, 0, 0], [3, 3, 3], [4, 1, 2]])
    output = str(tmp_path / "out")
    write_synthetic_output(output, {}, {f"{FWRF}/sub-01/V1": values, f"{FWRF}/sub-02/V1": values + 100},
                           ncsnr={f"{FWRF}/sub-01/V1": np.linspace(0, 1, n), f"{FWRF}/sub-02/V1": np.ones(n)},
                           n_shards=1)
    path = tmp_path / "out" / "readouts.json"
    readouts = json.loads(path.read_text())
    affine = [[1.8, 0, 0, -72], [0, 1.8, 0, -90], [0, 0, 1.8, -60], [0, 0, 0, 1]]
    for entry in readouts["columns"]:
        entry["coords"]["volume_index"] = ijk.tolist()
        entry["attrs"] = {"volume_shape": [81, 104, 83], "affine": affine}
    path.write_text(json.dumps(readouts))
    da = readout_xarray(output, f"{FWRF}/sub-01/V1")
    assert da.dims == ("image", "neuroid")
    assert list(da.indexes["neuroid"].names) == ["subject", "roi", "voxel"]
    np.testing.assert_array_equal(np.stack([da.coords[c].values for c in "ijk"], axis=1), ijk)
    np.testing.assert_allclose(da.attrs["affine"], affine)
    np.testing.assert_allclose(da.coords["ncsnr"].values, np.linspace(0, 1, n), rtol=1e-6)
    assert da.sel(subject=1, roi="V1", voxel=3).dims == ("image",)
    assert da.sel(voxel=3).sizes["neuroid"] == 1  # subject and ROI stay part of the identity
    combined = to_xarray(output, [f"{FWRF}/sub-01/V1", f"{FWRF}/sub-02/V1"])
    assert combined.sizes["neuroid"] == 2 * n and combined.indexes["neuroid"].is_unique
    np.testing.assert_allclose(combined.sel(subject=2, roi="V1", voxel=0).values, values[:, 0] + 100)
    a, _ = xr.align(readout_xarray(output, f"{FWRF}/sub-01/V1"), readout_xarray(output, f"{FWRF}/sub-02/V1"))
    assert a.sizes["neuroid"] == 0  # different subjects' native voxels are different neuroids


def test_keys_repeated_across_shards_get_a_shard_key_index(tmp_path):
    output = str(tmp_path / "out")
    values = np.arange(8, dtype=np.float32).reshape(4, 2)
    write_synthetic_output(output, {}, {f"{FWRF}/sub-01/V1": values}, n_shards=2)
    # rewrite the second shard's keys to repeat the first shard's
    import pyarrow as pa
    import pyarrow.parquet as pq

    second = tmp_path / "out" / "responses" / f"{shard_name(1)}.parquet"
    table = pq.read_table(second)
    table = table.set_column(0, table.schema.field("key"), pa.array([image_key(0), image_key(1)]))
    pq.write_table(table, second)
    da = readout_xarray(output, f"{FWRF}/sub-01/V1")
    assert list(da.indexes["image"].names) == ["shard", "key"] and da.indexes["image"].is_unique
    np.testing.assert_array_equal(da.sel(shard=shard_name(1), key=image_key(0)).values, values[2])
