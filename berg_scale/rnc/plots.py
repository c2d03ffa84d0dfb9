"""RNC figures (matplotlib, Agg backend): quadrant scatter, GA curves, image grids.

Every figure is sized for print (about 7 inches wide, so it is shown near 1:1 on a
page), names conditions the way a reader thinks of them (V1↑ hV4↓ rather than
high1-low2) and says its units in a caption. Figures are saved as bytes through fsspec
so that a study writes them next to its tables, on local disk or in a bucket alike.
"""

from __future__ import annotations

import io
import math
import posixpath
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mpl_toolkits.axes_grid1 import ImageGrid  # noqa: E402

CONDITION_COLOURS = {
    "high1-high2": "#d62728",
    "low1-low2": "#1f77b4",
    "high1-low2": "#ff7f0e",
    "low1-high2": "#2ca02c",
    "align": "#d62728",
    "disentangle": "#1f77b4",
}
UNIVARIATE_SIGNS = {"high1-high2": ("↑", "↑"), "low1-low2": ("↓", "↓"), "high1-low2": ("↑", "↓"),
                    "low1-high2": ("↓", "↑")}
UNIVARIATE_KIND = {"high1-high2": "align", "low1-low2": "align", "high1-low2": "disentangle",
                   "low1-high2": "disentangle"}
MULTIVARIATE_MEANING = {"align": "RSMs made similar", "disentangle": "RSMs made unrelated"}
PRINT_WIDTH_IN = 7.0
TITLE_PT = 10
PANEL_PT = 8.5
LABEL_PT = 8
TILE_PT = 6
CAPTION_PT = 7.5


def condition_label(condition: str, rois: Sequence[str], long: bool = False) -> str:
    """`V1↑ hV4↓` for univariate conditions, `align V1–hV4` for multivariate ones."""
    if condition in UNIVARIATE_SIGNS:
        s1, s2 = UNIVARIATE_SIGNS[condition]
        short = f"{rois[0]}{s1} {rois[1]}{s2}"
        return f"{short} ({UNIVARIATE_KIND[condition]})" if long else short
    if condition in MULTIVARIATE_MEANING:
        short = f"{condition} {rois[0]}–{rois[1]}"
        return f"{short} ({MULTIVARIATE_MEANING[condition]})" if long else short
    return condition


def wrap_caption(text: str, width_in: float) -> str:
    """The caption wrapped to the figure's width (about 0.55 em per character)."""
    return textwrap.fill(text, max(40, int((width_in - 0.3) * 72 / (CAPTION_PT * 0.56))))


def caption_height(text: str | None, width_in: float) -> float:
    """Inches a wrapped caption needs below the axes."""
    if not text:
        return 0.0
    return 0.2 + wrap_caption(text, width_in).count("\n") * CAPTION_PT * 1.3 / 72 + CAPTION_PT / 72


def _caption(fig: Figure, text: str, bottom_in: float) -> None:
    fig.text(0.02, (bottom_in - 0.08) / fig.get_figheight(), wrap_caption(text, fig.get_figwidth()),
             fontsize=CAPTION_PT, va="top", ha="left", color="0.2", linespacing=1.3)


