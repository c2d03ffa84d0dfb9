"""RNC figures (matplotlib, Agg backend): quadrant scatter, GA curves, image grids.

Figures are saved as bytes through fsspec so that a study writes them next to its
tables, on local disk or in a bucket alike.
"""

from __future__ import annotations

import io
import posixpath
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CONDITION_COLOURS = {
    "high1-high2": "#d62728",
    "low1-low2": "#1f77b4",
    "high1-low2": "#ff7f0e",
    "low1-high2": "#2ca02c",
    "align": "#d62728",
    "disentangle": "#1f77b4",
}


def scatter_figure(
    u1: np.ndarray,
    u2: np.ndarray,
    rois: tuple[str, str],
    controlling: Mapping[str, np.ndarray],
    betas: tuple[float, float],
    baseline_images: Mapping[str, np.ndarray],
    max_points: int = 20_000,
    seed: int = 0,
) -> Figure:
    """All images (subsampled when many) in the ROI-1 x ROI-2 plane, with the four sets.

    Images without finite responses (left out of the study) are not drawn.
    """
    fig, ax = plt.subplots(figsize=(6, 6))
    drawable = np.flatnonzero(np.isfinite(u1) & np.isfinite(u2))
    n = drawable.size
    shown = drawable if n <= max_points else np.sort(
        drawable[np.random.default_rng(seed).choice(n, max_points, replace=False)])
    label = "images" if shown.size == n else f"images ({shown.size:,} of {n:,})"
    ax.scatter(u1[shown], u2[shown], s=3, c="0.75", linewidths=0, label=label, rasterized=True)
    for condition, images in controlling.items():
        if len(images):
            ax.scatter(u1[images], u2[images], s=14, c=CONDITION_COLOURS.get(condition), label=f"{condition} ({len(images)})")
    for roi, images in baseline_images.items():
        if len(images):
            ax.scatter(u1[images], u2[images], s=14, marker="x", c="k" if roi == rois[0] else "0.35",
                       label=f"baseline {roi}")
    ax.axvline(betas[0], color="k", lw=0.8, ls="--")
    ax.axhline(betas[1], color="k", lw=0.8, ls="--")
    ax.set_xlabel(f"{rois[0]} univariate response (z)")
    ax.set_ylabel(f"{rois[1]} univariate response (z)")
    ax.set_title(f"Univariate RNC: {rois[0]} vs {rois[1]}")
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    fig.tight_layout()
    return fig


def generations_figure(curves: Mapping[str, np.ndarray], title: str, null_mean: float | None = None) -> Figure:
    """Best train score per generation (and held-out scores when given), with the null mean."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, scores in curves.items():
        condition = label.split()[0]
        dashed = "test" in label
        ax.plot(np.arange(1, len(scores) + 1), scores, label=label, color=CONDITION_COLOURS.get(condition),
                ls="--" if dashed else "-", lw=1.2)
    if null_mean is not None and np.isfinite(null_mean):
        ax.axhline(null_mean, color="0.4", lw=0.8, ls=":", label="random batches (null mean)")
    ax.set_xlabel("generation")
    ax.set_ylabel("RSA score (Pearson r)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_grid_figure(rows: Mapping[str, Sequence[tuple[str, object]]], tile: int = 96, title: str = "") -> Figure:
    """One row per condition; missing images are blank tiles labelled with their key."""
    n_rows = max(1, len(rows))
    n_cols = max([1] + [len(v) for v in rows.values()])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9 + 1.2, n_rows * 1.0 + 0.5), squeeze=False)
    for r, (label, items) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(items):
                key, image = items[c]
                if image is None:
                    ax.imshow(np.ones((tile, tile, 3)), vmin=0, vmax=1)
                    ax.text(0.5, 0.5, f"missing\n{key}", ha="center", va="center", fontsize=4, transform=ax.transAxes)
                else:
                    ax.imshow(np.asarray(image))
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig: Figure, fs, path_stem: str, formats: Sequence[str]) -> list[str]:
    """Write `fig` as each format through `fs`; returns the written paths."""
    written = []
    fs.makedirs(posixpath.dirname(path_stem), exist_ok=True)
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150)
        path = f"{path_stem}.{fmt}"
        with fs.open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        written.append(path)
    plt.close(fig)
    return written
