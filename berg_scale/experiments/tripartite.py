"""Tripartite organisation of visual cortex: which image category each fsaverage vertex prefers.

Reads the fsaverage columns of a `generate` output (`fmri-nsd_fsaverage-vit_b_32/sub-XX/...`,
whole-brain and/or ROI columns) and a label table, and for every subject and for the
subject average computes:

  category mean   m[s, c, v] = mean response of vertex v over the labelled images of
                  category c (error rows and unlabelled rows left out, and reported);
  preference      pref[s, v] = argmax over c of m[s, c, v] (ties: first category in order);
  subject average m[mean, c, v] = mean of m[s, c, v] over the subjects whose responses
                  contain v; pref[mean, v] = its argmax (the paper reports averages);
  ROI share       share[s, r, c] = #{v in ROI r : pref[s, v] = c} / #ROI r. A subject's ROI
                  is the vertex set (hemisphere, vertex) of its ROI column in readouts.json,
                  i.e. BERG's metadata ROI; FFA = FFA-1 u FFA-2, FBA = FBA-1 u FBA-2; the
                  average's ROI is the union of the subjects' ROIs.

Permutation test per ROI: the statistic is the top share, max over c of share[s, r, c]
(for the observed data, the share of c*, the category the ROI prefers most). The null
shuffles the labels across the labelled images (category sizes kept; one shuffle for all
subjects, so the average is tested with the same shuffle), recomputes the preferences and
takes the top share again, whichever category it is: c* was picked as the largest, and
comparing it with a fixed category's null share would make p too small under the null.
p = (1 + #{null >= observed}) / (1 + N permutations), reported on the c* row. Strongly
correlated vertices widen the null (a whole ROI tends to flip together), which costs power,
not validity.

Memory: category sums are accumulated shard by shard (categories x vertices float64 per
subject), so any number of images streams. The permutation test keeps the labelled
images' responses of the ROI vertices only, float32: 4 bytes x labelled images x ROI
vertices x subjects (145 x 3 images, 8 subjects, 20,000 ROI vertices: 280 MB), refused
above --permutation-memory-gib; --permutations 0 skips the test.
"""

from __future__ import annotations

import argparse
import json
import math
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.experiments.labels import (
    LabelMatch,
    LabelTable,
    match_labels,
    read_label_table,
)
from berg_scale.experiments.outputs import add_no_figures_option
from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.io.output_store import OutputStore, done_shards, read_readouts
from berg_scale.io.storage import StorageOptions, filesystem_for
from berg_scale.models.families import FSAVERAGE, family_name
from berg_scale.rnc.responses import fixed_size_list_to_numpy
from berg_scale.subject_ids import subject_argument

MODEL_ID = "fmri-nsd_fsaverage-vit_b_32"
DEFAULT_ROIS: tuple[str, ...] = ("FFA", "OFA", "EBA", "FBA", "PPA", "OPA", "RSC")
UNIONS: dict[str, tuple[str, ...]] = {"FFA": ("FFA-1", "FFA-2"), "FBA": ("FBA-1", "FBA-2")}
MEAN = "mean"  # the subject label of the subject average
HEMIS = ("lh", "rh")
HEMI_STRIDE = 1 << 32  # vertex id = hemisphere code * stride + vertex index
FSAVERAGE5_VERTICES = 10_242
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MISSING_GREY = "#c8c8c8"


class TripartiteError(BergScaleError):
    """The responses, labels or options do not allow the tripartite analysis."""


# --------------------------------------------------------------------------- columns and ROIs


@dataclass(frozen=True)
class FsColumn:
    """One fsaverage responses column: its subject, ROI label (None for whole-brain) and vertices."""

    name: str
    subject: int
    roi: str | None
    ids: np.ndarray  # int64 vertex ids (hemisphere code * HEMI_STRIDE + vertex), column order


