"""Multidimensional scaling of ROIs: a map of the areas by how alike their responses are.

Follow-up of univariate RNC (the RNC paper's MDS over ROIs). Reads the univariate (ROI-mean)
responses u[s, r](i) of a `generate` output (`<model>/sub-XX/<ROI>:mean`; FFA = FFA-1 + FFA-2
weighted by their voxel counts above --ncsnr-threshold, as in `berg-scale rnc`) and treats
the ROIs as samples and the images as features:

  dissimilarity  euclidean (default): root-mean-square difference over images,
                 sqrt(mean_i (u[s, a](i) - u[s, b](i))^2), in z (the Euclidean distance of
                 scikit-learn's MDS divided by sqrt(N), so the map does not grow with N);
                 correlation: 1 - Pearson r over images
  embedding      scikit-learn's metric MDS (2 dimensions) of the precomputed dissimilarities,
                 for the subject average (responses averaged over subjects, then compared)
                 and for every subject; subject maps are Procrustes-aligned (rotation,
                 reflection, translation; no scaling) to the average's map
  statistics     stress-1 = sqrt(sum (d - delta)^2 / sum delta^2) over ROI pairs (delta the
                 dissimilarity, d the map distance), the Shepard correlation r(delta, d), each
                 subject's Procrustes residual (RMS distance to the average's map) and its
                 consistency: Pearson r between its dissimilarities and the mean of the
                 other subjects'

Images with a non-finite response in any subject and ROI read are left out and counted.
Writes mds.parquet, dissimilarities.parquet, summary.json and roi-mds.png/.svg under --out.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.experiments.outputs import add_no_figures_option, output_names, write_experiment_outputs
from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.subject_ids import subject_argument

DEFAULT_ROIS = ("V1", "V2", "V3", "hV4", "EBA", "FFA", "PPA", "RSC")
METRICS = ("euclidean", "correlation")
MEAN = "mean"
BLOCK = 65_536
ROI_COLOURS = ("#08306b", "#2171b5", "#6baed6", "#9ecae1", "#d62728", "#ff7f0e", "#2ca02c", "#8c564b",
               "#9467bd", "#e377c2", "#17becf", "#bcbd22")


class RoiMdsError(BergScaleError):
    """The responses or options do not allow the MDS over ROIs."""


def dissimilarities(values: np.ndarray, metric: str) -> np.ndarray:
    """(R, R) dissimilarities of the columns of an (N, R) array, accumulated in float64 by blocks."""
    n, r = values.shape
    sums = np.zeros(r)
    gram = np.zeros((r, r))
    for start in range(0, n, BLOCK):
        block = values[start:start + BLOCK].astype(np.float64)
        sums += block.sum(axis=0)
        gram += block.T @ block
    if metric == "euclidean":
        sq = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram
        out = np.sqrt(np.maximum(sq, 0.0) / n)
    elif metric == "correlation":
        mean = sums / n
        cov = gram / n - np.outer(mean, mean)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = 1.0 - cov / np.outer(sd, sd)
        if not np.isfinite(out).all():
            raise RoiMdsError("a ROI's responses are constant over the images: its correlation is undefined; "
                              "use --metric euclidean")
    else:
        raise RoiMdsError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    np.fill_diagonal(out, 0.0)
    return (out + out.T) / 2


def embed(dissimilarity: np.ndarray, seed: int = 0, n_components: int = 2) -> np.ndarray:
    """scikit-learn metric MDS of precomputed dissimilarities (classical-MDS start where available)."""
    from sklearn.manifold import MDS

    params = inspect.signature(MDS).parameters
    if "metric_mds" in params:  # scikit-learn >= 1.8
        kwargs: dict[str, Any] = {"metric": "precomputed", "metric_mds": True}
    else:
        kwargs = {"dissimilarity": "precomputed", "metric": True}
    if "init" in params:
        kwargs["init"] = "classical_mds"
    else:
        kwargs["n_init"] = 4
    if "normalized_stress" in params:
        kwargs["normalized_stress"] = False
    model = MDS(n_components=n_components, random_state=seed, max_iter=1000, eps=1e-9, **kwargs)
    return model.fit_transform(dissimilarity)


def map_distances(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))


def stress1(dissimilarity: np.ndarray, points: np.ndarray) -> float:
    upper = np.triu_indices(dissimilarity.shape[0], 1)
    delta, d = dissimilarity[upper], map_distances(points)[upper]
    denominator = float((delta ** 2).sum())
    return math.sqrt(float(((d - delta) ** 2).sum()) / denominator) if denominator > 0 else math.nan


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    from berg_scale.rnc.stats import pearson_r

    return pearson_r(x, y)


def procrustes_align(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`points` rotated/reflected and translated onto `target` (least squares, no scaling)."""
    a = points - points.mean(axis=0)
    b = target - target.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return a @ (u @ vt) + target.mean(axis=0)


