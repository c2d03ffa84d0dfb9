"""Labelled `xarray.DataArray`s with unique indexes, so `sel`, `align` and `concat` behave.

A whole-brain fsaverage column holds vertex 5 of the left and of the right hemisphere;
indexing it by vertex number alone makes `sel(vertex=5)` ambiguous and `xr.align` fail.
Here fMRI columns put their measurement sites on a "neuroid" dim (the name the field's
assembly tools use) with a MultiIndex that identifies a site:

* fsaverage: (hemisphere, vertex). fsaverage is a common space, so the same index in two
  subjects is the same surface location and subjects align directly; subject and ROI
  label are scalar coordinates.
* fwRF: (subject, roi, voxel), voxel being the position in the ROI's column; voxels are
  subject-native, so subject and ROI are part of the identity. When the metadata has the
  ROI mask, the volume indices (i, j, k) come along as coordinates and the affine as an
  attribute.

Images are indexed by key, or by (shard, key) where keys repeat across shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.exports.optional import require
from berg_scale.io.storage import StorageOptions

NEUROID = "neuroid"
FSAVERAGE_LEVELS = ("hemisphere", "vertex")
FWRF_LEVELS = ("subject", "roi", "voxel")
COMBINED_FSAVERAGE_LEVELS = ("subject", "roi", "hemisphere", "vertex")
ATTR_KEYS = ("model_id", "subject", "kind", "dtype")


def column_label(name: str) -> str:
    """The selection label of a column name `<model>/sub-SS/<label>[:mean]` (e.g. "FFA-1")."""
    return name.split(":")[0].rsplit("/", 1)[-1]


def labelled_column(keys: np.ndarray, shards: np.ndarray, values: np.ndarray, info: dict[str, Any]) -> Any:
    """One column's values as a DataArray; `info` is its readouts.json description."""
    xr = require("xarray", "labelled arrays")
    pd = require("pandas", "labelled arrays")
    dims = ["image", *info.get("dims", [])]
    if len(dims) != values.ndim:
        dims = ["image", *[f"dim_{i}" for i in range(values.ndim - 1)]]
    raw = {name: np.asarray(value) for name, value in (info.get("coords") or {}).items()}
    attrs: dict[str, Any] = {key: info[key] for key in ATTR_KEYS if key in info}
    attrs["column"] = info.get("name", "")
    for key, value in (info.get("attrs") or {}).items():
        attrs[key] = np.asarray(value) if key == "affine" else value
    site = _neuroid_kind(dims, raw)
    if site is not None:
        dims[1] = NEUROID
    array = xr.DataArray(values, dims=dims, name=info.get("name"), attrs=attrs)
    array = array.assign_coords(_image_coords(xr, pd, keys, shards))
    if site is not None:
        array = array.assign_coords(_neuroid_coords(xr, pd, site, raw, values.shape[1], info))
        if site == "fsaverage":
            array = array.assign_coords(subject=int(info.get("subject", 0)), roi=column_label(info.get("name", "")))
        return array.assign_coords(_per_neuroid(raw, values.shape[1], skip={*FSAVERAGE_LEVELS, "voxel"}))
    extra: dict[str, Any] = {}
    for name, coord in raw.items():
        if coord.ndim != 1:
            continue
        if name in dims:
            extra[name] = (name, coord)
            continue
        # Extra per-element coordinates follow the axis of their length.
        for dim, size in zip(dims[1:], values.shape[1:]):
            if size == len(coord):
                extra[name] = (dim, coord)
                break
    return array.assign_coords(extra)


def to_xarray(
    output: str,
    columns: str | Sequence[str],
    status_ok_only: bool = True,
    storage: StorageOptions | None = None,
) -> Any:
    """One column, or several fMRI columns concatenated along "neuroid".

    Several fsaverage columns (subjects, ROIs) get the index (subject, roi, hemisphere,
    vertex); several fwRF columns keep (subject, roi, voxel). Only images present in every
    column are kept (an inner join on the image index).
    """
    from berg_scale.io.results import readout_xarray

    if isinstance(columns, str):
        return readout_xarray(output, columns, status_ok_only, storage)
    names = list(columns)
    if not names:
        raise BergScaleError("to_xarray needs at least one column name")
    if len(set(names)) != len(names):
        raise BergScaleError("to_xarray: a column is listed twice; list each column once")
    arrays = [readout_xarray(output, name, status_ok_only, storage) for name in names]
    if len(arrays) == 1:
        return arrays[0]
    return combine_neuroids(arrays)