def vertex_ids(hemispheres: Sequence[str], vertices: Sequence[int]) -> np.ndarray:
    """Vertex ids that order the left hemisphere first, then by vertex index."""
    hemi = np.asarray(hemispheres).astype(str)
    bad = sorted(set(hemi.tolist()) - set(HEMIS))
    if bad:
        raise TripartiteError(f"unknown hemisphere {bad[0]!r} in readouts.json (expected lh or rh)")
    return (hemi == "rh").astype(np.int64) * HEMI_STRIDE + np.asarray(vertices, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hemisphere names, vertex indices) of vertex ids."""
    return np.where(ids >= HEMI_STRIDE, "rh", "lh"), ids % HEMI_STRIDE


def _roi_label(name: str) -> str | None:
    label = name.split("/")[-1].split("@")[0]
    return None if label == "all" or label.startswith("sel-") else label


def fsaverage_columns(readouts: Mapping[str, Any] | None, output: str) -> dict[int, list[FsColumn]]:
    """Subject -> fsaverage responses columns with vertex coordinates, from readouts.json."""
    found: dict[int, list[FsColumn]] = {}
    for entry in (readouts or {}).get("columns", []):
        name = str(entry.get("name", ""))
        fsaverage = family_name(entry.get("model_id")) == FSAVERAGE.name
        if not fsaverage or entry.get("kind", "responses") != "responses" or ":" in name:
            continue
        coords = entry.get("coords") or {}
        if "hemisphere" not in coords or "vertex" not in coords:
            continue
        ids = vertex_ids(coords["hemisphere"], coords["vertex"])
        subject = int(entry["subject"])
        found.setdefault(subject, []).append(FsColumn(name, subject, _roi_label(name), ids))
    if not found:
        raise TripartiteError(
            f"{output} has no {MODEL_ID} responses columns with vertex coordinates in readouts.json: "
            f"generate with the fsaverage model (outputs: [responses])"
        )
    return found


def resolve_rois(
    columns: Mapping[int, list[FsColumn]], subjects: Sequence[int], rois: Sequence[str] | None
) -> tuple[list[str], dict[int, dict[str, np.ndarray]], dict[str, list[str]]]:
    """(ROI names, subject -> ROI -> sorted vertex ids, ROI -> parts used).

    Without `rois`, the paper's face/body/place ROIs that every subject has; an asked-for
    ROI that a subject lacks is an error naming the ROIs it has.
    """
    def parts_of(roi: str, have: Mapping[str, np.ndarray]) -> list[str] | None:
        if roi in have:
            return [roi]
        parts = UNIONS.get(roi)
        if parts and all(p in have for p in parts):
            return list(parts)
        return None

    have_by_subject = {
        s: {c.roi: c.ids for c in columns[s] if c.roi is not None} for s in subjects
    }
    if rois is None:
        chosen = [r for r in DEFAULT_ROIS if all(parts_of(r, have_by_subject[s]) for s in subjects)]
        if not chosen:
            known = sorted({r for have in have_by_subject.values() for r in have})
            raise TripartiteError(
                "none of the face/body/place ROIs (FFA-1, FFA-2, OFA, EBA, FBA-1, FBA-2, PPA, OPA, RSC) "
                f"is an fsaverage ROI column of every subject (columns have: {', '.join(known) or 'no ROI'}): "
                "add them to the generate config's rois, or name --rois"
            )
    else:
        chosen = list(dict.fromkeys(rois))
    sets: dict[int, dict[str, np.ndarray]] = {}
    used: dict[str, list[str]] = {}
    for s in subjects:
        have = have_by_subject[s]
        sets[s] = {}
        for roi in chosen:
            parts = parts_of(roi, have)
            if parts is None:
                need = " and ".join(UNIONS.get(roi, (roi,)))
                raise TripartiteError(
                    f"ROI {roi!r} is not in the fsaverage metadata recorded for subject {s} "
                    f"(readouts.json has ROI columns: {', '.join(sorted(have)) or 'none'}): "
                    f"generate {need} for sub-{s:02d}"
                )
            ids = np.unique(np.concatenate([have[p] for p in parts]))
            if ids.size == 0:
                raise TripartiteError(f"ROI {roi!r} has no vertices for subject {s}")
            sets[s][roi] = ids
            used[roi] = parts
    return chosen, sets, used


@dataclass
class _SubjectPlan:
    """Where each of a subject's vertices is read from: first column covering it (widest first)."""

    ids: np.ndarray  # sorted unique vertex ids of the subject
    reads: list[tuple[str, np.ndarray, np.ndarray]]  # (column, positions in column, positions in ids)


def plan_reads(columns: Sequence[FsColumn]) -> _SubjectPlan:
    ordered = sorted(columns, key=lambda c: (-c.ids.size, c.name))
    ids = np.unique(np.concatenate([c.ids for c in ordered]))
    covered = np.zeros(ids.size, dtype=bool)
    reads = []
    for column in ordered:
        where = np.searchsorted(ids, column.ids)
        new = ~covered[where]
        _, first = np.unique(where, return_index=True)  # a column listing a vertex twice: read it once
        take = np.zeros(column.ids.size, dtype=bool)
        take[first] = True
        take &= new
        if take.any():
            reads.append((column.name, np.flatnonzero(take), where[take]))
            covered[where[take]] = True
    return _SubjectPlan(ids, reads)


# --------------------------------------------------------------------------- streaming


def _row_table(store: OutputStore, shard: str, columns: Sequence[str]) -> Any:
    """Columns of one shard, read through the filesystem rather than a Python file object,
    whose reads from pyarrow's threads can abort the interpreter at exit."""
    import pyarrow.parquet as pq

    return pq.read_table(store.response_path(shard), columns=list(columns), filesystem=store.fs)


@dataclass
class Accumulated:
    """Per-subject category sums over all labelled images, and ROI data for permutations."""

    categories: list[str]
    counts: np.ndarray  # (C,) labelled images per category
    ids: dict[int, np.ndarray]
    sums: dict[int, np.ndarray]  # (C, V) float64
    codes: np.ndarray  # (N,) category code of every labelled image, streaming order
    roi_data: dict[int, np.ndarray]  # (N, W) float32 responses of the subject's kept vertices
    roi_ids: dict[int, np.ndarray]  # (W,) the kept vertex ids (sorted)
    match: LabelMatch
    label_counts: dict[str, int] = field(default_factory=dict)  # every label of the used rows


def _too_few_categories(labels: LabelTable, categories: Sequence[str]) -> str:
    """The error for fewer than 2 categories, saying whether the table or --categories left so few."""
    kept = ", ".join(categories) or "none"
    if len(labels.labels) >= 2:
        return (f"the tripartite analysis needs at least 2 categories; --categories kept {kept} of the "
                f"{len(labels.labels)} labels of {labels.source} ({', '.join(labels.labels)}): name at least two")
    return (f"the tripartite analysis needs at least 2 categories; {labels.source} has only {kept}: "
            "label the images with two or more categories")


def accumulate(
    store: OutputStore,
    labels: LabelTable,
    plans: Mapping[int, _SubjectPlan],
    categories: Sequence[str] | None,
    keep_ids: Mapping[int, np.ndarray] | None,
    memory_limit_bytes: float,
) -> Accumulated:
    """Two passes over the committed shards: keys (to match labels), then responses, shard by shard."""
    import pyarrow as pa

    shards = sorted(done_shards(store))
    if not shards:
        raise TripartiteError(f"{store.url} has no committed shards (no _done/*.json): run `berg-scale generate` first")
    row_shards: list[str] = []
    keys: list[str] = []
    ok: list[bool] = []
    sizes = []
    for shard in shards:
        table = _row_table(store, shard, ["key", "shard", "status"])
        row_shards.extend(str(x) for x in table.column("shard").to_pylist())
        keys.extend(str(x) for x in table.column("key").to_pylist())
        ok.extend(x == "ok" for x in table.column("status").to_pylist())
        sizes.append(table.num_rows)
    match = match_labels(labels, row_shards, keys, ok)
    used_labels = [lab for lab in match.labels if lab is not None]
    label_counts: dict[str, int] = {}
    for lab in used_labels:
        label_counts[lab] = label_counts.get(lab, 0) + 1
    if categories is None:
        categories = labels.labels
    else:
        unknown = [c for c in categories if c not in labels.labels]
        if unknown:
            raise TripartiteError(f"category {unknown[0]!r} is not a label of {labels.source} "
                                  f"(labels: {', '.join(labels.labels)})")
    categories = list(dict.fromkeys(categories))
    if len(categories) < 2:
        raise TripartiteError(_too_few_categories(labels, categories))
    empty = [c for c in categories if label_counts.get(c, 0) == 0]
    if empty:
        raise TripartiteError(f"category {empty[0]!r} has no images in the committed responses "
                              f"({match.describe()}): check the label table's keys")
    code_of = {c: i for i, c in enumerate(categories)}
    row_codes = np.array([code_of.get(lab, -1) if lab is not None else -1 for lab in match.labels], dtype=np.int64)
    n_used = int((row_codes >= 0).sum())
    kept_cols: dict[int, np.ndarray] = {}
    if keep_ids is not None:
        for s, plan in plans.items():
            kept_cols[s] = np.searchsorted(plan.ids, keep_ids[s])
        need = 4.0 * n_used * sum(v.size for v in kept_cols.values())
        if need > memory_limit_bytes:
            raise TripartiteError(
                f"the permutation test would hold {need / 2**30:.1f} GiB of ROI responses "
                f"({n_used} images x {sum(v.size for v in kept_cols.values())} ROI vertices over subjects): "
                f"raise --permutation-memory-gib or skip it with --permutations 0"
            )
    C = len(categories)
    sums = {s: np.zeros((C, plan.ids.size), dtype=np.float64) for s, plan in plans.items()}
    roi_blocks: dict[int, list[np.ndarray]] = {s: [] for s in plans}
    code_blocks: list[np.ndarray] = []
    needed = sorted({name for plan in plans.values() for name, _, _ in plan.reads})
    start = 0
    for shard, size in zip(shards, sizes):
        codes = row_codes[start:start + size]
        start += size
        rows = np.flatnonzero(codes >= 0)
        if rows.size == 0:
            continue
        table = _row_table(store, shard, needed).take(pa.array(rows))
        codes = codes[rows]
        code_blocks.append(codes)
        onehot = np.zeros((C, rows.size), dtype=np.float64)
        onehot[codes, np.arange(rows.size)] = 1.0
        matrices = {name: fixed_size_list_to_numpy(table.column(name), name) for name in needed}
        for s, plan in plans.items():
            block = np.empty((rows.size, plan.ids.size), dtype=np.float32)
            for name, source, target in plan.reads:
                block[:, target] = matrices[name][:, source]
            sums[s] += onehot @ block.astype(np.float64)
            if s in kept_cols:
                roi_blocks[s].append(block[:, kept_cols[s]].copy())
    counts = np.bincount(np.concatenate(code_blocks), minlength=C).astype(np.int64)
    codes_all = np.concatenate(code_blocks)
    roi_data = {s: np.concatenate(b) for s, b in roi_blocks.items() if s in kept_cols}
    return Accumulated(categories, counts, {s: p.ids for s, p in plans.items()}, sums, codes_all,
                       roi_data, dict(keep_ids or {}), match, label_counts)


# --------------------------------------------------------------------------- analysis


def average_means(means: Mapping[int, np.ndarray], ids: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertex ids, (C, V) mean of the subjects' category means, subjects per vertex).

    A vertex's average is over the subjects whose responses include it.
    """
    union = np.unique(np.concatenate(list(ids.values())))
    C = next(iter(means.values())).shape[0]
    total = np.zeros((C, union.size), dtype=np.float64)
    n = np.zeros(union.size, dtype=np.int64)
    for s, m in means.items():
        where = np.searchsorted(union, ids[s])
        total[:, where] += m
        n[where] += 1
    return union, total / n, n


def shares(preferred: np.ndarray, ids: np.ndarray, roi_ids: np.ndarray, C: int) -> tuple[np.ndarray, int]:
    """(counts per category, n vertices) of the ROI vertices' preferences."""
    where = np.searchsorted(ids, roi_ids)
    if np.any(where >= ids.size) or np.any(ids[np.minimum(where, ids.size - 1)] != roi_ids):
        raise TripartiteError("an ROI vertex has no responses (readouts.json and responses disagree)")
    return np.bincount(preferred[where], minlength=C), int(roi_ids.size)


def permutation_pvalues(
    acc: Accumulated,
    subjects: Sequence[int],
    roi_sets: Mapping[Any, Mapping[str, np.ndarray]],
    n_permutations: int,
    seed: int,
) -> tuple[dict[tuple[Any, str], float], dict[tuple[Any, str], float]]:
    """(p-value, observed statistic) per (subject or MEAN, ROI); see the module docstring."""
    C = len(acc.categories)
    N = acc.codes.size
    counts = np.bincount(acc.codes, minlength=C).astype(np.float32)
    X = {s: acc.roi_data[s] for s in subjects}
    kept = {s: acc.roi_ids[s] for s in subjects}
    # Positions of every ROI vertex in each subject's kept columns (-1: the subject lacks it).
    index: dict[tuple[Any, str], dict[int, np.ndarray]] = {}
    for who, rois in roi_sets.items():
        for roi, ids in rois.items():
            entry = {}
            for s in (subjects if who == MEAN else [who]):
                where = np.searchsorted(kept[s], ids)
                where = np.minimum(where, kept[s].size - 1)
                entry[s] = np.where(kept[s][where] == ids, where, -1)
            index[(who, roi)] = entry
    width = max(x.shape[1] for x in X.values())
    batch = int(max(1, min(n_permutations, 2e7 // max(1, C * max(N, width)))))

    def statistics(code_batch: np.ndarray) -> dict[tuple[Any, str], np.ndarray]:
        B = code_batch.shape[0]
        onehot = np.zeros((B, C, N), dtype=np.float32)
        onehot[np.arange(B)[:, None], code_batch, np.arange(N)[None, :]] = 1.0
        onehot /= counts[None, :, None]
        means = {s: (onehot.reshape(B * C, N) @ X[s]).reshape(B, C, -1) for s in subjects}
        out = {}
        for (who, roi), entry in index.items():
            total: Any = 0.0
            n: Any = 0.0
            for s, where in entry.items():
                present = where >= 0
                total = total + np.where(present, means[s][:, :, np.maximum(where, 0)], 0.0)
                n = n + present
            pref = np.argmax(total / np.maximum(n, 1), axis=1)  # (B, |ROI|)
            share = np.stack([(pref == c).mean(axis=1) for c in range(C)], axis=1)  # (B, C)
            out[(who, roi)] = share.max(axis=1)
        return out

    observed = {k: float(v[0]) for k, v in statistics(acc.codes[None, :]).items()}
    exceed = {k: 0 for k in index}
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_permutations:
        B = min(batch, n_permutations - done)
        shuffled = rng.permuted(np.broadcast_to(acc.codes, (B, N)).copy(), axis=1)
        for k, v in statistics(shuffled).items():
            exceed[k] += int((v >= observed[k] - 1e-9).sum())
        done += B
    return {k: (1 + exceed[k]) / (1 + n_permutations) for k in index}, observed


@dataclass
class TripartiteResult:
    categories: list[str]
    counts: dict[str, int]
    subjects: list[int]
    rois: list[str]
    roi_parts: dict[str, list[str]]
    rows: list[dict[str, Any]]  # tripartite.parquet
    preferences: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # ids, pref, means, n_subj
    match: LabelMatch
    n_permutations: int
    seed: int


def analyse(
    output: str,
    labels: LabelTable,
    subjects: Sequence[int] | None = None,
    rois: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
    storage: StorageOptions | None = None,
    memory_limit_gib: float = 8.0,
) -> TripartiteResult:
    """Category means, preferences, ROI shares and permutation p-values (module docstring)."""
    store = OutputStore(output, storage)
    try:
        readouts = read_readouts(store)
    except ValueError as exc:
        raise TripartiteError(f"readouts.json in {output} is not valid JSON: {exc}") from None
    if readouts is None and not done_shards(store):
        raise TripartiteError(f"{output} has no committed shards and no readouts.json: check --responses")
    columns = fsaverage_columns(readouts, output)
    present = sorted(columns)
    if subjects is None:
        subjects = present
    subjects = list(dict.fromkeys(int(s) for s in subjects))
    for s in subjects:
        if s not in columns:
            raise TripartiteError(f"subject {s} is not in the fsaverage responses of {output} "
                                  f"(subjects: {', '.join(map(str, present))})")
    roi_names, roi_sets, parts = resolve_rois(columns, subjects, rois)
    plans = {s: plan_reads(columns[s]) for s in subjects}
    mean_sets = {r: np.unique(np.concatenate([roi_sets[s][r] for s in subjects])) for r in roi_names}
    keep = None
    if n_permutations > 0:
        all_roi = np.unique(np.concatenate(list(mean_sets.values())))
        keep = {s: np.intersect1d(all_roi, plans[s].ids) for s in subjects}
    acc = accumulate(store, labels, plans, categories, keep, memory_limit_gib * 2**30)
    C = len(acc.categories)
    means = {s: acc.sums[s] / acc.counts[:, None] for s in subjects}
    prefs: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for s in subjects:
        prefs[s] = (acc.ids[s], np.argmax(means[s], axis=0), means[s], np.ones(acc.ids[s].size, np.int64))
    union, avg, n_subj = average_means(means, acc.ids)
    prefs[MEAN] = (union, np.argmax(avg, axis=0), avg, n_subj)
    sets_by_who: dict[Any, dict[str, np.ndarray]] = {**{s: roi_sets[s] for s in subjects}, MEAN: mean_sets}
    table: dict[tuple[Any, str], tuple[np.ndarray, int]] = {}
    top: dict[tuple[Any, str], int] = {}
    for who, sets in sets_by_who.items():
        ids, pref = prefs[who][0], prefs[who][1]
        for roi, roi_ids in sets.items():
            n_pref, n_vert = shares(pref, ids, roi_ids, C)
            table[(who, roi)] = (n_pref, n_vert)
            top[(who, roi)] = int(np.argmax(n_pref))
    if n_permutations > 0:
        pvalues, _ = permutation_pvalues(acc, subjects, sets_by_who, n_permutations, seed)
    else:
        pvalues = {k: math.nan for k in table}
    rows = []
    for (who, roi), (n_pref, n_vert) in table.items():
        for c, category in enumerate(acc.categories):
            is_top = c == top[(who, roi)]
            rows.append({
                "subject": _subject_label(who),
                "roi": roi,
                "category": category,
                "n_vertices": n_vert,
                "n_preferring": int(n_pref[c]),
                "share": float(n_pref[c]) / n_vert,
                "top": is_top,
                "p_value": float(pvalues[(who, roi)]) if is_top else math.nan,
                "n_images": int(acc.counts[c]),
            })
    return TripartiteResult(acc.categories, {c: int(n) for c, n in zip(acc.categories, acc.counts)},
                            subjects, roi_names, parts, rows, prefs, acc.match, n_permutations, seed)


def _subject_label(who: Any) -> str:
    return MEAN if who == MEAN else f"sub-{int(who):02d}"


# --------------------------------------------------------------------------- outputs


def preference_table(result: TripartiteResult) -> Any:
    """preferences.parquet: one row per (subject or mean, vertex)."""
    import pyarrow as pa

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("subject", "hemisphere", "vertex", "preferred", "n_subjects")}
    mean_cols: dict[str, list[np.ndarray]] = {c: [] for c in result.categories}
    cats = np.array(result.categories, dtype=object)
    for who, (ids, pref, means, n_subj) in result.preferences.items():
        hemi, vertex = split_ids(ids)
        parts["subject"].append(np.full(ids.size, _subject_label(who), dtype=object))
        parts["hemisphere"].append(hemi.astype(object))
        parts["vertex"].append(vertex.astype(np.int64))
        parts["preferred"].append(cats[pref])
        parts["n_subjects"].append(n_subj.astype(np.int32))
        for c, category in enumerate(result.categories):
            mean_cols[category].append(means[c].astype(np.float64))
    arrays = {
        "subject": pa.array(np.concatenate(parts["subject"]).tolist(), pa.string()),
        "hemisphere": pa.array(np.concatenate(parts["hemisphere"]).tolist(), pa.string()),
        "vertex": pa.array(np.concatenate(parts["vertex"])),
        "preferred": pa.array(np.concatenate(parts["preferred"]).tolist(), pa.string()),
        "n_subjects": pa.array(np.concatenate(parts["n_subjects"])),
    }
    for category in result.categories:
        arrays[f"mean:{category}"] = pa.array(np.concatenate(mean_cols[category]))
    return pa.table(arrays)


def shares_table(result: TripartiteResult) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(result.rows, schema=pa.schema([
        ("subject", pa.string()), ("roi", pa.string()), ("category", pa.string()),
        ("n_vertices", pa.int64()), ("n_preferring", pa.int64()), ("share", pa.float64()),
        ("top", pa.bool_()), ("p_value", pa.float64()), ("n_images", pa.int64()),
    ]))


def roi_line(result: TripartiteResult, who: Any, roi: str) -> str:
    """'FFA: animals 75.3%, small 12.1%, big 12.6% (p=0.001)'."""
    label = _subject_label(who)
    rows = [r for r in result.rows if r["subject"] == label and r["roi"] == roi]
    text = ", ".join(f"{r['category']} {100 * r['share']:.1f}%" for r in rows)
    top = next(r for r in rows if r["top"])
    p = "" if math.isnan(top["p_value"]) else f" (p={_format_p(top['p_value'])})"
    return f"{roi}: {text}{p} [{rows[0]['n_vertices']} vertices]"


def _format_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def summary(result: TripartiteResult, args: Mapping[str, Any]) -> dict[str, Any]:
    mean_rows = [r for r in result.rows if r["subject"] == MEAN]
    per_roi = {}
    for roi in result.rois:
        rows = [r for r in mean_rows if r["roi"] == roi]
        top = next(r for r in rows if r["top"])
        per_roi[roi] = {
            "n_vertices": rows[0]["n_vertices"],
            "percent": {r["category"]: round(100 * r["share"], 4) for r in rows},
            "top_category": top["category"],
            "p_value": None if math.isnan(top["p_value"]) else top["p_value"],
            "parts": result.roi_parts[roi],
        }
    return {
        "experiment": "tripartite",
        "definition": "preferred category = argmax of per-category mean response per vertex; "
                      "subject average = mean of the subjects' category means, then argmax; "
                      "share = vertices of the ROI preferring the category / vertices of the ROI",
        "model_id": MODEL_ID,
        "subjects": result.subjects,
        "categories": result.categories,
        "images_per_category": result.counts,
        "rois": per_roi,
        "labels": result.match.report(),
        "parameters": {**dict(args), "permutations": result.n_permutations, "seed": result.seed},
    }


def _write(fs: Any, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as handle:
        handle.write(data)


TABLE_FILES = ("tripartite.parquet", "preferences.parquet", "summary.json")


def known_outputs() -> set[str]:
    """Every file the tripartite experiment writes (tables, summary and both figures)."""
    from berg_scale.experiments.tripartite_figures import FIGURE_FILES

    return {*TABLE_FILES, *FIGURE_FILES}


def write_outputs(result: TripartiteResult, out: str, args: Mapping[str, Any],
                  storage: StorageOptions | None = None, figures: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, str]:
    """Write the tables, summary and figures; returns name -> path.

    Files of an earlier run that this one does not rewrite (its figures, under --no-figures)
    are removed first, so that the folder's figures always show its tables.
    """
    import io

    import pyarrow.parquet as pq

    from berg_scale.experiments.outputs import remove_stale_outputs
    from berg_scale.experiments.tripartite_figures import FIGURE_FILES

    fs, root = filesystem_for(out, storage)
    if not out.startswith(("s3://", "s3a://")):
        fs.makedirs(root, exist_ok=True)
    writes = {*TABLE_FILES, *(FIGURE_FILES if figures else ())}
    remove_stale_outputs(fs, root, known_outputs(), writes, "tripartite", log)
    paths = {}
    for name, table in (("tripartite.parquet", shares_table(result)), ("preferences.parquet", preference_table(result))):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        paths[name] = posixpath.join(root, name)
        _write(fs, paths[name], buffer.getvalue())
    paths["summary.json"] = posixpath.join(root, "summary.json")
    _write(fs, paths["summary.json"], json.dumps(summary(result, args), indent=1, sort_keys=True).encode())
    if not figures:
        return paths
    from berg_scale.experiments import tripartite_figures

    for name, data in tripartite_figures.render(result).items():
        paths[name] = posixpath.join(root, name)
        _write(fs, paths[name], data)
    return paths


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, metavar="OUTPUT",
                        help="generate output with fsaverage columns (local folder or s3://)")
    parser.add_argument("--labels", required=True, metavar="TABLE",
                        help="CSV or Parquet with key (and optionally shard) and label columns "
                             "(the label column named by --label-column)")
    parser.add_argument("--label-column", default="label", metavar="NAME",
                        help="column of the label table holding the category (default: label)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tables, summary and figures")
    parser.add_argument("--subjects", type=subject_argument, nargs="+", help="default: every subject in the responses")
    parser.add_argument("--rois", nargs="+", help=f"default: those of {', '.join(DEFAULT_ROIS)} present "
                                                  "(FFA = FFA-1 + FFA-2, FBA = FBA-1 + FBA-2)")
    parser.add_argument("--categories", nargs="+", help="categories and their order (default: every label, sorted)")
    parser.add_argument("--permutations", type=int, default=1000, help="label permutations per ROI test (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    parser.add_argument("--permutation-memory-gib", type=float, default=8.0,
                        help="most memory the permutation test may hold for ROI responses")
    add_no_figures_option(parser)
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)


def run(args: argparse.Namespace) -> int:
    if args.permutations < 0:
        raise TripartiteError("--permutations must be 0 or more")
    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    started = time.monotonic()
    labels = read_label_table(args.labels, storage, label_column=args.label_column)
    result = analyse(args.responses, labels, args.subjects, args.rois, args.categories,
                     args.permutations, args.seed, storage, args.permutation_memory_gib)
    parameters = {"responses": args.responses, "labels": args.labels, "rois": result.rois,
                  "subjects": result.subjects}
    paths = write_outputs(result, args.out, parameters, storage, figures=not args.no_figures)
    print(f"labels: {result.match.describe()}")
    print("images per category: " + ", ".join(f"{c} {n}" for c, n in result.counts.items()))
    who = "subject average" if len(result.subjects) > 1 else f"sub-{result.subjects[0]:02d}"
    print(f"share of vertices preferring each category ({who}; subjects {', '.join(map(str, result.subjects))}):")
    for roi in result.rois:
        print("  " + roi_line(result, MEAN, roi))
    print(f"wrote {', '.join(sorted(paths))} to {args.out} ({time.monotonic() - started:.1f} s)")
    return 0
