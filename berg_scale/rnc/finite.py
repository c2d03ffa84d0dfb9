"""Images with non-finite responses: found once per analysis, left out of every step, reported.

One NaN or infinite response poisons means silently: every random batch that contains
the image has a NaN mean, the null mean becomes NaN, and "the batch nearest the null
mean" degenerates to batch 0. An analysis therefore runs on the images whose responses
are finite in every column it reads (all its subjects and ROIs), and only on them: the
baseline null, the selections, the permutation nulls, the correlations and the genetic
search all draw from or rank this one set. Results are then exactly those of an output
in which the excluded images had never been generated, and every pair, fold and ROI is
compared on the same images.

Exclusion is reported (console, `excluded.parquet`, counts in the tables and in
summary.json) and refused, with a one-line error naming the worst column, when it takes
more than a set fraction of the images or leaves too few for the analysis: many
non-finite responses point to a broken output, not to a few unlucky images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from berg_scale.rnc.responses import ResponsesError

DEFAULT_MAX_EXCLUDED_FRACTION = 0.01


class NonFiniteResponsesError(ResponsesError):
    """Too many images have NaN or infinite responses for an analysis to be meaningful."""


def column_label(subject: int, roi: str) -> str:
    return f"sub-{subject:02d}/{roi}"


@dataclass(frozen=True)
class Exclusions:
    """Which of an analysis's images it uses, and which it leaves out and why.

    Image numbers are those of the response output (all ok rows, in (shard, row) order);
    `pool` is what random draws map through, so that a draw of k positions among the
    used images becomes k image numbers. It is None when nothing is excluded, which
    keeps every random stream identical to a run without the check.
    """

    n_images: int  # ok images read
    labels: tuple[str, ...]  # the columns checked, e.g. "sub-01/V1"
    excluded: np.ndarray  # sorted image numbers left out
    mask: np.ndarray  # (n_excluded, n_labels): which columns were not finite for each
    pool: np.ndarray | None = field(default=None, repr=False)  # sorted image numbers used

    @property
    def n_excluded(self) -> int:
        return int(self.excluded.size)

    @property
    def n_used(self) -> int:
        return self.n_images - self.n_excluded

    def by_column(self) -> dict[str, int]:
        """Column -> number of images with a non-finite value there (columns with none left out)."""
        counts = self.mask.sum(axis=0) if self.mask.size else np.zeros(len(self.labels), np.int64)
        return {label: int(c) for label, c in zip(self.labels, counts) if c}

    def images(self, positions: np.ndarray) -> np.ndarray:
        """Image numbers of positions 0..n_used-1 among the used images."""
        positions = np.asarray(positions)
        return positions.astype(np.int64) if self.pool is None else self.pool[positions]

    def used_mask(self) -> np.ndarray:
        keep = np.ones(self.n_images, dtype=bool)
        keep[self.excluded] = False
        return keep

    def columns_of(self, row: int) -> list[str]:
        """Columns that were not finite for the `row`-th excluded image."""
        return [label for label, bad in zip(self.labels, self.mask[row]) if bad]

    def summary(self) -> dict:
        return {
            "n_images": self.n_images,
            "n_used": self.n_used,
            "n_excluded": self.n_excluded,
            "by_column": self.by_column(),
            "policy": "images with a NaN or infinite response in any column the analysis reads are left out",
        }

    def message(self, analysis: str) -> str:
        """One console line: how many images were left out, and where the bad values are."""
        if not self.n_excluded:
            return f"{analysis}: all {self.n_images:,} images have finite responses"
        worst = sorted(self.by_column().items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join(f"{label} {count}" for label, count in worst[:4])
        more = f", {len(worst) - 4} more columns" if len(worst) > 4 else ""
        return (
            f"{analysis}: excluded {self.n_excluded:,} of {self.n_images:,} images with NaN or infinite "
            f"responses ({shown}{more}); they are listed in {analysis}/excluded.parquet"
        )

    def check(self, analysis: str, max_fraction: float, needed: int) -> None:
        """Refuse an exclusion that is too large to be a few bad images, or leaves too few."""
        worst = max(self.by_column().items(), key=lambda item: item[1], default=("", 0))
        where = f", most in {worst[0]} ({worst[1]:,} image{'s' if worst[1] != 1 else ''})" if worst[1] else ""
        fix = (
            "check those responses in the generate output (a float16 output overflows above 65504) "
            "and regenerate them"
        )
        if self.n_excluded > max_fraction * self.n_images:
            fraction = self.n_excluded / max(self.n_images, 1)
            raise NonFiniteResponsesError(
                f"{analysis}: {self.n_excluded:,} of {self.n_images:,} images (a fraction of "
                f"{distinct_from(fraction, max_fraction)}) have NaN or infinite responses{where}, more than "
                f"max_excluded_fraction={max_fraction:g}: {fix}, or raise max_excluded_fraction (--max-excluded-fraction, "
                "or in the study config) to leave them out"
            )
        if self.n_excluded and self.n_used < needed:
            raise NonFiniteResponsesError(
                f"{analysis}: only {self.n_used:,} of {self.n_images:,} images have finite responses"
                f"{where}, and the analysis needs at least {needed:,}: {fix}"
            )


def distinct_from(value: float, limit: float) -> str:
    """`value` with as many significant digits as it takes to print it apart from `limit`.

    1 of 99 images is 0.0101, above a limit of 0.01; printed as "1.0%" it would read as
    equal to the limit it is refused for.
    """
    for digits in range(2, 17):
        text = f"{value:.{digits}g}"
        if float(text) != float(f"{limit:.{digits}g}"):
            return text
    return f"{value:.17g}"


def find_exclusions(n_images: int, labels: Sequence[str], bad_rows: Mapping[str, np.ndarray]) -> Exclusions:
    """Exclusions from the rows that are not finite in each column (label -> image numbers)."""
    labels = tuple(labels)
    parts = [np.asarray(bad_rows.get(label, ()), dtype=np.int64) for label in labels]
    excluded = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    mask = np.zeros((excluded.size, len(labels)), dtype=bool)
    for j, rows in enumerate(parts):
        mask[np.searchsorted(excluded, rows), j] = True
    pool = None
    if excluded.size:
        keep = np.ones(n_images, dtype=bool)
        keep[excluded] = False
        pool = np.flatnonzero(keep).astype(np.int64)
    return Exclusions(n_images, labels, excluded, mask, pool)


def univariate_exclusions(
    values: np.ndarray, subjects: Sequence[int], rois: Sequence[str], roi_slots: Sequence[int],
    block: int = 65_536,
) -> Exclusions:
    """Non-finite cells of u[s, r](i) for the given ROI slots of an (N, S, R) array.

    Checked block by block so that no N x S x R boolean array is held at once.
    """
    n = values.shape[0]
    labels = [column_label(s, roi) for s in subjects for roi in rois]
    bad: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    slots = list(roi_slots)
    for start in range(0, n, block):
        cells = ~np.isfinite(values[start : start + block][:, :, slots])  # (b, S, R')
        rows = np.flatnonzero(cells.any(axis=(1, 2)))
        if not rows.size:
            continue
        for si, subject in enumerate(subjects):
            for ri, roi in enumerate(rois):
                hit = rows[cells[rows, si, ri]]
                if hit.size:
                    bad[column_label(subject, roi)].append(hit + start)
    merged = {label: np.concatenate(parts) for label, parts in bad.items() if parts}
    return find_exclusions(n, labels, merged)
