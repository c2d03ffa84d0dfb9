"""Grouped ROI-pair follow-ups of univariate RNC: cortical distance and categorical selectivity.

Both analyses (the RNC paper's follow-ups; docs/experiments.md) take the controlling and baseline images of a
cross-validated univariate RNC study over every pair of four ROIs, score them on each
held-out subject, average the scores over groups of pairs and ask whether the group
averages are ordered as expected.

  score        for held-out subject s, condition c and pair (a, b), with controlling images
               C (chosen on the other subjects) and baseline images B_a, B_b of the fold:
               score = mean over r in {a, b} of mean over i in C of |u[s, r](i) - mean u[s, r](B_r)|
  group        G_g = mean of the scores of the pairs in group g (pairs with no controlling
               image have no score and are left out of their group)
  statistic    T = sum over consecutive groups of (G_g - G_g+1), i.e. (d1 - d2) + (d2 - d3) for
               cortical distance and same - different for categorical selectivity
  direction    aligning conditions (high1-high2, low1-low2) are expected to score higher in
               the first group (T > 0), disentangling ones (high1-low2, low1-high2) lower (T < 0)
  null         for every image independently, its four ROI responses are randomly reassigned
               to the four ROIs (one uniform permutation per image and iteration); the images
               (controlling and baseline sets) stay, the statistic is recomputed. One-sided
               p = (1 + #{null beats T}) / (1 + iterations), BH-FDR over the 4 conditions within
               each subject, then k significant subjects against Binomial(subjects, 0.05).
  correlation  per subject, Pearson r of the two ROIs' responses over all images, averaged
               per group, T as above, expected T > 0; same per-image null over all images,
               tested at the uncorrected alpha, then the binomial test.

A pair studied in the other orientation (hV4-V1) is turned round, which swaps its
high1-low2 and low1-high2 conditions, so that every pair is read in the grouping's ROI
order. The score null permutes only the few hundred controlling and baseline images and
costs O(images x iterations); the correlation null permutes every image and costs
O(N x iterations), hence its own, smaller iteration count.
"""

from __future__ import annotations

import argparse
import itertools
import math
import posixpath
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.experiments.outputs import add_no_figures_option, output_names, write_experiment_outputs
from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.rnc.stats import (
    benjamini_hochberg,
    binomial_tail,
    bootstrap_ci,
    permutation_p_value,
)
from berg_scale.rnc.streams import stream
from berg_scale.rnc.univariate import CONDITIONS

ALIGN = ("high1-high2", "low1-low2")
REVERSED = {"high1-high2": "high1-high2", "low1-low2": "low1-low2",
            "high1-low2": "low1-high2", "low1-high2": "high1-low2"}
DEFAULT_PERMUTATIONS = 100_000
DEFAULT_CORRELATION_PERMUTATIONS = 1_000
DEFAULT_BOOTSTRAP = 100_000
CHUNK_ELEMENTS = 4_000_000  # responses per permuted block (x 8 bytes)
TABLE_BYTES = 256 * 2**20  # most memory for the table of every permuted row of every image
TABLES = ("pair_scores", "groups", "statistics", "correlations")
CONDITION_COLOURS = {"high1-high2": "#d62728", "low1-low2": "#1f77b4", "high1-low2": "#ff7f0e",
                     "low1-high2": "#2ca02c"}


class RoiGroupsError(BergScaleError):
    """The study, the responses or the options do not allow a grouped ROI-pair analysis."""


@dataclass(frozen=True)
class PairGrouping:
    """Four ROIs, their pairs in ordered groups, and how the result is labelled."""

    name: str  # command name, also the stem of the figure
    title: str
    rois: tuple[str, ...]
    groups: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (label, pairs), in statistic order
    axis_label: str
    statistic_label: str

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [p for _, pairs in self.groups for p in pairs]

    def check(self) -> None:
        every = set(itertools.combinations(self.rois, 2))
        if sorted(self.pairs) != sorted(every):
            raise ValueError(f"{self.name}: the groups must hold every pair of {self.rois} once")


def expected_direction(condition: str) -> str:
    """'greater' when the first group should score higher (aligning conditions)."""
    return "greater" if condition in ALIGN else "less"


def group_statistic(group_values: np.ndarray) -> np.ndarray:
    """Sum of consecutive differences over the last axis: (G1 - G2) + (G2 - G3) + ..."""
    return np.sum(group_values[..., :-1] - group_values[..., 1:], axis=-1)


# --------------------------------------------------------------------------- the per-image null


def permutation_table(n_rois: int) -> np.ndarray:
    """Every permutation of range(n_rois), one per row."""
    return np.array(list(itertools.permutations(range(n_rois))), dtype=np.int64)