@dataclass
class MdsResult:
    rois: tuple[str, ...]
    subjects: tuple[int, ...]
    metric: str
    dissimilarity: dict[Any, np.ndarray]  # MEAN or subject -> (R, R)
    points: dict[Any, np.ndarray]  # MEAN or subject -> (R, 2), subjects aligned to MEAN
    statistics: dict[Any, dict]
    n_images: int
    n_excluded: int


def analyse_values(values: np.ndarray, subjects: Sequence[int], rois: Sequence[str], metric: str = "euclidean",
                   seed: int = 0) -> MdsResult:
    """MDS of the (N, S, R) univariate responses (finite images only) for the average and each subject."""
    if len(rois) < 3:
        raise RoiMdsError(f"MDS needs at least 3 ROIs; got {', '.join(rois)}")
    finite = np.isfinite(values).all(axis=(1, 2))
    used = values[finite]
    if used.shape[0] < 2:
        raise RoiMdsError(f"only {used.shape[0]} images have finite responses in every subject and ROI")
    dis: dict[Any, np.ndarray] = {MEAN: dissimilarities(used.astype(np.float64).mean(axis=1), metric)}
    for si, s in enumerate(subjects):
        dis[s] = dissimilarities(used[:, si, :], metric)
    points: dict[Any, np.ndarray] = {MEAN: embed(dis[MEAN], seed)}
    upper = np.triu_indices(len(rois), 1)
    statistics: dict[Any, dict] = {}
    for who, matrix in dis.items():
        raw = points[MEAN] if who == MEAN else embed(matrix, seed)
        aligned = raw if who == MEAN else procrustes_align(raw, points[MEAN])
        points[who] = aligned
        stats = {"stress1": stress1(matrix, aligned),
                 "shepard_r": _pearson(matrix[upper], map_distances(aligned)[upper])}
        if who != MEAN:
            stats["procrustes_rms"] = float(np.sqrt(((aligned - points[MEAN]) ** 2).sum(axis=1).mean()))
            others = [dis[s][upper] for s in subjects if s != who]
            stats["consistency_r"] = _pearson(matrix[upper], np.mean(others, axis=0)) if others else math.nan
        statistics[who] = stats
    return MdsResult(tuple(rois), tuple(subjects), metric, dis, points, statistics, int(used.shape[0]),
                     int((~finite).sum()))


