"""Grouped ROI-pair follow-ups of multivariate RNC: cortical distance and categorical selectivity.

The groupings of `roi_groups` (rnc.md section 1.5) applied to a cross-validated
multivariate RNC study (rnc.md section 3.4) over every pair of four ROIs:

  score        for held-out subject s and pair (a, b): the RSA score (Pearson r of the two
               ROIs' RSMs on s) of the final align batch, of the final disentangle batch and
               of the fold's baseline batch, as in the study's tests.parquet; the score is
               symmetric, so a pair studied as hV4-V1 is V1-hV4
  group        G_g = mean score of the pairs in group g
  statistic    T = sum over consecutive groups of (G_g - G_g+1): (d1 - d2) + (d2 - d3), or
               same - different
  direction    the RSA score of any image set is expected to be higher for nearer (or
               same-category) areas, so every condition is tested one-sided for T > 0
  null         the study saved, per pair and fold, the held-out scores of its random baseline
               batches in draw order. In every iteration i the pairs' null distributions are
               randomly reassigned to the pairs (a fresh uniform permutation per iteration and
               subject), and pair p's value is the reassigned null's entry i + o n, with n the
               iterations and o = 0 (baseline), 1 (align) or 2 (disentangle): the same disjoint
               slices the study's own difference null uses. T is recomputed from those values.
               p = (1 + #{null T > T}) / (1 + iterations), BH-FDR over the 3 conditions within
               each subject, then k significant subjects against Binomial(subjects, 0.05).

The iterations are capped at a third of the shortest saved null. The analysis reads only
the study's tables (tests.parquet and nulls.parquet), not the responses.
"""

from __future__ import annotations

import argparse
import math
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_scale.experiments.outputs import write_experiment_outputs
from berg_scale.experiments.roi_groups import (
    PairGrouping,
    RoiGroupsError,
    _across_subjects,
    _format_p,
    _means_and_errors,
    _read_json,
    _read_rows,
    group_means,
    group_statistic,
    group_ticks,
    known_outputs,
    open_study,
)
from berg_scale.rnc.stats import benjamini_hochberg, permutation_p_value
from berg_scale.rnc.streams import stream

CONDITIONS = ("align", "disentangle", "baseline")
NULL_SLICE = {"baseline": 0, "align": 1, "disentangle": 2}  # which n-long slice of the saved null
DIRECTION = "greater"
COLOURS = {"align": "#d62728", "disentangle": "#2ca02c", "baseline": "0.35"}
BLOCK = 20_000  # null iterations per vectorised block


@dataclass
class MultivariateStudy:
    """Held-out RSA scores and saved test nulls of a multivariate study, in grouping pair order."""

    url: str
    summary: dict
    heldout: tuple[int, ...]
    seed: int
    conditions: tuple[str, ...]  # of CONDITIONS, those the study ran (baseline always)
    scores: dict[tuple[int, str], np.ndarray]  # (subject, condition) -> (pairs,)
    nulls: dict[int, np.ndarray]  # subject -> (pairs, null length) float32


@dataclass
class MultivariateGroupResult:
    grouping: PairGrouping
    study: MultivariateStudy
    subjects: tuple[int, ...]
    n_permutations: int
    pair_rows: list[dict]
    group_rows: list[dict]
    trend_rows: list[dict]
    summary: dict


def study_kind(url: str, storage=None) -> str:
    """'univariate' when the study holds univariate results (as before), else 'multivariate' if it has those."""
    from berg_scale.io.storage import filesystem_for

    fs, root = filesystem_for(url, storage)
    path = posixpath.join(root, "summary.json")
    if not fs.exists(path):
        raise RoiGroupsError(f"{url} has no summary.json, so it is not an RNC study output: pass the --out of "
                             "`berg-scale rnc univariate` or `berg-scale rnc multivariate` as --study")
    summary = _read_json(fs, path)
    if summary.get("univariate"):
        return "univariate"
    if summary.get("multivariate"):
        return "multivariate"
    raise RoiGroupsError(f"study {url} has neither univariate nor multivariate RNC results: rerun the study")


def read_multivariate_study(url: str, grouping: PairGrouping, storage=None) -> MultivariateStudy:
    """Scores and nulls of every grouping pair and held-out fold, checked to be complete."""
    import pyarrow.parquet as pq

    fs, root, summary, rerun = open_study(url, grouping, "multivariate", storage)
    folder = posixpath.join(root, "multivariate")
    if not summary.get("multivariate") or not fs.exists(posixpath.join(folder, "tests.parquet")):
        raise RoiGroupsError(f"study {url} has no multivariate RNC results: {rerun}")
    nulls_path = posixpath.join(folder, "nulls.parquet")
    if not fs.exists(nulls_path):
        raise RoiGroupsError(f"study {url} has no multivariate/nulls.parquet (it predates saved null "
                             f"distributions): {rerun}")
    index = {}
    for i, (a, b) in enumerate(grouping.pairs):
        index[(a, b)] = index[(b, a)] = i
    n_pairs = len(grouping.pairs)
    rows = _read_rows(fs, posixpath.join(folder, "tests.parquet"))
    tests = [r for r in rows if (r["roi_1"], r["roi_2"]) in index and r.get("subject") is not None]
    heldout = tuple(sorted({int(r["subject"]) for r in tests}))
    if not heldout:
        studied = sorted({f"{r['roi_1']}-{r['roi_2']}" for r in rows})
        raise RoiGroupsError(f"study {url} has no held-out results for the pairs of {', '.join(grouping.rois)} "
                             f"(it has {', '.join(studied) or 'none'}; --no-cv studies have none): {rerun}")
    studied_conditions = {r["condition"] for r in tests}
    conditions = tuple(c for c in CONDITIONS if c == "baseline" or c in studied_conditions)
    scores = {(s, c): np.full(n_pairs, np.nan) for s in heldout for c in conditions}
    seen = {(s, c): np.zeros(n_pairs, dtype=bool) for s in heldout for c in conditions}
    for r in tests:
        s, pi = int(r["subject"]), index[(r["roi_1"], r["roi_2"])]
        for condition, value in ((r["condition"], r["score"]), ("baseline", r["baseline_score"])):
            scores[(s, condition)][pi] = math.nan if value is None else float(value)
            seen[(s, condition)][pi] = True
    for (s, condition), found in seen.items():
        if not found.all():
            a, b = grouping.pairs[int(np.flatnonzero(~found)[0])]
            raise RoiGroupsError(f"study {url} lacks the pair {a}-{b} ({condition}, sub-{s:02d}; {grouping.name} "
                                 f"needs every pair of {', '.join(grouping.rois)}): {rerun}")
    table = pq.read_table(nulls_path, filesystem=fs)
    per_subject: dict[int, list[np.ndarray | None]] = {s: [None] * n_pairs for s in heldout}
    rois_1, rois_2 = table.column("roi_1").to_pylist(), table.column("roi_2").to_pylist()
    subjects = table.column("heldout_subject").to_pylist()
    column = table.column("test_null").combine_chunks()
    offsets = column.offsets.to_numpy()
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    for row, (a, b, s) in enumerate(zip(rois_1, rois_2, subjects)):
        if (a, b) in index and s is not None and int(s) in per_subject:
            per_subject[int(s)][index[(a, b)]] = flat[offsets[row]:offsets[row + 1]]
    nulls = {}
    for s, arrays in per_subject.items():
        missing = [grouping.pairs[i] for i, v in enumerate(arrays) if v is None]
        if missing:
            raise RoiGroupsError(f"study {url}: nulls.parquet has no null of {missing[0][0]}-{missing[0][1]} for "
                                 f"sub-{s:02d}: the study output is incomplete, rerun it")
        length = min(v.size for v in arrays if v is not None)
        nulls[s] = np.stack([v[:length] for v in arrays if v is not None])
    return MultivariateStudy(url=url, summary=summary, heldout=heldout, seed=int(summary.get("seed", 0)),
                             conditions=conditions, scores=scores, nulls=nulls)


def shuffled_null_statistics(
    rng: np.random.Generator,
    nulls: np.ndarray,
    n_iter: int,
    membership: Sequence[Sequence[int]],
    conditions: Sequence[str],
) -> np.ndarray:
    """(n_iter, conditions) statistics with the saved nulls randomly reassigned to pairs per iteration."""
    n_pairs = nulls.shape[0]
    out = np.empty((n_iter, len(conditions)))
    for start in range(0, n_iter, BLOCK):
        b = min(BLOCK, n_iter - start)
        perms = rng.permuted(np.tile(np.arange(n_pairs), (b, 1)), axis=1)  # (b, P): pair p gets null perms[., p]
        rows = np.arange(start, start + b)
        for ci, condition in enumerate(conditions):
            columns = rows[:, None] + NULL_SLICE[condition] * n_iter
            values = nulls[perms, columns].astype(np.float64)  # (b, P)
            out[start:start + b, ci] = group_statistic(group_means(values, membership))
    return out


def analyse_multivariate(
    study: MultivariateStudy,
    grouping: PairGrouping,
    n_permutations: int = 100_000,
    n_bootstrap: int = 100_000,
    alpha: float = 0.05,
    chance: float = 0.05,
    seed: int | None = None,
    log=lambda message: None,
) -> MultivariateGroupResult:
    """Group means, statistics and shuffled-null p-values for every held-out subject."""
    grouping.check()
    seed = study.seed if seed is None else int(seed)
    membership, start = [], 0
    for _, members in grouping.groups:
        membership.append(list(range(start, start + len(members))))
        start += len(members)
    group_of = {pi: g for g, members in enumerate(membership) for pi in members}
    labels = [label for label, _ in grouping.groups]
    conditions = study.conditions
    shortest = min(v.shape[1] for v in study.nulls.values())
    n_iter = min(n_permutations, shortest // 3)
    if n_permutations > 0 and n_iter < 1:
        raise RoiGroupsError(f"study {study.url} saved nulls of {shortest} batches, too few for 3 slices: rerun "
                             "it with more --baseline-batches")
    pair_rows, group_rows, trend_rows = [], [], []
    groups_of: dict[str, list[np.ndarray]] = {c: [] for c in conditions}
    trend_of: dict[str, list[float]] = {c: [] for c in conditions}
    for subject in study.heldout:
        observed_groups = np.stack([group_means(study.scores[(subject, c)], membership) for c in conditions])
        observed = group_statistic(observed_groups)  # (C,)
        null = np.empty((0, len(conditions)))
        if n_iter > 0:
            rng = stream(seed, f"{grouping.name} multivariate null", subject)
            null = shuffled_null_statistics(rng, study.nulls[subject], n_iter, membership, conditions)
        p_values = np.array([permutation_p_value(null[:, ci], float(observed[ci]), DIRECTION) if null.size
                             else np.nan for ci in range(len(conditions))])
        fdr = benjamini_hochberg(p_values, alpha)
        for ci, condition in enumerate(conditions):
            for pi, (a, b) in enumerate(grouping.pairs):
                pair_rows.append({"subject": subject, "condition": condition, "roi_1": a, "roi_2": b,
                                  "group": labels[group_of[pi]], "score": float(study.scores[(subject, condition)][pi])})
            for g, label in enumerate(labels):
                n_pairs = int(np.isfinite(study.scores[(subject, condition)][membership[g]]).sum())
                group_rows.append({"measure": "rsa_score", "condition": condition, "subject": subject, "group": label,
                                   "position": g + 1, "n_pairs": n_pairs, "value": float(observed_groups[ci, g])})
            column = null[:, ci] if null.size else np.empty(0)
            column = column[np.isfinite(column)]
            low, high = (np.percentile(column, [2.5, 97.5]) if column.size else (math.nan, math.nan))
            trend_rows.append({"measure": "rsa_score", "condition": condition, "subject": subject,
                               "statistic": float(observed[ci]), "direction": DIRECTION,
                               "null_mean": float(column.mean()) if column.size else math.nan,
                               "null_sd": float(column.std()) if column.size > 1 else math.nan,
                               "null_low": float(low), "null_high": float(high),
                               "n_permutations": int(column.size), "p_value": float(p_values[ci]),
                               "q_value": float(fdr.q_values[ci]), "significant": bool(fdr.significant[ci])})
            groups_of[condition].append(observed_groups[ci])
            trend_of[condition].append(float(observed[ci]))
        log(f"sub-{subject:02d}: " + ", ".join(f"{c} T={observed[ci]:+.3f} (p={p_values[ci]:.2g})"
                                               for ci, c in enumerate(conditions)))
    conditions_summary = {}
    for condition in conditions:
        table = np.column_stack([np.array(groups_of[condition]), trend_of[condition]])
        conditions_summary[condition] = _across_subjects(
            table, labels, [r for r in trend_rows if r["condition"] == condition], n_bootstrap, chance,
            stream(seed, f"{grouping.name} multivariate bootstrap", condition), DIRECTION)
    summary = {
        "experiment": grouping.name,
        "kind": "multivariate",
        "definition": __doc__.split("\n\n")[1],
        "statistic": grouping.statistic_label,
        "rois": list(grouping.rois),
        "groups": {label: [f"{a}-{b}" for a, b in members] for label, members in grouping.groups},
        "study": study.url,
        "heldout_subjects": list(study.heldout),
        "conditions": conditions_summary,
        "parameters": {"permutations": n_iter, "permutations_requested": n_permutations,
                       "null_length": shortest, "bootstrap": n_bootstrap, "alpha": alpha, "chance": chance,
                       "seed": seed, "fdr": f"Benjamini-Hochberg over the {len(conditions)} conditions within "
                                             "each subject"},
    }
    return MultivariateGroupResult(grouping, study, study.heldout, n_iter, pair_rows, group_rows, trend_rows, summary)


# --------------------------------------------------------------------------- outputs


def write_multivariate_outputs(result: MultivariateGroupResult, out: str, storage=None,
                               figures: bool = True) -> list[str]:
    """pair_scores, groups and statistics (.parquet), summary.json and the figure under `out`."""

    import pyarrow as pa


    tables = {name: pa.Table.from_pylist(rows)
              for name, rows in (("pair_scores", result.pair_rows), ("groups", result.group_rows),
                                 ("statistics", result.trend_rows))}
    drawn = {f"{result.grouping.name}-multivariate": multivariate_group_figure(result)} if figures else {}
    return write_experiment_outputs(out, storage, tables, drawn, dict(result.summary),
                                    known=known_outputs(result.grouping))


def multivariate_group_figure(result: MultivariateGroupResult) -> Any:
    """Left: RSA score per group and condition (mean, 95% CI); right: each subject's T against its null.

    Sized for a 7.2-inch (two-column) print width, so the fonts are their printed size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouping, summary = result.grouping, result.summary
    labels, ticks = group_ticks(grouping)
    x = np.arange(1, len(labels) + 1)
    conditions = list(summary["conditions"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 5.0), gridspec_kw={"width_ratios": [1.2, 1]})
    fig.subplots_adjust(left=0.09, right=0.985, top=0.88, bottom=0.38, wspace=0.32)
    offsets = np.linspace(-0.1, 0.1, len(conditions))
    for condition, dx in zip(conditions, offsets):
        stats = summary["conditions"][condition]
        means, err = _means_and_errors(stats, labels)
        left.errorbar(x + dx, means, yerr=err, color=COLOURS[condition], marker="o", ms=4, lw=1.4, capsize=2.5,
                      label=f"{condition}: {stats['n_significant']}/{stats['n_subjects']}, "
                            f"p={_format_p(stats['binomial_p'])}")
    left.axhline(0, color="0.8", lw=0.8, zorder=0)
    left.set_ylabel("RSA score on the held-out subject (Pearson r)", fontsize=8.5)
    left.set_title(f"RSA score by group ({len(result.subjects)} held-out subjects)", fontsize=9)
    left.set_xticks(x, ticks)
    left.set_xlim(0.6, len(labels) + 0.4)
    left.set_xlabel(grouping.axis_label, fontsize=8.5)
    left.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.3),
                title="condition: subjects significant, binomial p", title_fontsize=7)
    n_subjects = len(result.subjects)
    spread = np.linspace(-0.18, 0.18, n_subjects) if n_subjects > 1 else np.zeros(1)
    for ci, condition in enumerate(conditions):
        rows = [r for r in result.trend_rows if r["condition"] == condition]
        for r, dx in zip(rows, spread):
            right.vlines(ci + dx, r["null_low"], r["null_high"], color="0.75", lw=3)
            right.plot(ci + dx, r["statistic"], marker="o" if r["significant"] else "x", ms=4.5,
                             color=COLOURS[condition], ls="none")
    right.axhline(0, color="0.8", lw=0.8, zorder=0)
    right.set_xticks(range(len(conditions)), conditions)
    right.set_xlim(-0.5, len(conditions) - 0.5)
    right.set_xlabel("condition (one point per held-out subject)", fontsize=8.5)
    right.set_ylabel(f"statistic {grouping.statistic_label} (Δr)", fontsize=8.5)
    right.set_title(f"Statistic vs shuffled-pair null ({result.n_permutations:,} it.)", fontsize=9)
    if result.trend_rows:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="0.75", lw=3), Line2D([], [], marker="o", color="0.3", ls="none", ms=4.5),
                   Line2D([], [], marker="x", color="0.3", ls="none", ms=4.5)]
        right.legend(handles, ["null 2.5–97.5 percentile", "significant (BH)", "not significant"], fontsize=7,
                     frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    for ax in (left, right):
        ax.tick_params(labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(grouping.title.replace("Univariate", "Multivariate"), fontsize=10)
    fig.text(0.5, 0.01, f"Means over subjects with 95% bootstrap CIs. Statistic {grouping.statistic_label}, "
                        "one-sided test per subject against the saved random-batch nulls\nreassigned to random "
                        f"pairs; BH over the {len(conditions)} conditions; binomial test across subjects.",
             ha="center", va="bottom", fontsize=7, color="0.25")
    return fig


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace, grouping: PairGrouping, storage=None) -> int:
    started = time.monotonic()
    study = read_multivariate_study(args.study, grouping, storage)
    result = analyse_multivariate(study, grouping, args.permutations, args.bootstrap, args.alpha, args.chance,
                                  args.seed, log=lambda message: print(message, flush=True))
    files = write_multivariate_outputs(result, args.out, storage, figures=not args.no_figures)
    print(f"{grouping.name} (multivariate): {len(result.subjects)} held-out subjects, statistic "
          f"{grouping.statistic_label}, {result.n_permutations:,} null iterations")
    for condition, stats in result.summary["conditions"].items():
        means = ", ".join(f"{g} {v['mean']:.3f}" for g, v in stats["groups"].items())
        print(f"  {condition:<12} {means}; T={stats['statistic']['mean']:+.3f} "
              f"significant in {stats['n_significant']}/{stats['n_subjects']} "
              f"(binomial p={_format_p(stats['binomial_p'])})")
    print(f"wrote {len(files)} files to {args.out} ({time.monotonic() - started:.1f} s)")
    return 0
