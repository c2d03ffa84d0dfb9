"""Figures of the tripartite analysis: preferences on the fsaverage5 surface, ROI shares as bars.

The surface uses nilearn's bundled fsaverage5 mesh (no download). fsaverage5 is the first
10,242 vertices of each fsaverage hemisphere, so vertex v < 10,242 of the responses is drawn
at fsaverage5 vertex v; vertices the responses lack are grey, vertices >= 10,242 are not drawn.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from berg_scale.experiments.tripartite import TripartiteResult


def _colours(n: int) -> list[str]:
    from berg_scale.experiments.tripartite import PALETTE

    if n <= len(PALETTE):
        return list(PALETTE[:n])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


def surface_codes(ids: np.ndarray, preferred: np.ndarray) -> dict[str, np.ndarray]:
    """hemisphere -> (10,242,) float: 0 where not in the responses, else 1 + category code."""
    from berg_scale.experiments.tripartite import FSAVERAGE5_VERTICES, split_ids

    hemi, vertex = split_ids(ids)
    out = {}
    for name in ("lh", "rh"):
        codes = np.zeros(FSAVERAGE5_VERTICES, dtype=np.float64)
        keep = (hemi == name) & (vertex < FSAVERAGE5_VERTICES)
        codes[vertex[keep]] = preferred[keep] + 1
        out[name] = codes
    return out


def _save(fig: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=200, bbox_inches="tight")
    return buffer.getvalue()


def surface_figure(result: TripartiteResult) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from nilearn import datasets, plotting

    from berg_scale.experiments.tripartite import MEAN, MISSING_GREY

    mesh = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    ids, preferred = result.preferences[MEAN][0], result.preferences[MEAN][1]
    codes = surface_codes(ids, preferred)
    colours = _colours(len(result.categories))
    cmap = ListedColormap([MISSING_GREY, *colours])
    fig, axes = plt.subplots(2, 2, figsize=(7.0, 5.0), subplot_kw={"projection": "3d"})
    for col, (hemi, side) in enumerate((("lh", "left"), ("rh", "right"))):
        for row, view in enumerate(("lateral", "ventral")):
            ax = axes[row, col]
            # Faces of vertices without responses (code 0) fall under the threshold and show
            # the grey sulcal shading; the others take their category's colour.
            plotting.plot_surf(
                mesh["inflated"].parts[side], surf_map=codes[hemi], bg_map=sulcal.data.parts[side],
                hemi=side, view=view, cmap=cmap, vmin=-0.5, vmax=len(colours) + 0.5, threshold=0.5,
                avg_method="median", colorbar=False, axes=ax, figure=fig, engine="matplotlib",
            )
            ax.set_box_aspect(None, zoom=1.3)  # nilearn leaves a wide margin around the mesh
            ax.set_rasterized(True)  # keeps the SVG small: the meshes are bitmaps, text stays vector
            ax.set_title(f"{'left' if hemi == 'lh' else 'right'} hemisphere, {view}", fontsize=10, y=0.92)
    handles = [Patch(facecolor=c, edgecolor="none", label=name) for c, name in zip(colours, result.categories)]
    handles.append(Patch(facecolor=MISSING_GREY, edgecolor="none", label="not in responses"))  # sulcal grey
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=10,
               title="preferred category (largest mean response)", title_fontsize=10)
    who = "subject average" if len(result.subjects) > 1 else f"sub-{result.subjects[0]:02d}"
    fig.suptitle(f"Category preference per vertex, fsaverage5 ({who}, subjects "
                 f"{', '.join(map(str, result.subjects))})", fontsize=11)
    fig.subplots_adjust(left=0.0, right=1.0, top=0.92, bottom=0.1, wspace=0.0, hspace=0.0)
    return fig


def shares_figure(result: TripartiteResult) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from berg_scale.experiments.tripartite import MEAN

    colours = _colours(len(result.categories))
    rois, cats = result.rois, result.categories
    width = 0.8 / len(cats)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(rois) + 2.0), 3.6))
    x = np.arange(len(rois))
    by = {(r["subject"], r["roi"], r["category"]): r for r in result.rows}
    subjects = [f"sub-{s:02d}" for s in result.subjects]
    for c, (category, colour) in enumerate(zip(cats, colours)):
        offset = (c - (len(cats) - 1) / 2) * width
        heights = [100 * by[(MEAN, roi, category)]["share"] for roi in rois]
        ax.bar(x + offset, heights, width * 0.95, color=colour, label=category)
        if len(subjects) > 1:
            for s in subjects:
                ax.scatter(x + offset, [100 * by[(s, roi, category)]["share"] for roi in rois],
                           s=8, color="black", zorder=3, linewidths=0)
    for i, roi in enumerate(rois):
        top = next(r for r in result.rows if r["subject"] == MEAN and r["roi"] == roi and r["top"])
        if not math.isnan(top["p_value"]):
            ax.text(i, 103, f"p={top['p_value']:.2g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, rois)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("region of interest")
    ax.set_ylabel("vertices preferring category (%)")
    who = "subject average" if len(subjects) > 1 else subjects[0]
    title = f"Share of ROI vertices preferring each category ({who})"
    notes = (["bars: average, dots: subjects"] if len(subjects) > 1 else [])
    if result.n_permutations:
        notes.append(f"p: top share vs {result.n_permutations} label permutations")
    if notes:
        title += "\n" + "; ".join(notes)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def render(result: TripartiteResult) -> dict[str, bytes]:
    """File name -> bytes of every figure."""
    import matplotlib.pyplot as plt

    out = {}
    fig = surface_figure(result)
    out["tripartite_surface.png"] = _save(fig, "png")
    out["tripartite_surface.svg"] = _save(fig, "svg")
    plt.close(fig)
    fig = shares_figure(result)
    out["tripartite_shares.png"] = _save(fig, "png")
    out["tripartite_shares.svg"] = _save(fig, "svg")
    plt.close(fig)
    return out