def permuted_blocks(
    rng: np.random.Generator, values: np.ndarray, n_iter: int, chunk_elements: int = CHUNK_ELEMENTS
) -> Iterator[np.ndarray]:
    """Blocks (b, K, R) of `values` (K, R) with each image's R responses randomly reassigned.

    Every image gets its own uniform permutation of the ROIs in every iteration; the
    blocks together hold `n_iter` iterations.
    """
    k, r = values.shape
    table = permutation_table(r)
    n_perm = table.shape[0]
    per_block = max(1, chunk_elements // max(1, k * r))
    # Every permuted row of every image, so that a block is one gather of whole rows (several
    # times faster than element-wise indexing); element-wise when that table would be large.
    rows_table = None
    if k * n_perm * r * values.itemsize <= TABLE_BYTES:
        rows_table = np.ascontiguousarray(values[:, table]).reshape(k * n_perm, r)
        first_row = (n_perm * np.arange(k)).astype(np.int64)
    done = 0
    while done < n_iter:
        b = min(per_block, n_iter - done)
        codes = rng.integers(0, n_perm, size=(b, k))
        if rows_table is not None:
            yield np.take(rows_table, codes + first_row, axis=0)
        else:
            yield values[np.arange(k)[None, :, None], table[codes]]
        done += b


def null_of(
    rng: np.random.Generator, values: np.ndarray, n_iter: int, statistic, chunk_elements: int = CHUNK_ELEMENTS
) -> np.ndarray:
    """Stacked `statistic(block)` over the per-image ROI-permutation null (n_iter, ...)."""
    parts = [statistic(block) for block in permuted_blocks(rng, values, n_iter, chunk_elements)]
    return np.concatenate(parts) if parts else np.empty((0,))


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class SubjectSets:
    """A held-out subject's images, as positions into its (K, R) response block."""

    subject: int
    images: np.ndarray  # (K,) image numbers of the union of all sets
    baselines: tuple[np.ndarray, ...]  # per ROI: positions of its baseline images
    controlling: dict[tuple[str, int], np.ndarray]  # (condition, pair index) -> positions


def pair_scores(block: np.ndarray, sets: SubjectSets, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(b, conditions, pairs, 2): mean |u - baseline mean| over the controlling images, per ROI.

    NaN where a pair has no controlling image for a condition.
    """
    b = block.shape[0]
    base = np.stack([block[:, pos, r].mean(axis=1) for r, pos in enumerate(sets.baselines)], axis=1)  # (b, R)
    out = np.full((b, len(CONDITIONS), len(pairs), 2), np.nan)
    # every (condition, pair, ROI) set as one segment of a single gather
    cells: list[tuple[int, int, int]] = []
    images: list[np.ndarray] = []
    rois: list[np.ndarray] = []
    starts: list[int] = []
    for ci, condition in enumerate(CONDITIONS):
        for pi, pair in enumerate(pairs):
            pos = sets.controlling.get((condition, pi))
            if pos is None or pos.size == 0:
                continue
            for j, r in enumerate(pair):
                cells.append((ci, pi, j))
                starts.append(sum(x.size for x in images))
                images.append(pos)
                rois.append(np.full(pos.size, r))
    if not cells:
        return out
    image_index, roi_index = np.concatenate(images), np.concatenate(rois)
    deviations = np.abs(block[:, image_index, roi_index] - base[:, roi_index])  # (b, M)
    sizes = np.array([x.size for x in images])
    means = np.add.reduceat(deviations, np.array(starts), axis=1) / sizes
    ci_index, pi_index, j_index = (np.array(v) for v in zip(*cells))
    out[:, ci_index, pi_index, j_index] = means
    return out


def group_means(per_pair: np.ndarray, membership: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean over each group's pairs (last axis: pairs -> groups), ignoring undefined pairs."""
    out = []
    for members in membership:
        values = per_pair[..., list(members)]
        defined = np.isfinite(values)
        with np.errstate(invalid="ignore"):
            out.append(np.where(defined, values, 0.0).sum(axis=-1) / defined.sum(axis=-1))
    return np.stack(out, axis=-1)


def correlations(block: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(b, pairs) Pearson r across images of each pair's two ROI columns of a (b, N, R) block."""
    n = block.shape[1]
    centred = block - block.mean(axis=1, keepdims=True)
    gram = np.einsum("bnr,bnq->brq", centred, centred) / n
    a = np.array([p[0] for p in pairs])
    c = np.array([p[1] for p in pairs])
    with np.errstate(invalid="ignore", divide="ignore"):
        return gram[:, a, c] / np.sqrt(gram[:, a, a] * gram[:, c, c])


# --------------------------------------------------------------------------- reading the study


@dataclass
class Study:
    """What a univariate RNC study output holds for one grouping's ROIs."""

    url: str
    summary: dict
    responses: str
    model_id: str
    subjects: tuple[int, ...]
    heldout: tuple[int, ...]
    unions: dict[str, list[str]]
    threshold: float
    seed: int
    controlling: list[dict]  # rows of controlling.parquet (held-out folds, grouping pairs, canonical order)
    baselines: list[dict]  # rows of baselines.parquet (held-out folds, grouping ROIs)
    n_controlling: dict[tuple[int, str, int], int] = field(default_factory=dict)


def _read_json(fs, path: str) -> dict:
    import json

    with fs.open(path, "r") as handle:
        return json.load(handle)


def _read_rows(fs, path: str) -> list[dict]:
    """Rows of a Parquet table, read through the filesystem rather than a Python file object,
    whose reads from pyarrow's threads can abort the interpreter at exit."""
    import pyarrow.parquet as pq

    return pq.read_table(path, filesystem=fs).to_pylist()


def open_study(url: str, grouping: PairGrouping, kind: str, storage=None) -> tuple[Any, str, dict, str]:
    """(filesystem, root, summary.json, how to rerun it) of an RNC study of `kind`
    (univariate | multivariate); a folder without summary.json is no study."""
    from berg_scale.io.storage import filesystem_for

    fs, root = filesystem_for(url, storage)
    rerun = (f"run `berg-scale rnc {kind} --rois {' '.join(grouping.rois)} --out {url} ...` "
             "(cross-validated, the default) and pass that --out as --study")
    summary_path = posixpath.join(root, "summary.json")
    if not fs.exists(summary_path):
        raise RoiGroupsError(f"{url} has no summary.json, so it is not an RNC study output: {rerun}")
    return fs, root, _read_json(fs, summary_path), rerun


def read_study(url: str, grouping: PairGrouping, storage=None) -> Study:
    """Controlling and baseline images of a study, checked to cover the grouping's pairs."""
    fs, root, summary, rerun = open_study(url, grouping, "univariate", storage)
    uni = summary.get("univariate")
    folder = posixpath.join(root, "univariate")
    if not uni or not fs.exists(posixpath.join(folder, "controlling.parquet")):
        raise RoiGroupsError(f"study {url} has no univariate RNC results: {rerun}")
    config = summary.get("config") or {}
    studied = {(r["roi_1"], r["roi_2"]) for r in uni.get("n_controlling", [])}
    have = {roi for pair in studied for roi in pair}
    missing = [roi for roi in grouping.rois if roi not in have]
    if missing:
        raise RoiGroupsError(
            f"study {url} has no univariate RNC results for ROI {missing[0]} "
            f"(it has {', '.join(sorted(have)) or 'none'}; {grouping.name} needs {', '.join(grouping.rois)}): {rerun}")
    orientation = {}
    for a, b in grouping.pairs:
        if (a, b) in studied:
            orientation[(a, b)] = False
        elif (b, a) in studied:
            orientation[(b, a)] = True
        else:
            raise RoiGroupsError(f"study {url} lacks the pair {a}-{b} ({grouping.name} needs every pair of "
                                 f"{', '.join(grouping.rois)}): {rerun}")
    canonical = {}
    for (a, b), flipped in orientation.items():
        canonical[(a, b)] = ((b, a) if flipped else (a, b), flipped)
    n_controlling: dict[tuple[int, str, int], int] = {}
    pair_index = {p: i for i, p in enumerate(grouping.pairs)}
    heldout = set()
    for row in uni["n_controlling"]:
        key = (row["roi_1"], row["roi_2"])
        if key not in canonical or row["fold"] == "all":
            continue
        pair, flipped = canonical[key]
        subject = int(row["fold"].removeprefix("sub-"))
        heldout.add(subject)
        condition = REVERSED[row["condition"]] if flipped else row["condition"]
        n_controlling[(subject, condition, pair_index[pair])] = int(row["n"])
    if not heldout:
        raise RoiGroupsError(f"study {url} has no held-out folds (it was run with --no-cv or one subject): "
                             f"the follow-up scores held-out subjects; {rerun}")
    controlling = []
    for row in _read_rows(fs, posixpath.join(folder, "controlling.parquet")):
        key = (row["roi_1"], row["roi_2"])
        if key not in canonical or row["heldout_subject"] is None:
            continue
        pair, flipped = canonical[key]
        controlling.append(dict(row, pair=pair_index[pair],
                                condition=REVERSED[row["condition"]] if flipped else row["condition"]))
    baselines = [row for row in _read_rows(fs, posixpath.join(folder, "baselines.parquet"))
                 if row["roi"] in grouping.rois and row["heldout_subject"] is not None]
    return Study(url=url, summary=summary, responses=str(summary.get("responses") or config.get("responses") or ""),
                 model_id=config.get("model_id", "fmri-nsd-fwrf"),
                 subjects=tuple(int(s) for s in config.get("subjects", sorted(heldout))),
                 heldout=tuple(sorted(heldout)), unions=dict(config.get("roi_unions") or {}),
                 threshold=float(config.get("ncsnr_threshold", 0.5)), seed=int(summary.get("seed", 0)),
                 controlling=controlling, baselines=baselines, n_controlling=n_controlling)


def image_numbers(images: Any, shards: Sequence[str], positions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Numbers, in a freshly read ImageIndex, of images given as (shard, position in shard); -1 if absent."""
    code = {name: j for j, name in enumerate(images.shards)}
    shard_ids = np.array([code.get(s, -1) for s in shards], dtype=np.int64)
    wanted_positions = np.asarray(positions, dtype=np.int64)
    numbers = np.full(shard_ids.size, -1, dtype=np.int64)
    for j in np.unique(shard_ids[shard_ids >= 0]):
        lo, hi = int(images.offsets[j]), int(images.offsets[j + 1])
        local = images.positions[lo:hi].astype(np.int64)
        order = np.argsort(local, kind="stable")
        ordered = local[order]
        wanted = np.flatnonzero(shard_ids == j)
        at = np.searchsorted(ordered, wanted_positions[wanted])
        hit = at < ordered.size
        hit[hit] = ordered[at[hit]] == wanted_positions[wanted][hit]
        numbers[wanted[hit]] = lo + order[at[hit]]
    return numbers


def check_shard_commits(study: Study, url: str, storage=None) -> None:
    """Refuse responses whose shards were committed again after the study read them.

    A regeneration with other weights keeps every key and position, so the key check alone
    accepts it; the commit of each shard (its `_done` marker's run and time), as the study's
    summary.json records it under `shard_commits`, tells the two outputs apart. Studies that
    predate that record keep the key check only.
    """
    from berg_scale.io.output_store import OutputStore, read_done_markers

    recorded = study.summary.get("shard_commits")
    if not isinstance(recorded, Mapping) or not recorded:
        return
    markers = read_done_markers(OutputStore(url, storage), recorded)
    fix = "rerun the RNC study on the new responses, or point --responses at the original output"
    for shard in sorted(recorded):
        expected = recorded[shard] if isinstance(recorded[shard], Mapping) else {}
        marker = markers.get(shard)
        if marker is None:
            raise RoiGroupsError(f"responses {url} have no committed shard {shard}, which study {study.url} "
                                 f"read: {fix}")
        changed = [k for k in ("run_id", "committed_at") if k in expected and marker.get(k) != expected[k]]
        read = study.summary.get("responses")
        if changed and isinstance(read, str) and not _same_location(read, url):
            raise RoiGroupsError(
                f"responses {url} are not the output study {study.url} read ({read}): their shard "
                f"{shard} was committed by another run ({_commit_text(expected)} then, "
                f"{_commit_text(marker)} here): point --responses at {read}, or rerun the RNC study "
                f"on {url}")
        if changed:
            raise RoiGroupsError(
                f"responses {url}: shard {shard} was committed again after study {study.url} read it "
                f"({_commit_text(expected)} then, {_commit_text(marker)} now): {fix}")


def _same_location(a: str, b: str) -> bool:
    """Whether two output URLs name one place (local paths compared as absolute paths)."""
    import os

    from berg_scale.io.storage import is_remote

    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _commit_text(commit: Mapping[str, Any]) -> str:
    """'run R at 2026-12-02 03:11:33 UTC' of a shard commit, for the error that compares two."""
    import datetime

    parts = [f"run {commit['run_id']}"] if commit.get("run_id") else []
    at = commit.get("committed_at")
    if isinstance(at, (int, float)):
        stamp = datetime.datetime.fromtimestamp(float(at), datetime.timezone.utc)
        parts.append(f"at {stamp:%Y-%m-%d %H:%M:%S} UTC")
    return " ".join(parts) or "unrecorded commit"


# --------------------------------------------------------------------------- the analysis


@dataclass
class GroupResult:
    grouping: PairGrouping
    study: Study
    subjects: tuple[int, ...]  # held-out subjects
    pair_rows: list[dict]
    group_rows: list[dict]
    trend_rows: list[dict]
    correlation_rows: list[dict]
    summary: dict


def analyse(
    study: Study,
    grouping: PairGrouping,
    responses: str | None = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    n_correlation_permutations: int = DEFAULT_CORRELATION_PERMUTATIONS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    alpha: float = 0.05,
    chance: float = 0.05,
    seed: int | None = None,
    storage=None,
    log=lambda message: None,
) -> GroupResult:
    """Scores, group means, statistics and nulls for every held-out subject of the study."""
    from berg_scale.rnc.responses import ResponseStore

    grouping.check()
    seed = study.seed if seed is None else int(seed)
    url = responses or study.responses
    if not url:
        raise RoiGroupsError(f"study {study.url} does not record its responses: pass --responses")
    check_shard_commits(study, url, storage)
    store = ResponseStore(url, storage)
    data = store.read_univariate(study.model_id, study.heldout, grouping.rois, study.unions or {}, study.threshold)
    values = data.values  # (N, S, R) in grouping ROI order
    slot = {s: i for i, s in enumerate(data.subjects)}
    pairs = grouping.pairs
    pair_slots = [(grouping.rois.index(a), grouping.rois.index(b)) for a, b in pairs]
    membership, start = [], 0
    for _, members in grouping.groups:
        membership.append(list(range(start, start + len(members))))
        start += len(members)
    group_of = {pi: g for g, members in enumerate(membership) for pi in members}
    labels = [label for label, _ in grouping.groups]

    rows_all = study.controlling + study.baselines
    numbers = image_numbers(data.images, [r["shard"] for r in rows_all], [r["index"] for r in rows_all])
    if (numbers < 0).any():
        bad = rows_all[int(np.flatnonzero(numbers < 0)[0])]
        raise RoiGroupsError(f"image {bad['key']} (shard {bad['shard']}, index {bad['index']}) of study {study.url} "
                             f"is not among the committed ok rows of {url}: pass the --responses the study was run on")
    keys = store.keys_for(data.images, numbers)
    mismatch = [i for i, (k, r) in enumerate(zip(keys, rows_all)) if k != r["key"]]
    if mismatch:
        r = rows_all[mismatch[0]]
        raise RoiGroupsError(f"responses {url} have key {keys[mismatch[0]]!r} where study {study.url} has "
                             f"{r['key']!r} (shard {r['shard']}, index {r['index']}): pass the --responses the study was run on")
    for row, number in zip(rows_all, numbers):
        row["_image"] = int(number)

    pair_rows, group_rows, trend_rows, correlation_rows = [], [], [], []
    per_subject_groups: dict[str, list[np.ndarray]] = {c: [] for c in CONDITIONS}
    per_subject_trend: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    corr_groups, corr_trend = [], []
    finite = np.isfinite(values).all(axis=(1, 2))
    n_used = int(finite.sum())
    if n_used < 3:
        raise RoiGroupsError(f"responses {url} have {n_used} images with finite responses in "
                             f"{', '.join(grouping.rois)}: too few for correlations")
    for subject in study.heldout:
        sets = _subject_sets(study, subject, grouping)
        block = values[sets.images, slot[subject], :].astype(np.float64)  # (K, R)

        def score_statistic(blocks: np.ndarray, sets=sets) -> np.ndarray:
            per_pair = pair_scores(blocks, sets, pair_slots).mean(axis=-1)  # (b, C, P)
            return group_statistic(group_means(per_pair, membership))  # (b, C)

        observed_pairs = pair_scores(block[None], sets, pair_slots)[0]  # (C, P, 2)
        observed_groups = group_means(observed_pairs.mean(axis=-1), membership)  # (C, G)
        observed = group_statistic(observed_groups)
        null = np.empty((0, len(CONDITIONS)))
        if n_permutations > 0:
            rng = stream(seed, f"{grouping.name} score null", subject)
            null = null_of(rng, block, n_permutations, score_statistic)
        p_values = np.array([
            permutation_p_value(null[:, ci], float(observed[ci]), expected_direction(c)) if null.size else np.nan
            for ci, c in enumerate(CONDITIONS)])
        fdr = benjamini_hochberg(p_values, alpha)
        for ci, condition in enumerate(CONDITIONS):
            for pi, (a, b) in enumerate(pairs):
                n_ctrl = sets.controlling.get((condition, pi), np.empty(0)).size
                pair_rows.append({"subject": subject, "condition": condition, "roi_1": a, "roi_2": b,
                                  "group": labels[group_of[pi]], "n_controlling": int(n_ctrl),
                                  "score_roi_1": float(observed_pairs[ci, pi, 0]),
                                  "score_roi_2": float(observed_pairs[ci, pi, 1]),
                                  "score": float(observed_pairs[ci, pi].mean())})
            for g, label in enumerate(labels):
                n_pairs = int(np.isfinite(observed_pairs[ci, membership[g], 0]).sum())
                group_rows.append({"measure": "score", "condition": condition, "subject": subject, "group": label,
                                   "position": g + 1, "n_pairs": n_pairs, "value": float(observed_groups[ci, g])})
            column = null[:, ci] if null.size else np.empty(0)
            column = column[np.isfinite(column)]
            trend_rows.append({"measure": "score", "condition": condition, "subject": subject,
                               "statistic": float(observed[ci]), "direction": expected_direction(condition),
                               "null_mean": float(column.mean()) if column.size else math.nan,
                               "null_sd": float(column.std()) if column.size > 1 else math.nan,
                               "n_permutations": int(column.size), "p_value": float(p_values[ci]),
                               "q_value": float(fdr.q_values[ci]), "significant": bool(fdr.significant[ci])})
            per_subject_groups[condition].append(observed_groups[ci])
            per_subject_trend[condition].append(float(observed[ci]))

        # correlations over every image with finite responses, and their per-image null
        all_images = values[finite, slot[subject], :].astype(np.float64)
        r_observed = correlations(all_images[None], pair_slots)[0]
        r_groups = group_means(r_observed, membership)
        r_trend = float(group_statistic(r_groups))
        r_null = np.empty(0)
        if n_correlation_permutations > 0:
            rng = stream(seed, f"{grouping.name} correlation null", subject)
            r_null = null_of(rng, all_images, n_correlation_permutations,
                             lambda blocks: group_statistic(group_means(correlations(blocks, pair_slots), membership)))
        p = permutation_p_value(r_null, r_trend, "greater") if r_null.size else math.nan
        for pi, (a, b) in enumerate(pairs):
            correlation_rows.append({"subject": subject, "roi_1": a, "roi_2": b, "group": labels[group_of[pi]],
                                     "pearson_r": float(r_observed[pi]), "n_images": n_used})
        for g, label in enumerate(labels):
            group_rows.append({"measure": "pearson_r", "condition": None, "subject": subject, "group": label,
                               "position": g + 1, "n_pairs": len(membership[g]), "value": float(r_groups[g])})
        finite_null = r_null[np.isfinite(r_null)]
        trend_rows.append({"measure": "pearson_r", "condition": None, "subject": subject, "statistic": r_trend,
                           "direction": "greater",
                           "null_mean": float(finite_null.mean()) if finite_null.size else math.nan,
                           "null_sd": float(finite_null.std()) if finite_null.size > 1 else math.nan,
                           "n_permutations": int(finite_null.size), "p_value": float(p), "q_value": math.nan,
                           "significant": bool(np.isfinite(p) and p <= alpha)})
        corr_groups.append(r_groups)
        corr_trend.append(r_trend)
        log(f"sub-{subject:02d}: " + ", ".join(
            f"{c} T={per_subject_trend[c][-1]:+.3f} (p={p_values[ci]:.2g})" for ci, c in enumerate(CONDITIONS))
            + f"; correlation T={r_trend:+.3f} (p={p:.2g})")

    heldout = study.heldout
    conditions_summary = {}
    for condition in CONDITIONS:
        table = np.column_stack([np.array(per_subject_groups[condition]), per_subject_trend[condition]])
        conditions_summary[condition] = _across_subjects(
            table, labels, [r for r in trend_rows if r["condition"] == condition], n_bootstrap, chance,
            stream(seed, f"{grouping.name} bootstrap", condition), expected_direction(condition))
    corr_table = np.column_stack([np.array(corr_groups), corr_trend])
    correlation_summary = _across_subjects(
        corr_table, labels, [r for r in trend_rows if r["measure"] == "pearson_r"], n_bootstrap, chance,
        stream(seed, f"{grouping.name} bootstrap", "correlation"), "greater")
    summary = {
        "experiment": grouping.name,
        "definition": __doc__.split("\n\n")[1],
        "statistic": grouping.statistic_label,
        "rois": list(grouping.rois),
        "groups": {label: [f"{a}-{b}" for a, b in members] for label, members in grouping.groups},
        "study": study.url,
        "responses": url,
        "model_id": study.model_id,
        "heldout_subjects": list(heldout),
        "n_images": int(values.shape[0]),
        "n_images_correlation": n_used,
        "conditions": conditions_summary,
        "correlation": correlation_summary,
        "parameters": {"permutations": n_permutations, "correlation_permutations": n_correlation_permutations,
                       "bootstrap": n_bootstrap, "alpha": alpha, "chance": chance, "seed": seed,
                       "fdr": "Benjamini-Hochberg over the 4 conditions within each subject",
                       "correlation_test": "uncorrected alpha"},
    }
    return GroupResult(grouping, study, heldout, pair_rows, group_rows, trend_rows, correlation_rows, summary)


def _subject_sets(study: Study, subject: int, grouping: PairGrouping) -> SubjectSets:
    base_rows = [r for r in study.baselines if r["heldout_subject"] == subject]
    ctrl_rows = [r for r in study.controlling if r["heldout_subject"] == subject]
    base_images = []
    for roi in grouping.rois:
        images = np.array([r["_image"] for r in base_rows if r["roi"] == roi], dtype=np.int64)
        if images.size == 0:
            raise RoiGroupsError(f"study {study.url} has no baseline images of {roi} for held-out subject "
                                 f"{subject}: rerun the univariate study with --rois {' '.join(grouping.rois)}")
        base_images.append(images)
    ctrl_images: dict[tuple[str, int], list[int]] = {}
    for row in ctrl_rows:
        ctrl_images.setdefault((row["condition"], row["pair"]), []).append(row["_image"])
    union = np.unique(np.concatenate(base_images + [np.asarray(v, dtype=np.int64) for v in ctrl_images.values()]))
    for (condition, pi), image_list in ctrl_images.items():
        expected = study.n_controlling.get((subject, condition, pi))
        if expected is not None and expected != len(image_list):
            raise RoiGroupsError(f"study {study.url}: controlling.parquet has {len(image_list)} images for "
                                 f"{grouping.pairs[pi][0]}-{grouping.pairs[pi][1]} {condition} of sub-{subject:02d} "
                                 f"but summary.json says {expected}: the study output is incomplete, rerun it")
    return SubjectSets(
        subject=subject, images=union,
        baselines=tuple(np.searchsorted(union, b) for b in base_images),
        controlling={k: np.searchsorted(union, np.asarray(v, dtype=np.int64)) for k, v in ctrl_images.items()},
    )


def _subjects_behind(value: Mapping[str, Any], every: int) -> str:
    """` (n=k)` after a mean that fewer than all subjects define, else nothing."""
    n = value.get("n_subjects")
    return f" (n={n})" if isinstance(n, int) and n != every else ""


def _some_means_partial(summary: Mapping[str, Any], every: int) -> bool:
    blocks = [*summary["conditions"].values(), summary["correlation"]]
    values = [v for block in blocks for v in [*block["groups"].values(), block["statistic"]]]
    return any(_subjects_behind(v, every) for v in values)


def _across_subjects(table: np.ndarray, labels: Sequence[str], trend_rows: Sequence[Mapping[str, Any]],
                     n_bootstrap: int, chance: float, rng: np.random.Generator, direction: str) -> dict:
    """Means over subjects with bootstrap CIs (groups, then the statistic) and the binomial test."""
    low, high = bootstrap_ci(table, n_bootstrap, rng)
    k = sum(bool(r["significant"]) for r in trend_rows)
    n = len(trend_rows)
    defined = np.isfinite(table)
    means = [float(np.nanmean(table[:, j])) if defined[:, j].any() else math.nan for j in range(table.shape[1])]
    counts = [int(defined[:, j].sum()) for j in range(table.shape[1])]  # subjects behind each mean
    return {
        "groups": {label: {"mean": means[g], "ci": [float(low[g]), float(high[g])], "n_subjects": counts[g]}
                   for g, label in enumerate(labels)},
        "statistic": {"mean": means[-1], "ci": [float(low[-1]), float(high[-1])], "n_subjects": counts[-1]},
        "expected": "first group higher (statistic > 0)" if direction == "greater" else
                    "first group lower (statistic < 0)",
        "p_values": {f"sub-{int(r['subject']):02d}": r["p_value"] for r in trend_rows},
        "n_subjects": n,
        "n_significant": int(k),
        "binomial_p": binomial_tail(int(k), n, chance),
    }


# --------------------------------------------------------------------------- outputs


def write_outputs(result: GroupResult, out: str, storage=None, figures: bool = True) -> list[str]:
    """Parquet tables, summary.json and the figure (PNG and SVG) under `out`; returns the URLs."""

    import pyarrow as pa


    schemas = {
        "groups": pa.schema([("measure", pa.string()), ("condition", pa.string()), ("subject", pa.int64()),
                             ("group", pa.string()), ("position", pa.int64()), ("n_pairs", pa.int64()),
                             ("value", pa.float64())]),
    }
    tables = {name: pa.Table.from_pylist(rows, schema=schemas.get(name))
              for name, rows in (("pair_scores", result.pair_rows), ("groups", result.group_rows),
                                 ("statistics", result.trend_rows), ("correlations", result.correlation_rows))}
    drawn = {result.grouping.name: group_figure(result)} if figures else {}
    return write_experiment_outputs(out, storage, tables, drawn, dict(result.summary),
                                    known=known_outputs(result.grouping))


def known_outputs(grouping: PairGrouping) -> set[str]:
    """Every file a follow-up of `grouping` writes, over univariate and multivariate studies alike:
    a rerun of either kind into the same --out removes what the other left."""
    return output_names(TABLES, (grouping.name, f"{grouping.name}-multivariate"))


def _format_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def _means_and_errors(stats: Mapping[str, Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Group means and their (2, groups) distances to the CI bounds (0 where undefined)."""
    means = np.array([stats["groups"][g]["mean"] for g in labels], dtype=float)
    cis = np.array([stats["groups"][g]["ci"] for g in labels], dtype=float)
    err = np.abs(np.vstack([means - cis[:, 0], cis[:, 1] - means]))
    return means, np.where(np.isfinite(err), err, 0.0)


def group_ticks(grouping: Any) -> tuple[list[str], list[str]]:
    """Group labels, and tick labels naming each group's pairs two to a line."""
    labels = [label for label, _ in grouping.groups]
    ticks = [f"{label}\n" + "\n".join(", ".join(f"{a}-{b}" for a, b in members[i:i + 2])
                                      for i in range(0, len(members), 2))
             for label, members in grouping.groups]
    return labels, ticks


def group_figure(result: GroupResult) -> Any:
    """Left: score per group and condition (mean over subjects, 95% CI); right: Pearson r per group.

    Sized for a 7.2-inch (two-column) print width, so the fonts are their printed size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouping, summary = result.grouping, result.summary
    labels, ticks = group_ticks(grouping)
    x = np.arange(1, len(labels) + 1)
    n_subjects = len(result.subjects)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 5.4), gridspec_kw={"width_ratios": [1.2, 1]})
    fig.subplots_adjust(left=0.09, right=0.985, top=0.88, bottom=0.42, wspace=0.3)
    offsets = np.linspace(-0.12, 0.12, len(CONDITIONS))
    for (condition, stats), dx in zip(summary["conditions"].items(), offsets):
        means, err = _means_and_errors(stats, labels)
        kind = "align" if condition in ALIGN else "disentangle"
        left.errorbar(x + dx, means, yerr=err, color=CONDITION_COLOURS[condition], marker="o", ms=4, lw=1.4,
                      capsize=2.5, label=f"{condition} ({kind}): {stats['n_significant']}/{stats['n_subjects']}, "
                                         f"p={_format_p(stats['binomial_p'])}")
    left.set_ylabel("|controlling − baseline| response (z)", fontsize=8.5)
    left.set_title(f"Control strength ({n_subjects} held-out subjects)", fontsize=9)
    left.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.34),
                title="condition: subjects significant, binomial p", title_fontsize=7)
    corr = summary["correlation"]
    per_subject: dict[int, dict[str, float]] = {}
    for row in result.group_rows:
        if row["measure"] == "pearson_r":
            per_subject.setdefault(row["subject"], {})[row["group"]] = row["value"]
    for i, (_, values) in enumerate(sorted(per_subject.items())):
        right.plot(x, [values[g] for g in labels], color="0.7", lw=0.8, marker=".",
                   label="single subjects" if i == 0 else None)
    means, err = _means_and_errors(corr, labels)
    right.errorbar(x, means, yerr=err, color="k", marker="o", ms=4, lw=1.6, capsize=2.5,
                   label=f"mean: {corr['n_significant']}/{corr['n_subjects']}, p={_format_p(corr['binomial_p'])}")
    right.set_ylabel("Pearson r of the pair's responses", fontsize=8.5)
    right.set_title(f"Response correlation ({summary['n_images_correlation']:,} images)", fontsize=9)
    right.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.34),
                 title="subjects significant, binomial p", title_fontsize=7)
    for ax in (left, right):
        ax.set_xticks(x, ticks)
        ax.set_xlim(0.6, len(labels) + 0.4)
        ax.set_xlabel(grouping.axis_label, fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(grouping.title, fontsize=10)
    fig.text(0.5, 0.01, f"Means over subjects with 95% bootstrap CIs. Statistic {grouping.statistic_label}, "
                        "one-sided per-image ROI-permutation test per subject;\nBH over the 4 conditions "
                        "(left), uncorrected (right); binomial test across subjects.",
             ha="center", va="bottom", fontsize=7, color="0.25")
    return fig


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser, grouping: PairGrouping) -> None:
    parser.add_argument("--study", required=True, metavar="DIR",
                        help=f"output (--out) of a cross-validated `berg-scale rnc univariate` (or multivariate) "
                             f"over {' '.join(grouping.rois)}")
    parser.add_argument("--kind", choices=["auto", "univariate", "multivariate"], default="auto",
                        help="which RNC results of the study to group (auto: univariate when the study has them, "
                             "else multivariate); multivariate uses the study's saved nulls, not --responses")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tables, summary and figures")
    parser.add_argument("--responses", metavar="OUTPUT",
                        help="generate output the study read (default: the one its summary.json records)")
    parser.add_argument("--permutations", type=int, metavar="N", default=DEFAULT_PERMUTATIONS,
                        help="iterations of the score null per subject (0: skip)")
    parser.add_argument("--correlation-permutations", type=int, metavar="N", default=DEFAULT_CORRELATION_PERMUTATIONS,
                        help="iterations of the correlation null per subject; each permutes every image (0: skip)")
    parser.add_argument("--bootstrap", type=int, metavar="N", default=DEFAULT_BOOTSTRAP,
                        help="bootstrap resamples of subjects for the 95%% CIs")
    parser.add_argument("--alpha", type=float, metavar="A", default=0.05, help="FDR level, and the correlation test's alpha")
    parser.add_argument("--chance", type=float, metavar="P", default=0.05, help="per-subject rate of the binomial test")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the nulls and bootstraps (default: the study's)")
    add_no_figures_option(parser)
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)


def run(args: argparse.Namespace, grouping: PairGrouping) -> int:
    from berg_scale.io.storage import StorageOptions

    for name in ("permutations", "correlation_permutations", "bootstrap"):
        if getattr(args, name) < 0:
            raise RoiGroupsError(f"--{name.replace('_', '-')} must be 0 or more")
    if not 0 < args.alpha < 1 or not 0 < args.chance < 1:
        raise RoiGroupsError("--alpha and --chance must lie between 0 and 1")
    if args.seed is not None and args.seed < 0:
        raise RoiGroupsError("--seed must be a non-negative integer")
    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    kind = getattr(args, "kind", "auto")
    if kind != "univariate":
        from berg_scale.experiments import roi_groups_multivariate

        if kind == "multivariate" or roi_groups_multivariate.study_kind(args.study, storage) == "multivariate":
            return roi_groups_multivariate.run(args, grouping, storage)
    started = time.monotonic()
    study = read_study(args.study, grouping, storage)
    result = analyse(study, grouping, args.responses, args.permutations, args.correlation_permutations,
                     args.bootstrap, args.alpha, args.chance, args.seed, storage,
                     log=lambda message: print(message, flush=True))
    files = write_outputs(result, args.out, storage, figures=not args.no_figures)
    summary = result.summary
    print(f"{grouping.name}: {len(result.subjects)} held-out subjects, statistic {grouping.statistic_label}")
    for condition, stats in [*summary["conditions"].items(), ("correlation", summary["correlation"])]:
        every = len(result.subjects)
        means = ", ".join(f"{g} {v['mean']:.3f}{_subjects_behind(v, every)}" for g, v in stats["groups"].items())
        print(f"  {condition:<12} {means}; T={stats['statistic']['mean']:+.3f}"
              f"{_subjects_behind(stats['statistic'], every)} significant in {stats['n_significant']}/"
              f"{stats['n_subjects']} (binomial p={_format_p(stats['binomial_p'])})")
    if _some_means_partial(summary, len(result.subjects)):
        print("  (n=k: a mean over the k subjects whose study found controlling images for it)")
    print(f"wrote {len(files)} files to {args.out} ({time.monotonic() - started:.1f} s)")
    return 0
