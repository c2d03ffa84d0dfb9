"""Figures of the tripartite analysis: preferences on the fsaverage5 surface, ROI shares as bars.

The surface is drawn by `berg_scale.figures.surface_figures` on nilearn's bundled fsaverage5
mesh (no download): vertex v < 10,242 of the responses is drawn at fsaverage5 vertex v,
vertices the responses lack are grey, vertices >= 10,242 are not drawn.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from berg_scale.experiments.tripartite import TripartiteResult

FIGURE_STEMS = ("tripartite_surface", "tripartite_shares")
FIGURE_FILES = tuple(f"{stem}.{fmt}" for stem in FIGURE_STEMS for fmt in ("png", "svg"))


def _colours(n: int) -> list[str]:
    from berg_scale.experiments.tripartite import PALETTE

    if n <= len(PALETTE):
        return list(PALETTE[:n])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


def surface_codes(ids: np.ndarray, preferred: np.ndarray) -> dict[str, np.ndarray]:
    """hemisphere -> (10,242,) float: the preferred category's code, NaN where not in the responses."""
    from berg_scale.experiments.tripartite import FSAVERAGE5_VERTICES, split_ids

    hemi, vertex = split_ids(ids)
    out = {}
    for name in ("lh", "rh"):
        codes = np.full(FSAVERAGE5_VERTICES, np.nan, dtype=np.float64)
        keep = (hemi == name) & (vertex < FSAVERAGE5_VERTICES)
        codes[vertex[keep]] = preferred[keep]
        out[name] = codes
    return out


def _save(fig: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=200, bbox_inches="tight")
    return buffer.getvalue()


def surface_figure(result: TripartiteResult) -> Any:
    from berg_scale.experiments.tripartite import MEAN
    from berg_scale.figures.surface_figures import surface_map

    ids, preferred = result.preferences[MEAN][0], result.preferences[MEAN][1]
    who = "subject average" if len(result.subjects) > 1 else f"sub-{result.subjects[0]:02d}"
    return surface_map(
        surface_codes(ids, preferred),
        categories=list(result.categories),
        colours=_colours(len(result.categories)),
        legend_title="preferred category (largest mean response)",
        missing_label="not in responses",
        title=f"Category preference per vertex, fsaverage5 ({who}, subjects "
              f"{', '.join(map(str, result.subjects))})",
    )


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