def combine_neuroids(arrays: Sequence[Any]) -> Any:
    """Concatenate fMRI DataArrays along "neuroid", keeping the neuroid index unique."""
    xr = require("xarray", "labelled arrays")
    kinds = {_site_of(a) for a in arrays}
    if None in kinds or len(kinds) != 1:
        raise BergScaleError(
            "to_xarray combines fMRI columns of one model family (all fsaverage or all fwRF); "
            "read EEG or mixed columns one at a time with readout_xarray"
        )
    kind = kinds.pop()
    levels = COMBINED_FSAVERAGE_LEVELS if kind == "fsaverage" else FWRF_LEVELS
    flat = []
    for array in arrays:
        n = array.sizes[NEUROID]
        array = array.reset_index(NEUROID)
        if kind == "fsaverage":
            subject, roi = int(array.coords["subject"]), str(array.coords["roi"].values)
            array = array.drop_vars(["subject", "roi"]).assign_coords(
                subject=(NEUROID, np.full(n, subject)), roi=(NEUROID, np.full(n, roi, dtype=object))
            )
        flat.append(array)
    combined = xr.concat(flat, dim=NEUROID, join="inner", coords="different", compat="equals",
                         combine_attrs="drop_conflicts")
    combined = combined.set_index({NEUROID: list(levels)})
    if not combined.indexes[NEUROID].is_unique:
        raise BergScaleError("the columns share neuroids (same subject, ROI and site); list each column once")
    combined.name = None
    return combined


def _site_of(array: Any) -> str | None:
    if NEUROID not in array.dims:
        return None
    names = set(array.indexes[NEUROID].names)
    return "fsaverage" if "hemisphere" in names else "fwrf"


def _image_coords(xr: Any, pd: Any, keys: np.ndarray, shards: np.ndarray) -> Any:
    keys = np.asarray(keys).astype(str)
    shards = np.asarray(shards).astype(str)
    if len(set(keys.tolist())) == len(keys):
        return xr.Coordinates({"image": keys, "shard": ("image", shards)})
    index = pd.MultiIndex.from_arrays([shards, keys], names=["shard", "key"])
    if not index.is_unique:
        raise BergScaleError("the responses hold the same (shard, key) twice; the output is damaged")
    return xr.Coordinates.from_pandas_multiindex(index, "image")


def _neuroid_kind(dims: list[str], raw: dict[str, np.ndarray]) -> str | None:
    if len(dims) != 2:
        return None
    if dims[1] == "vertex" and "hemisphere" in raw and "vertex" in raw:
        return "fsaverage"
    if dims[1] == "voxel":
        return "fwrf"
    return None


def _neuroid_coords(xr: Any, pd: Any, site: str, raw: dict[str, np.ndarray], n: int, info: dict[str, Any]) -> Any:
    if site == "fsaverage":
        arrays = [raw["hemisphere"].astype(str), raw["vertex"].astype(np.int64)]
        names = list(FSAVERAGE_LEVELS)
    else:
        voxel = raw["voxel"].astype(np.int64) if "voxel" in raw else np.arange(n, dtype=np.int64)
        arrays = [np.full(n, int(info.get("subject", 0))), np.full(n, column_label(info.get("name", ""))), voxel]
        names = list(FWRF_LEVELS)
    if any(len(a) != n for a in arrays):
        raise BergScaleError(
            f"readouts.json coordinates of {info.get('name')!r} do not match its {n} values; "
            "the output's readouts.json belongs to another run"
        )
    index = pd.MultiIndex.from_arrays(arrays, names=names)
    if not index.is_unique:
        raise BergScaleError(f"readouts.json lists a neuroid of {info.get('name')!r} twice")
    return xr.Coordinates.from_pandas_multiindex(index, NEUROID)


def _per_neuroid(raw: dict[str, np.ndarray], n: int, skip: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, array in raw.items():
        if name in skip:
            continue
        if name == "volume_index" and array.ndim == 2 and array.shape == (n, 3):
            for axis, letter in enumerate("ijk"):
                out[letter] = (NEUROID, array[:, axis].astype(np.int64))
        elif array.ndim == 1 and len(array) == n:
            out[name] = (NEUROID, array)
    return out