def scatter_figure(
    u1: np.ndarray,
    u2: np.ndarray,
    rois: tuple[str, str],
    controlling: Mapping[str, np.ndarray],
    betas: tuple[float, float],
    baseline_images: Mapping[str, np.ndarray],
    max_points: int = 20_000,
    seed: int = 0,
    caption: str | None = None,
) -> Figure:
    """All images (subsampled when many) in the ROI-1 x ROI-2 plane, with the four sets.

    Images without finite responses (left out of the study) are not drawn.
    """
    caption_in = caption_height(caption, 5.5)
    fig = plt.figure(figsize=(5.5, 5.2 + caption_in))
    ax = fig.add_axes((0.14, (caption_in + 0.55) / (5.2 + caption_in), 0.82, 4.3 / (5.2 + caption_in)))
    drawable = np.flatnonzero(np.isfinite(u1) & np.isfinite(u2))
    n = drawable.size
    shown = drawable if n <= max_points else np.sort(
        drawable[np.random.default_rng(seed).choice(n, max_points, replace=False)])
    label = "all images" if shown.size == n else f"images ({shown.size:,} of {n:,} shown)"
    ax.scatter(u1[shown], u2[shown], s=3, c="0.75", linewidths=0, label=label, rasterized=True)
    for condition, images in controlling.items():
        name = condition_label(condition, rois)
        if len(images):
            ax.scatter(u1[images], u2[images], s=14, c=CONDITION_COLOURS.get(condition),
                       label=f"{name} ({len(images)} images)")
        else:
            ax.scatter([], [], s=14, c=CONDITION_COLOURS.get(condition), label=f"{name} (no eligible image)")
    for roi, images in baseline_images.items():
        if len(images):
            ax.scatter(u1[images], u2[images], s=14, marker="x", c="k" if roi == rois[0] else "0.35",
                       label=f"baseline batch of {roi}")
    ax.axvline(betas[0], color="k", lw=0.8, ls="--")
    ax.axhline(betas[1], color="k", lw=0.8, ls="--", label="baseline scores")
    ax.set_xlabel(f"{rois[0]} univariate response (z)", fontsize=LABEL_PT + 1)
    ax.set_ylabel(f"{rois[1]} univariate response (z)", fontsize=LABEL_PT + 1)
    ax.tick_params(labelsize=LABEL_PT)
    ax.set_title(f"Univariate RNC: {rois[0]} vs {rois[1]}", fontsize=TITLE_PT)
    ax.legend(fontsize=LABEL_PT - 1, loc="best", markerscale=1.5)
    if caption:
        _caption(fig, caption, caption_in)
    return fig


@dataclass
class CurveSet:
    """One condition's scores per generation: the search's train curve and held-out folds."""

    condition: str
    train: np.ndarray  # the all-subjects search (what the GA maximises)
    heldout: dict[str, np.ndarray] = field(default_factory=dict)  # fold label -> held-out score per generation
    ci: tuple[np.ndarray, np.ndarray] | None = None  # 95% band of the held-out mean per generation
    baseline: float | None = None  # mean held-out baseline score
    null_mean: float | None = None  # mean of the train null (random batches)


def generations_figure(
    curves: Sequence[CurveSet], rois: Sequence[str], caption: str | None = None, title: str | None = None
) -> Figure:
    """One panel per condition: train score, held-out score per fold and their mean with its band."""
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(curves))
    caption_in = caption_height(caption, PRINT_WIDTH_IN)
    legend_in = 0.5
    height = 3.2 + legend_in + caption_in
    fig = plt.figure(figsize=(PRINT_WIDTH_IN, height))
    width = (PRINT_WIDTH_IN - 0.8 - 0.5 * (n - 1)) / n
    handles: dict[str, object] = {}
    for j, curve in enumerate(curves):
        ax = fig.add_axes(((0.7 + j * (width + 0.5)) / PRINT_WIDTH_IN, (caption_in + legend_in + 0.5) / height,
                           width / PRINT_WIDTH_IN, 2.25 / height))
        colour = CONDITION_COLOURS.get(curve.condition, "k")
        x = np.arange(1, len(curve.train) + 1)
        for scores in curve.heldout.values():
            ax.plot(x, scores, color=colour, alpha=0.35, lw=0.7, label="held-out, one line per fold")
        if curve.heldout:
            mean = np.nanmean(np.vstack(list(curve.heldout.values())), axis=0)
            if curve.ci is not None:
                ax.fill_between(x, curve.ci[0], curve.ci[1], color=colour, alpha=0.2, lw=0,
                                label="held-out mean, 95% CI over subjects")
            ax.plot(x, mean, color=colour, lw=1.8, label="held-out mean over folds")
        ax.plot(x, curve.train, color="k", lw=1.2, ls="--", label="train (all subjects)")
        if curve.baseline is not None and np.isfinite(curve.baseline):
            ax.axhline(curve.baseline, color="0.35", lw=0.9, ls=":", label="held-out baseline batch")
        elif curve.null_mean is not None and np.isfinite(curve.null_mean):
            ax.axhline(curve.null_mean, color="0.35", lw=0.9, ls=":", label="random batches (mean)")
        ax.set_title(condition_label(curve.condition, rois, long=True), fontsize=PANEL_PT)
        ax.set_xlabel("generation", fontsize=LABEL_PT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if j == 0:
            ax.set_ylabel("RSA score (Pearson r)", fontsize=LABEL_PT)
        ax.tick_params(labelsize=LABEL_PT - 0.5)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, _neutral(handle))  # one entry per role, in grey (colour = condition)
    if handles:
        legend_handles: list[Any] = list(handles.values())
        fig.legend(legend_handles, list(handles), loc="lower center", ncol=min(3, len(handles)),
                   fontsize=LABEL_PT - 0.5, frameon=False, bbox_to_anchor=(0.5, (caption_in + 0.02) / height))
    fig.suptitle(title or f"Multivariate RNC: {rois[0]} vs {rois[1]}", fontsize=TITLE_PT,
                 y=1 - 0.1 / height)
    if caption:
        _caption(fig, caption, caption_in)
    return fig


def _neutral(handle):
    """A grey copy of a legend handle (lines keep their style, bands become grey patches)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(handle, Line2D):
        colour = handle.get_color() if handle.get_color() in ("k", "0.35") else "0.4"
        return Line2D([], [], color=colour, lw=handle.get_linewidth(), ls=handle.get_linestyle(),
                      alpha=handle.get_alpha())
    return Patch(color="0.4", alpha=0.25)


@dataclass
class GridPanel:
    """One set of images in a grid: its title, tiles (key, image, score text) and a note."""

    title: str
    tiles: list[tuple[str, object, str]]
    expected: int | None = None  # how many the condition asks for (shown when fewer came)
    note: str | None = None  # e.g. why the set is empty


_KEY_BREAKS = re.compile(r"(?<=[-_.])|(?=/)|(?<=/)")  # after - _ . and on either side of /


def tile_key(key: str, width: int) -> str:
    """A key in at most three lines of `width` characters, broken only at separators
    (`small_objects/img12` is `small_` / `objects/` / `img12`, never `small_objec` / `ts/...`)
    when that fits; else two lines: its start names the shard and its end the image, so
    neither may be cut off, and a key longer than two lines loses its middle."""
    if len(key) <= width:
        return key
    wrapped = _wrap_at_separators(key, width)
    if wrapped is not None:
        return wrapped
    if len(key) > 2 * width:
        return key[:width - 1] + "…\n" + key[-width:]
    cut = max(key.rfind(sep, 0, width) + 1 for sep in "-_/.")
    if cut < len(key) - width or cut < width // 2:
        cut = width  # no separator leaves both lines short enough
    return key[:cut] + "\n" + key[cut:]


def _wrap_at_separators(key: str, width: int, max_lines: int = 3) -> str | None:
    """Greedy lines of whole separator-delimited pieces, or None when a piece is wider than
    `width` or more than `max_lines` lines are needed."""
    lines = [""]
    for piece in (part for part in _KEY_BREAKS.split(key) if part):
        if len(piece) > width:
            return None
        if len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines) if len(lines) <= max_lines else None


def _key_width(tile_in: float, pad_w: float) -> int:
    """How many characters of TILE_PT text fit under one tile."""
    return max(8, int((tile_in + pad_w) * 72 / (TILE_PT * 0.68)))


def image_grid_figure(
    panels: Sequence[GridPanel],
    columns: int = 5,
    panels_per_row: int = 1,
    title: str = "",
    caption: str | None = None,
    tile_in: float | None = None,
) -> Figure:
    """Panels of wrapped image grids (matplotlib ImageGrid), each tile labelled with key and score.

    A set with fewer images than asked for says so in its title, and an empty set is
    drawn as a note instead of being dropped; an image that could not be fetched is a
    grey tile reading "not found" (the study also warns with the list).
    """
    panels = list(panels) or [GridPanel("no images", [], note="nothing to show")]
    gap_in = 0.35
    margin_in = 0.2
    tile_in = tile_in or min(0.8, (PRINT_WIDTH_IN - 2 * margin_in - gap_in * (panels_per_row - 1))
                             / panels_per_row / columns - 0.09)
    pad_w = 0.09  # inches between tiles
    key_width = _key_width(tile_in, pad_w)
    key_lines = max((tile_key(key, key_width).count("\n") + 1 for p in panels for key, _, _ in p.tiles), default=1)
    pad_h = 0.3 + 0.1 * (key_lines - 1)  # the vertical pad holds the key's lines and the score
    panel_w = columns * tile_in + (columns - 1) * pad_w
    titles = [_panel_title(p, panel_w) for p in panels]
    title_lines = [t.count("\n") + 1 for t in titles]
    rows_of = [max(1, math.ceil(len(p.tiles) / columns)) for p in panels]
    layout_rows = [panels[i:i + panels_per_row] for i in range(0, len(panels), panels_per_row)]
    row_heights = []
    row_title_in = []
    for r, _ in enumerate(layout_rows):
        grid_rows = max(rows_of[r * panels_per_row:(r + 1) * panels_per_row])
        lines = max(title_lines[r * panels_per_row:(r + 1) * panels_per_row])
        row_title_in.append(0.16 + lines * PANEL_PT * 1.3 / 72)
        row_heights.append(row_title_in[-1] + grid_rows * (tile_in + pad_h))
    head_in = 0.45 if title else 0.1
    width = max(PRINT_WIDTH_IN, 2 * margin_in + panels_per_row * panel_w + (panels_per_row - 1) * gap_in)
    caption_in = caption_height(caption, width)
    height = head_in + sum(row_heights) + caption_in + 0.1
    fig = plt.figure(figsize=(width, height))
    top = height - head_in
    for r, row in enumerate(layout_rows):
        for c, panel in enumerate(row):
            left = margin_in + c * (panel_w + gap_in)
            n_rows = rows_of[r * panels_per_row + c]
            grid_h = n_rows * (tile_in + pad_h) - pad_h
            rect = (left / width, (top - row_title_in[r] - grid_h) / height, panel_w / width, grid_h / height)
            _draw_panel(fig, rect, panel, titles[r * panels_per_row + c], n_rows, columns, (pad_w, pad_h),
                        (left, top), (width, height), key_width)
        top -= row_heights[r]
    if title:
        fig.suptitle(title, fontsize=TITLE_PT, y=1 - 0.12 / height, va="top")
    if caption:
        _caption(fig, caption, caption_in)
    return fig


def _panel_title(panel: GridPanel, width_in: float) -> str:
    title = panel.title
    if panel.expected is not None and len(panel.tiles) < panel.expected:
        title += f" — {len(panel.tiles)} of {panel.expected} images"
    return textwrap.fill(title, max(20, int(width_in * 72 / (PANEL_PT * 0.62))))


def _draw_panel(fig, rect, panel: GridPanel, title: str, n_rows, columns, pads, corner, size,
                key_width: int) -> None:
    fig.text(corner[0] / size[0], (corner[1] - 0.06) / size[1], title, fontsize=PANEL_PT,
             fontweight="bold", va="top", ha="left", linespacing=1.3)
    grid = ImageGrid(fig, rect, nrows_ncols=(n_rows, columns), axes_pad=pads, share_all=True, label_mode="all")
    for ax in grid:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(grid)[len(panel.tiles):]:
        ax.set_axis_off()
    if not panel.tiles:
        grid[0].set_axis_off()
        note = panel.note or "no images"
        panel_in = rect[2] * size[0]
        wrapped = textwrap.fill(note, max(20, int(panel_in * 72 / (LABEL_PT * 0.56))))
        fig.text(corner[0] / size[0], (corner[1] - 0.5) / size[1], wrapped, fontsize=LABEL_PT,
                 va="top", ha="left", style="italic", color="0.3")
        return
    for ax, (key, image, score) in zip(grid, panel.tiles):
        if image is None:
            ax.imshow(np.full((128, 128, 3), 217, dtype=np.uint8))
            ax.text(0.5, 0.5, "not found", ha="center", va="center", fontsize=TILE_PT, transform=ax.transAxes)
        else:
            ax.imshow(_square(np.asarray(image)))
        label = tile_key(key, key_width) + (f"\n{score}" if score else "")
        ax.set_xlabel(label, fontsize=TILE_PT, labelpad=1.5, linespacing=1.0)


def _square(pixels: np.ndarray, side: int = 128) -> np.ndarray:
    """The image centred on a white square of `side` pixels, so every tile has the same extent."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(canvas)


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