def default_subjects(store, model_id: str, rois: Sequence[str], unions) -> list[int]:
    """Subjects whose responses hold a `:mean` column (or the union's parts) for every ROI."""
    from berg_scale.rnc.responses import mean_column

    names = set(store.dataset(store.committed_shards()[:1]).schema.names)
    candidates = sorted({int(n.split("/")[1].removeprefix("sub-")) for n in names
                         if n.startswith(f"{model_id}/sub-") and n.endswith(":mean")})

    def has(s: int, roi: str) -> bool:
        if mean_column(model_id, s, roi) in names:
            return True
        return bool(unions.get(roi)) and all(mean_column(model_id, s, p) in names for p in unions[roi])

    if not candidates:
        raise RoiMdsError(f"the responses have no {model_id}/sub-XX/<ROI>:mean columns: generate with "
                          f"outputs [mean] for the ROIs {', '.join(rois)} (or name --model)")
    chosen = [s for s in candidates if all(has(s, r) for r in rois)]
    if not chosen:
        s = candidates[0]
        missing = next(r for r in rois if not has(s, r))
        parts = " and ".join(unions.get(missing, [missing]))
        raise RoiMdsError(f"no subject has responses for every ROI: {mean_column(model_id, s, missing)} is missing; "
                          f"generate {parts} (outputs [mean]) or leave {missing} out of --rois")
    return chosen


# --------------------------------------------------------------------------- outputs


def tables(result: MdsResult) -> dict[str, Any]:
    import pyarrow as pa

    def label(who: Any) -> str:
        return MEAN if who == MEAN else f"sub-{int(who):02d}"

    points = [{"subject": label(who), "roi": roi, "dimension_1": float(p[i, 0]), "dimension_2": float(p[i, 1])}
              for who, p in result.points.items() for i, roi in enumerate(result.rois)]
    pairs = []
    for who, matrix in result.dissimilarity.items():
        d = map_distances(result.points[who])
        for i, j in itertools.combinations(range(len(result.rois)), 2):
            pairs.append({"subject": label(who), "roi_1": result.rois[i], "roi_2": result.rois[j],
                          "metric": result.metric, "dissimilarity": float(matrix[i, j]),
                          "map_distance": float(d[i, j])})
    return {"mds": pa.Table.from_pylist(points), "dissimilarities": pa.Table.from_pylist(pairs)}


def summary(result: MdsResult, parameters: dict) -> dict:
    subject_stats = {f"sub-{s:02d}": result.statistics[s] for s in result.subjects}
    consistency = [v["consistency_r"] for v in subject_stats.values() if np.isfinite(v.get("consistency_r", np.nan))]
    return {
        "experiment": "roi-mds",
        "definition": __doc__.split("\n\n")[1],
        "rois": list(result.rois),
        "subjects": list(result.subjects),
        "metric": result.metric,
        "unit": _unit(result.metric),
        "n_images": result.n_images,
        "n_images_excluded": result.n_excluded,
        "mean": {"points": {roi: result.points[MEAN][i].tolist() for i, roi in enumerate(result.rois)},
                 "dissimilarity": result.dissimilarity[MEAN].tolist(), **result.statistics[MEAN]},
        "subjects_statistics": subject_stats,
        "mean_consistency_r": float(np.mean(consistency)) if consistency else None,
        "parameters": parameters,
    }


def _unit(metric: str) -> str:
    return "z (RMS difference over images)" if metric == "euclidean" else "1 - Pearson r"


LABEL_SIZE = 8.5  # pt, bold
MARKER_RADIUS = 5.5  # pt, the subject-average marker (s=90) with its edge
LABEL_DISTANCES = (6.0, 12.0, 19.0, 27.0, 36.0)  # pt from the point's centre; beyond 12 with a leader line
LEADER_FROM = 12.0
MIN_ASPECT = 0.55  # the shorter side of the map at least this fraction of the longer


def map_limits(points: np.ndarray, margin: float = 0.14, min_aspect: float = MIN_ASPECT) -> tuple[tuple[float, float], ...]:
    """(x limits, y limits) around every point with a margin for the labels.

    Both axes share one unit (equal aspect, the box adapts), so a map that is much wider
    than tall is padded to `min_aspect` of its width: the labels keep room, and the map
    never becomes a thin strip.
    """
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2
    span = np.maximum(hi - lo, 1e-9)
    longest = float(span.max())
    span = np.maximum(span, min_aspect * longest) + 2 * margin * longest
    return tuple((float(c - w / 2), float(c + w / 2)) for c, w in zip(centre, span))


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap areas of box a (x0, y0, x1, y1) with each row of b."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return w * h


