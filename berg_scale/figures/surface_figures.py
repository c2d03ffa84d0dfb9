"""A publication surface map of any fsaverage column, on nilearn's bundled fsaverage5 mesh.

fsaverage5 is the first 10,242 vertices of each fsaverage hemisphere, so values of vertex
v < 10,242 are drawn at fsaverage5 vertex v and higher vertices are not drawn.

Faces are coloured here rather than by nilearn's threshold: a face takes the value of the
vertices that have data (mean for continuous maps, the middle code for categories) when at
least two of its three vertices have one, and is otherwise drawn in the "no data" grey that
the legend shows, lightly shaded by sulcal depth. Thresholding instead lets missing faces
fall through to the black-and-white sulcal map, and because the high vertex numbers of an
icosahedral mesh lie along the seams of the coarser mesh, a column that lacks a range of
vertex numbers (a partial hemisphere) then looks like dark speckle across the whole
hemisphere, in colours the legend does not explain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.exports.optional import require

MISSING_GREY = "#c8c8c8"
SIDES = (("left", "lh"), ("right", "rh"))
MESH = "fsaverage5"
MESH_VERTICES = 10_242
DIVERGING_CMAPS = ("RdBu_r", "RdBu", "coolwarm", "bwr", "seismic", "PuOr", "PuOr_r", "BrBG", "PiYG")


def surface_map(
    hemispheres: Mapping[str, np.ndarray],
    *,
    categories: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    cmap: str = "RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "response",
    views: Sequence[str] = ("lateral", "ventral"),
    title: str | None = None,
    legend_title: str | None = None,
    missing_label: str = "no data",
    surface: str = "inflated",
) -> Any:
    """A matplotlib figure: one row per view, left and right hemisphere side by side.

    `hemispheres` maps "left"/"right" (or "lh"/"rh") to per-vertex values of fsaverage or
    fsaverage5 length (as from `berg_scale.exports.hemisphere_arrays`), NaN where there is
    no value. With `categories`, values are integer codes 0..n-1 into `categories` and the
    figure gets a legend; otherwise a colour bar labelled `colorbar_label` (give the unit).
    """
    require("nilearn", "surface_map")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from nilearn import datasets

    data = {side: _hemisphere(hemispheres, side, short) for side, short in SIDES}
    mesh = datasets.load_fsaverage(MESH)
    sulcal = datasets.load_fsaverage_data(MESH, data_type="sulcal")
    colour_of, legend, norm, colour_map = _colouring(data, categories, colours, cmap, vmin, vmax)
    views = list(views)
    fig, axes = plt.subplots(len(views), 2, figsize=(7.0, 2.4 * len(views) + 1.2),
                             subplot_kw={"projection": "3d"}, squeeze=False)
    for col, (side, _) in enumerate(SIDES):
        faces = np.asarray(mesh[surface].parts[side].faces)
        face_rgba = face_colours(data[side], faces, np.asarray(sulcal.data.parts[side]), colour_of)
        for row, view in enumerate(views):
            ax = axes[row, col]
            _draw(mesh[surface].parts[side], side, view, ax, fig, face_rgba)
            ax.set_title(f"{side} hemisphere, {view}", fontsize=10, y=0.92)
    notes = [f"{side}: {int(np.isnan(data[side]).sum()):,} of {MESH_VERTICES:,} vertices without data"
             for side, _ in SIDES if np.isnan(data[side]).any()]
    if categories is not None:
        handles = [Patch(facecolor=c, edgecolor="none", label=name) for c, name in legend]
        handles.append(Patch(facecolor=MISSING_GREY, edgecolor="none", label=missing_label))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=10,
                   title=legend_title, title_fontsize=10)
        bottom = 0.1
    else:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colour_map), ax=axes, orientation="horizontal",
                           fraction=0.05, pad=0.02, shrink=0.6, aspect=30)
        bar.set_label(colorbar_label, fontsize=10)
        bar.ax.tick_params(labelsize=9)
        bottom = 0.16
    if title:
        fig.suptitle(title, fontsize=11, y=0.99)
    if notes:
        fig.text(0.5, 0.945, f"grey: {missing_label} ({'; '.join(notes)})", ha="center", va="top", fontsize=8)
    if categories is not None:
        fig.subplots_adjust(left=0.0, right=1.0, top=0.9, bottom=bottom, wspace=0.0, hspace=0.0)
    return fig


def face_colours(values: np.ndarray, faces: np.ndarray, sulcal: np.ndarray, colour_of: Any) -> np.ndarray:
    """(n_faces, 4) RGBA: data colour where >= 2 of a face's vertices have data, else shaded grey."""
    corner = values[faces]  # (n_faces, 3)
    present = ~np.isnan(corner)
    with_data = present.sum(axis=1) >= 2
    rgba = np.empty((faces.shape[0], 4), dtype=np.float64)
    depth = sulcal[faces].mean(axis=1)
    span = float(np.ptp(depth)) or 1.0
    shade = 0.86 - 0.14 * (depth - depth.min()) / span  # light grey, darker in sulci
    rgba[:, :3] = shade[:, None]
    rgba[:, 3] = 1.0
    if with_data.any():
        rgba[with_data] = colour_of(corner[with_data])
    return rgba


