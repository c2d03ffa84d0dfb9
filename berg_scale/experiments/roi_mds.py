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
from berg_scale.experiments.outputs import write_experiment_outputs

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


def _label_direction(points: np.ndarray, i: int) -> tuple[float, float]:
    """Unit direction for point i's label: across the line to its nearest neighbour, away from the centre."""
    others = np.delete(np.arange(len(points)), i)
    offsets = points[others] - points[i]
    nearest = offsets[np.argmin((offsets ** 2).sum(axis=1))]
    across = np.array([-nearest[1], nearest[0]])
    if not np.linalg.norm(across):
        across = np.array([1.0, 1.0])
    across = across / np.linalg.norm(across)
    if across @ (points[i] - points.mean(axis=0)) < 0:
        across = -across
    return float(across[0]), float(across[1])


def mds_figure(result: MdsResult) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(4.9, 4.4))  # with the legend about 7 inches: print width
    mean = result.points[MEAN]
    colours = [ROI_COLOURS[i % len(ROI_COLOURS)] for i in range(len(result.rois))]
    for s in result.subjects:
        pts = result.points[s]
        for i in range(len(result.rois)):
            ax.plot([mean[i, 0], pts[i, 0]], [mean[i, 1], pts[i, 1]], color=colours[i], lw=0.6, alpha=0.5)
        ax.scatter(pts[:, 0], pts[:, 1], s=14, c=colours, alpha=0.6, linewidths=0)
    ax.scatter(mean[:, 0], mean[:, 1], s=90, c=colours, edgecolors="k", linewidths=0.8, zorder=3)
    span = float(np.ptp(mean, axis=0).max()) or 1.0
    for i, roi in enumerate(result.rois):
        dx, dy = _label_direction(mean, i)
        ax.annotate(roi, mean[i], xytext=(9 * dx, 9 * dy), textcoords="offset points", fontsize=8.5,
                    weight="bold", color="0.1", zorder=4,
                    ha="left" if dx > 0.3 else "right" if dx < -0.3 else "center",
                    va="bottom" if dy > 0.3 else "top" if dy < -0.3 else "center")
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.15 if span else 0.5)
    unit = "z" if result.metric == "euclidean" else "1 − r"
    ax.set_xlabel(f"MDS dimension 1 ({unit})", fontsize=9)
    ax.set_ylabel(f"MDS dimension 2 ({unit})", fontsize=9)
    stress = result.statistics[MEAN]["stress1"]
    what = "RMS response difference" if result.metric == "euclidean" else "1 − Pearson r of responses"
    ax.set_title(f"ROIs by {what} over {result.n_images:,} images\n"
                 f"subject average: stress-1 = {stress:.3f}", fontsize=9)
    handles = [Line2D([], [], marker="o", ls="", ms=9, mfc="w", mec="k", label="subject-average responses")]
    if result.subjects:
        handles.append(Line2D([], [], marker="o", ls="-", lw=0.6, ms=4, color="0.5", alpha=0.7,
                              label=f"{len(result.subjects)} single subjects (Procrustes-aligned)"))
    handles += [Line2D([], [], marker="o", ls="", ms=7, color=c, label=r) for r, c in zip(result.rois, colours)]
    ax.legend(handles=handles, fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def write_outputs(result: MdsResult, out: str, parameters: dict, storage=None, figures: bool = True) -> list[str]:



    drawn = {"roi-mds": mds_figure(result)} if figures else {}
    return write_experiment_outputs(out, storage, tables(result), drawn, dict(summary(result, parameters)))


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, metavar="OUTPUT",
                        help="generate output with the ROIs' :mean columns (local folder or s3://)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tables, summary and figure")
    parser.add_argument("--model", default="fmri-nsd-fwrf", help="model id of the columns (default fmri-nsd-fwrf)")
    parser.add_argument("--rois", nargs="+", default=list(DEFAULT_ROIS),
                        help=f"ROIs to map (default {' '.join(DEFAULT_ROIS)}; FFA = FFA-1 + FFA-2)")
    parser.add_argument("--subjects", type=int, nargs="+", help="default: every subject with all the ROIs")
    parser.add_argument("--metric", choices=METRICS, default="euclidean", help="dissimilarity between ROIs")
    parser.add_argument("--ncsnr-threshold", type=float, default=0.5,
                        help="voxel threshold the :mean columns used (weights the parts of FFA)")
    parser.add_argument("--seed", type=int, default=0, help="random_state of scikit-learn's MDS")
    parser.add_argument("--no-figures", action="store_true", help="write the tables and summary only")
    parser.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint")


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