def _candidates(preferred: tuple[float, float]) -> list[tuple[float, float, float]]:
    """(dx, dy, distance) unit directions in 8 compass steps, nearest first, then the preferred side first."""
    angles = np.deg2rad(np.arange(0, 360, 45))
    units = np.column_stack([np.cos(angles), np.sin(angles)])
    order = np.argsort(-(units @ np.asarray(preferred)), kind="stable")
    return [(float(units[i, 0]), float(units[i, 1]), d) for d in LABEL_DISTANCES for i in order]


def _label_box(anchor: np.ndarray, unit: tuple[float, float], size: np.ndarray) -> tuple[np.ndarray, str, str]:
    """The label's box (points) when its nearest edge sits at `anchor`, with the alignment that does it."""
    ha = "left" if unit[0] > 0.38 else "right" if unit[0] < -0.38 else "center"
    va = "bottom" if unit[1] > 0.38 else "top" if unit[1] < -0.38 else "center"
    x0 = {"left": anchor[0], "right": anchor[0] - size[0], "center": anchor[0] - size[0] / 2}[ha]
    y0 = {"bottom": anchor[1], "top": anchor[1] - size[1], "center": anchor[1] - size[1] / 2}[va]
    return np.array([x0, y0, x0 + size[0], y0 + size[1]]), ha, va


def place_labels(centres: np.ndarray, sizes: np.ndarray, others: np.ndarray, frame: np.ndarray,
                 preferred: np.ndarray) -> list[tuple[float, float, str, str]]:
    """(dx, dy, ha, va) offsets in points for labels of `sizes` (w, h) at `centres` (points).

    Greedy and deterministic: the most crowded point picks first, each label takes the
    nearest of 8 directions x 5 distances that overlaps no placed label, no marker (the
    points and the small `others`) and stays inside `frame` (x0, y0, x1, y1), else the
    candidate with the least overlap.
    """
    n = len(centres)
    markers = np.column_stack([centres - MARKER_RADIUS, centres + MARKER_RADIUS])
    small = np.column_stack([others - 2.5, others + 2.5]) if len(others) else np.empty((0, 4))
    gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(axis=-1)) + np.eye(n) * 1e9
    order = np.argsort(gaps.min(axis=1), kind="stable")
    placed = np.empty((0, 4))
    result: list[tuple[float, float, str, str]] = [(0.0, 0.0, "center", "center")] * n
    for i in order:
        best, best_cost = None, math.inf
        for rank, (ux, uy, distance) in enumerate(_candidates(tuple(preferred[i]))):
            box, ha, va = _label_box(centres[i] + distance * np.array([ux, uy]), (ux, uy), sizes[i])
            area = (box[2] - box[0]) * (box[3] - box[1])
            inside = _boxes_overlap(box, frame[None])[0]
            cost = (10 * _boxes_overlap(box, placed).sum() + 5 * _boxes_overlap(box, markers).sum()
                    + _boxes_overlap(box, small).sum() + 10 * (area - inside))
            cost += 1e-3 * rank  # ties: nearest, then the preferred side
            if cost < best_cost:
                best, best_cost = (distance * ux, distance * uy, ha, va, box), cost
            if cost < 1e-2:
                break
        assert best is not None
        result[i] = best[:4]
        placed = np.vstack([placed, best[4]])
    return result


def _outward(points: np.ndarray) -> np.ndarray:
    """Unit vector per point away from the centre of the map (the preferred label side)."""
    away = points - points.mean(axis=0)
    norm = np.linalg.norm(away, axis=1, keepdims=True)
    return np.where(norm > 0, away / np.where(norm > 0, norm, 1), np.array([[0.0, 1.0]]))


def _label_rois(fig: Any, ax: Any, result: MdsResult, mean: np.ndarray) -> None:
    """Annotate every ROI of the average's map without labels running into each other or the points."""
    renderer = fig.canvas.get_renderer()
    ax.apply_aspect()
    to_points = 72.0 / fig.dpi
    centres = ax.transData.transform(mean) * to_points
    subjects = [result.points[s] for s in result.subjects]
    others = ax.transData.transform(np.vstack(subjects)) * to_points if subjects else np.empty((0, 2))
    frame = np.asarray(ax.get_window_extent(renderer).extents) * to_points
    sizes = []
    for roi in result.rois:
        probe = ax.text(0, 0, roi, fontsize=LABEL_SIZE, weight="bold")
        extent = probe.get_window_extent(renderer)
        sizes.append((extent.width * to_points, extent.height * to_points))
        probe.remove()
    offsets = place_labels(centres, np.array(sizes), others, frame, _outward(centres))
    for i, (roi, (dx, dy, ha, va)) in enumerate(zip(result.rois, offsets)):
        leader = math.hypot(dx, dy) > LEADER_FROM
        ax.annotate(roi, mean[i], xytext=(dx, dy), textcoords="offset points", fontsize=LABEL_SIZE,
                    weight="bold", color="0.1", zorder=4, ha=ha, va=va,
                    arrowprops=dict(arrowstyle="-", color="0.45", lw=0.6, shrinkA=1, shrinkB=MARKER_RADIUS)
                    if leader else None)