def _colouring(data: dict[str, np.ndarray], categories: Sequence[str] | None, colours: Sequence[str] | None,
               cmap: str, vmin: float | None, vmax: float | None) -> tuple[Any, list, Any, Any]:
    import matplotlib
    from matplotlib.colors import Normalize, TwoSlopeNorm, to_rgba_array

    if categories is not None:
        n = len(categories)
        palette = list(colours) if colours is not None else _palette(n)
        if len(palette) < n:
            raise BergScaleError(f"{n} categories but {len(palette)} colours")
        table = to_rgba_array(palette[:n])
        for side, values in data.items():
            codes = values[~np.isnan(values)]
            if codes.size and (np.any(codes != np.round(codes)) or codes.min() < 0 or codes.max() >= n):
                raise BergScaleError(f"{side} values must be category codes 0..{n - 1} (or NaN)")

        def colour_of(corner: np.ndarray) -> np.ndarray:
            # NaN sorts last: with three codes take the middle one, with two the smaller.
            ordered = np.sort(corner, axis=1)
            n_present = (~np.isnan(corner)).sum(axis=1)
            code = np.where(n_present == 3, ordered[:, 1], ordered[:, 0])
            return table[code.astype(np.int64)]

        return colour_of, list(zip(palette[:n], categories)), None, None
    finite = np.concatenate([v[np.isfinite(v)] for v in data.values()])
    if finite.size == 0:
        raise BergScaleError("the surface map has no finite values to draw")
    lo = float(np.min(finite)) if vmin is None else float(vmin)
    hi = float(np.max(finite)) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0
    # A diverging map centred on zero when the data have both signs and no limits are given.
    diverging = vmin is None and vmax is None and lo < 0 < hi and cmap in DIVERGING_CMAPS
    if diverging:
        bound = max(-lo, hi)
        norm: Normalize = TwoSlopeNorm(0.0, -bound, bound)
    else:
        norm = Normalize(lo, hi)
    colour_map = matplotlib.colormaps[cmap]

    def continuous_colour_of(corner: np.ndarray) -> np.ndarray:
        return np.asarray(colour_map(norm(np.nanmean(corner, axis=1))))

    return continuous_colour_of, [], norm, colour_map


def _palette(n: int) -> list[str]:
    import matplotlib
    from matplotlib.colors import to_hex

    base = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    if n <= len(base):
        return base[:n]
    cmap = matplotlib.colormaps["tab20"]
    return [to_hex(cmap(i % 20)) for i in range(n)]


def _hemisphere(hemispheres: Mapping[str, np.ndarray], side: str, short: str) -> np.ndarray:
    values = hemispheres.get(side, hemispheres.get(short))
    if values is None:
        raise BergScaleError(f"surface_map needs values for the {side} hemisphere (key {side!r} or {short!r})")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < MESH_VERTICES:
        raise BergScaleError(
            f"{side} hemisphere: expected one value per fsaverage or fsaverage5 vertex "
            f"(at least {MESH_VERTICES:,}), got shape {array.shape}"
        )
    return array[:MESH_VERTICES].copy()


def _draw(part: Any, side: str, view: str, ax: Any, fig: Any, face_rgba: np.ndarray) -> None:
    from nilearn import plotting

    plotting.plot_surf(part, hemi=side, view=view, axes=ax, figure=fig, engine="matplotlib", colorbar=False)
    collection = ax.collections[-1]
    collection.set_facecolors(face_rgba)
    collection.set_edgecolors(face_rgba)
    ax.set_box_aspect(None, zoom=1.3)  # nilearn leaves a wide margin around the mesh
    ax.set_rasterized(True)  # meshes as bitmaps keep SVGs small; text stays vector


def save_figure(fig: Any, stem: str, formats: Sequence[str] = ("png", "svg"), dpi: int = 200) -> list[str]:
    """Write `stem.<format>` for each format, creating the stem's folder first (as `figures/surface`
    asks for `figures/`); returns the paths."""
    import os

    parent = os.path.dirname(os.fspath(stem))
    if parent:
        os.makedirs(parent, exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths
