"""The image grid of a search: the target image (for --like) and the k images found.

Images come from the input WebDataset tars through `berg_scale.rnc.images` (the engine's
own tar reader and decoder, so every format and layout `generate` reads works; images
not found are named). Each shard's tar is found through its `_done` marker, which
records the input URL the shard was generated from, or under `--images URL` when the
tars have moved (a folder of input shards, flat or nested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from berg_scale.search.topk import Hit

MAX_COLUMNS = 6
TARGET_COLOUR = "#d62728"


def format_distance(distance: float) -> str:
    """Four significant digits; float64 rounding residue (|d| < 1e-12) shows as 0."""
    return "0" if abs(distance) < 1e-12 else f"{distance:.4g}"


def short_key(key: str, limit: int = 24) -> str:
    return key if len(key) <= limit else f"{key[:8]}...{key[-(limit - 11):]}"


def grid_figure(
    hits: Sequence[Hit], tiles: Mapping[tuple[str, str], object], title: str,
    target: tuple[str, str] | None = None, footer: str = "",
) -> Figure:
    """Tiles in rank order, each titled with rank, distance and key; the target first, framed."""
    entries: list[tuple[str, object, bool]] = []
    if target is not None:
        entries.append((f"target\n{short_key(target[1])}", tiles.get(target), True))
    for hit in hits:
        entries.append((f"#{hit.rank}  d = {format_distance(hit.distance)}\n{short_key(hit.key)}",
                        tiles.get((hit.shard, hit.key)), False))
    n_cols = max(1, min(MAX_COLUMNS, len(entries)))
    n_rows = max(1, math.ceil(len(entries) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(max(5.5, 1.75 * n_cols + 0.3), 2.1 * n_rows + 0.9), squeeze=False,
                             layout="constrained")
    for slot, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if slot >= len(entries):
            ax.axis("off")
            continue
        label, image, is_target = entries[slot]
        if image is None:
            ax.imshow(np.full((8, 8, 3), 0.9), vmin=0, vmax=1)
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        else:
            ax.imshow(np.asarray(image))
        ax.set_title(label, fontsize=7, color=TARGET_COLOUR if is_target else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor(TARGET_COLOUR if is_target else "0.6")
            spine.set_linewidth(2.5 if is_target else 0.6)
    fig.suptitle(title, fontsize=9)
    if footer:
        fig.supxlabel(footer, fontsize=7, color="0.3")
    return fig