def mds_figure(result: MdsResult) -> Any:
    """The average's ROIs (labelled) with each subject's aligned points, one unit on both axes.

    Sized for a 7-inch print width; the legend has its own column so that the map keeps
    its width, and the limits follow the points, so the map fills its box.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig = plt.figure(figsize=(7.0, 4.6))
    grid = fig.add_gridspec(1, 2, width_ratios=(3.1, 1.2), left=0.1, right=0.99, top=0.87, bottom=0.12,
                            wspace=0.04)
    ax, key = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    key.axis("off")
    mean = result.points[MEAN]
    colours = [ROI_COLOURS[i % len(ROI_COLOURS)] for i in range(len(result.rois))]
    for s in result.subjects:
        pts = result.points[s]
        for i in range(len(result.rois)):
            ax.plot([mean[i, 0], pts[i, 0]], [mean[i, 1], pts[i, 1]], color=colours[i], lw=0.6, alpha=0.5)
        ax.scatter(pts[:, 0], pts[:, 1], s=14, c=colours, alpha=0.6, linewidths=0)
    ax.scatter(mean[:, 0], mean[:, 1], s=90, c=colours, edgecolors="k", linewidths=0.8, zorder=3)
    everything = np.vstack([mean, *(result.points[s] for s in result.subjects)])
    xlim, ylim = map_limits(everything)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    unit = "z" if result.metric == "euclidean" else "1 − r"
    ax.set_xlabel(f"MDS dimension 1 ({unit})", fontsize=9)
    ax.set_ylabel(f"MDS dimension 2 ({unit})", fontsize=9)
    stress = result.statistics[MEAN]["stress1"]
    what = "RMS response difference" if result.metric == "euclidean" else "1 − Pearson r of responses"
    ax.set_title(f"ROIs by {what} over {result.n_images:,} images\n"
                 f"subject average: stress-1 = {stress:.3f}", fontsize=9)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _label_rois(fig, ax, result, mean)
    handles = [Line2D([], [], marker="o", ls="", ms=9, mfc="w", mec="k", label="subject-average responses")]
    if result.subjects:
        handles.append(Line2D([], [], marker="o", ls="-", lw=0.6, ms=4, color="0.5", alpha=0.7,
                              label=f"{len(result.subjects)} single subjects\n(Procrustes-aligned)"))
    handles += [Line2D([], [], marker="o", ls="", ms=7, color=c, label=r) for r, c in zip(result.rois, colours)]
    key.legend(handles=handles, fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(0.0, 1.0),
               borderaxespad=0.0)
    return fig


TABLES = ("mds", "dissimilarities")
FIGURE = "roi-mds"


def write_outputs(result: MdsResult, out: str, parameters: dict, storage=None, figures: bool = True) -> list[str]:
    """mds and dissimilarities (.parquet), summary.json and the figure under `out`; returns the URLs."""
    drawn = {FIGURE: mds_figure(result)} if figures else {}
    return write_experiment_outputs(out, storage, tables(result), drawn, dict(summary(result, parameters)),
                                    known=output_names(TABLES, (FIGURE,)))


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, metavar="OUTPUT",
                        help="generate output with the ROIs' :mean columns (local folder or s3://)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tables, summary and figure")
    parser.add_argument("--model", default="fmri-nsd-fwrf", help="model id of the columns (default fmri-nsd-fwrf)")
    parser.add_argument("--rois", nargs="+", default=list(DEFAULT_ROIS),
                        help=f"ROIs to map (default {' '.join(DEFAULT_ROIS)}; FFA = FFA-1 + FFA-2)")
    parser.add_argument("--subjects", type=subject_argument, nargs="+", help="default: every subject with all the ROIs")
    parser.add_argument("--metric", choices=METRICS, default="euclidean", help="dissimilarity between ROIs")
    parser.add_argument("--ncsnr-threshold", type=float, default=0.5,
                        help="voxel threshold the :mean columns used (weights the parts of FFA)")
    parser.add_argument("--seed", type=int, default=0, help="random_state of scikit-learn's MDS")
    add_no_figures_option(parser)
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)


def run(args: argparse.Namespace) -> int:
    from berg_scale.io.storage import StorageOptions
    from berg_scale.rnc.responses import DEFAULT_UNIONS, ResponseStore

    if args.seed < 0:
        raise RoiMdsError("--seed must be a non-negative integer")
    rois = list(dict.fromkeys(args.rois))
    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    started = time.monotonic()
    store = ResponseStore(args.responses, storage)
    unions = {k: list(v) for k, v in DEFAULT_UNIONS.items()}
    store.check_subjects(args.model, args.subjects)
    subjects = args.subjects or default_subjects(store, args.model, rois, unions)
    data = store.read_univariate(args.model, subjects, rois, unions, args.ncsnr_threshold)
    result = analyse_values(data.values, data.subjects, data.rois, args.metric, args.seed)
    parameters = {"responses": args.responses, "model_id": args.model, "ncsnr_threshold": args.ncsnr_threshold,
                  "seed": args.seed, "unions": unions}
    files = write_outputs(result, args.out, parameters, storage, figures=not args.no_figures)
    excluded = f" ({result.n_excluded} left out for non-finite responses)" if result.n_excluded else ""
    print(f"roi-mds: {len(rois)} ROIs, {len(result.subjects)} subjects, {result.n_images:,} images{excluded}, "
          f"{args.metric} ({_unit(args.metric)})")
    stats = result.statistics[MEAN]
    print(f"  subject average: stress-1 {stats['stress1']:.3f}, Shepard r {stats['shepard_r']:.3f}")
    for i, roi in enumerate(result.rois):
        x, y = result.points[MEAN][i]
        print(f"  {roi:<6} {x:+.3f} {y:+.3f}")
    for s in result.subjects:
        st = result.statistics[s]
        print(f"  sub-{s:02d}: stress-1 {st['stress1']:.3f}, Procrustes RMS {st['procrustes_rms']:.3f}, "
              f"consistency r {st['consistency_r']:.3f}")
    print(f"wrote {len(files)} files to {args.out} ({time.monotonic() - started:.1f} s)")
    return 0
