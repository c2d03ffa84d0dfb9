"""fsaverage columns as per-hemisphere arrays and as nilearn surface images.

A column stores its vertices as (hemisphere, vertex) pairs, possibly a selection. Surface
tools want one array per hemisphere with a value for every mesh vertex, so the column is
scattered into full-length arrays with NaN where the column has no value. fsaverage meshes
are nested icosahedra: fsaverageN (N = 3..6) is the first 10 * 4**N + 2 vertices of each
fsaverage hemisphere, so a lower-resolution mesh keeps the first vertices and drops the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.exports.optional import require
from berg_scale.io.storage import StorageOptions

MESH_VERTICES = {
    "fsaverage": 163_842,
    "fsaverage6": 40_962,
    "fsaverage5": 10_242,
    "fsaverage4": 2_562,
    "fsaverage3": 642,
}
HEMISPHERES = {"lh": "left", "rh": "right"}


def mesh_vertices(mesh: str) -> int:
    if mesh not in MESH_VERTICES:
        raise BergScaleError(f"unknown mesh {mesh!r}; choose one of {', '.join(MESH_VERTICES)}")
    return MESH_VERTICES[mesh]


def hemisphere_arrays(
    values: np.ndarray,
    hemisphere: Sequence[str],
    vertex: Sequence[int],
    mesh: str = "fsaverage",
    fill: float = np.nan,
) -> dict[str, np.ndarray]:
    """{"left": (..., n_mesh), "right": (..., n_mesh)} from column values (..., n_columns).

    Leading axes (images, categories) are kept; vertices beyond the mesh are dropped and
    mesh vertices the column lacks hold `fill`.
    """
    values = np.asarray(values)
    hemi = np.asarray(hemisphere).astype(str)
    vert = np.asarray(vertex, dtype=np.int64)
    if hemi.shape != vert.shape or values.shape[-1] != vert.size:
        raise BergScaleError(
            f"{values.shape[-1]} values per image but {vert.size} vertex coordinates: the readouts.json "
            "coordinates do not belong to these responses"
        )
    unknown = sorted(set(hemi.tolist()) - set(HEMISPHERES))
    if unknown:
        raise BergScaleError(f"unknown hemisphere {unknown[0]!r} (expected lh or rh)")
    n = mesh_vertices(mesh)
    dtype = np.result_type(values.dtype, np.float32) if np.isnan(fill) else values.dtype
    out = {}
    for short, side in HEMISPHERES.items():
        full = np.full((*values.shape[:-1], n), fill, dtype=dtype)
        keep = (hemi == short) & (vert < n) & (vert >= 0)
        if len(np.unique(vert[keep])) != int(keep.sum()):
            raise BergScaleError(f"the column lists a {short} vertex twice")
        full[..., vert[keep]] = values[..., keep]
        out[side] = full
    return out


def surface_arrays(
    output: str,
    column: str,
    mesh: str = "fsaverage",
    reduce: str | Callable[[np.ndarray], np.ndarray] | None = None,
    keys: Sequence[str] | None = None,
    storage: StorageOptions | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image keys, {"left", "right"} arrays) of a committed fsaverage column.

    Without `reduce` the arrays are (n_images, n_mesh); `reduce="mean"` (or a function of
    the (n_images, n_columns) matrix returning one value per column) gives (n_mesh,).
    `keys` keeps those images only, in that order.
    """
    from berg_scale.io.results import column_info, read_column

    info = column_info(output, column, storage)
    coords = info.get("coords") or {}
    if "hemisphere" not in coords or "vertex" not in coords:
        raise BergScaleError(f"{column} has no hemisphere/vertex coordinates: not an fsaverage responses column")
    all_keys, _, values = read_column(output, column, True, storage)
    if keys is not None:
        position = {k: i for i, k in enumerate(all_keys.tolist())}
        missing = [k for k in keys if k not in position]
        if missing:
            raise BergScaleError(f"{len(missing)} keys are not among {column}'s committed images, e.g. {missing[0]!r}")
        rows = np.array([position[k] for k in keys], dtype=np.int64)
        all_keys, values = all_keys[rows], values[rows]
    if reduce is not None:
        function = {"mean": lambda x: np.nanmean(x, axis=0), "median": lambda x: np.nanmedian(x, axis=0)}.get(
            reduce, reduce) if isinstance(reduce, str) else reduce
        if isinstance(function, str):
            raise BergScaleError(f"reduce must be 'mean', 'median' or a function, got {reduce!r}")
        values = np.asarray(function(values.astype(np.float64)))
    return all_keys, hemisphere_arrays(values, coords["hemisphere"], coords["vertex"], mesh)


def to_surface_image(hemispheres: Mapping[str, np.ndarray], mesh: str = "fsaverage5",
                     surface: str = "pial") -> Any:
    """A `nilearn.surface.SurfaceImage` on one of nilearn's fsaverage meshes.

    `hemispheres` holds (n_mesh,) or (n_samples, n_mesh) arrays per side (as from
    `hemisphere_arrays`); longer arrays are cut to the mesh. `surface` picks the mesh
    geometry ("pial", "white", "inflated", "sphere", "flat"). nilearn bundles fsaverage5;
    other meshes are downloaded by nilearn on first use.
    """
    require("nilearn", "to_surface_image")
    from nilearn import datasets
    from nilearn.surface import SurfaceImage

    n = mesh_vertices(mesh)
    data = {}
    for side in ("left", "right"):
        if side not in hemispheres:
            raise BergScaleError(f"to_surface_image needs a {side!r} array")
        array = np.asarray(hemispheres[side])
        if array.shape[-1] < n:
            raise BergScaleError(f"the {side} array has {array.shape[-1]} vertices, fewer than {mesh}'s {n}")
        array = array[..., :n]
        data[side] = array.T if array.ndim == 2 else array
    meshes = datasets.load_fsaverage(mesh)
    if surface not in meshes or surface == "description":
        raise BergScaleError(f"nilearn's {mesh} has no {surface!r} surface")
    return SurfaceImage(mesh=meshes[surface], data=data)
