"""Relational Neural Control over a generated response output.

  berg-scale rnc run STUDY.yaml                      everything the study config enables
  berg-scale rnc univariate --responses OUT --out DIR [--rois V1 hV4] [...]
  berg-scale rnc multivariate --responses OUT --out DIR [--generations 2000] [...]

Options given on the command line override the study config (--config). Defaults are
the published ones (docs/rnc.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from berg_scale.errors import ConfigError
from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.subject_ids import subject_argument


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="study config to start from")
    parser.add_argument("--responses", metavar="URL", help="output folder or s3:// prefix of `generate`")
    parser.add_argument("--out", dest="out_dir", metavar="URL", help="where tables, plots and summary.json go")
    parser.add_argument("--model", dest="model_id",
                        help="model id (default: the fMRI model in the responses; fmri-nsd-fwrf if several)")
    parser.add_argument("--subjects", nargs="+", type=subject_argument, metavar="N",
                        help="default: every subject with columns for all the ROIs in the responses")
    parser.add_argument("--rois", nargs="+", metavar="ROI", help="ROIs; every pair of them is studied")
    parser.add_argument("--pair", dest="pairs", nargs=2, action="append", metavar=("ROI1", "ROI2"),
                        help="study only this pair (repeatable)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ncsnr-threshold", type=float)
    parser.add_argument("--no-cv", action="store_true", help="only the all-subjects run (no held-out folds)")
    parser.add_argument("--images", metavar="URL",
                        help="input shards for the image grids (default: the input URLs in the _done markers)")
    parser.add_argument("--no-plots", "--no-figures", dest="no_plots", action="store_true",
                        help="write tables and summary.json only")
    parser.add_argument("--max-excluded-fraction", type=float, metavar="F",
                        help="largest fraction of images with NaN/infinite responses left out before the "
                             "study stops (default 0.01)")
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)
    parser.add_argument("--bootstrap", dest="n_bootstrap", type=int, metavar="N")
    parser.add_argument("--permutations", dest="n_permutations", type=int, metavar="N")
    parser.add_argument("--baseline-batches", type=int, metavar="N")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="rnc_command", metavar="ANALYSIS", required=True)
    run = sub.add_parser("run", help="run a study config (univariate and/or multivariate)")
    run.add_argument("study", metavar="STUDY.yaml")
    uni = sub.add_parser("univariate", help="univariate RNC (four control conditions per ROI pair)")
    _common(uni)
    uni.add_argument("--margin", type=float)
    uni.add_argument("--baseline-batch-size", type=int, metavar="K", help="images per baseline batch (default 25)")
    uni.add_argument("--distributed", action="store_true", help="per-shard selection in Ray tasks")
    multi = sub.add_parser("multivariate", help="multivariate RNC (genetic search over image batches)")
    _common(multi)
    multi.add_argument("--generations", type=int)
    multi.add_argument("--population", type=int)
    multi.add_argument("--batch-size", type=int, metavar="K", help="images per batch (default 50)")
    multi.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    multi.add_argument("--storage-dtype", choices=["float32", "bfloat16", "float16"])
    multi.add_argument("--condition", dest="conditions", action="append", choices=["align", "disentangle"])


def build_config(args: argparse.Namespace) -> Any:
    """Study config from --config plus command-line overrides."""
    from berg_scale.rnc.config import load_config, parse_config

    if args.rnc_command == "run":
        return load_config(args.study)
    data: dict[str, Any] = load_config(args.config).model_dump(mode="json") if args.config else {}
    for name in ("responses", "out_dir", "model_id", "subjects", "rois", "pairs", "seed", "ncsnr_threshold",
                 "max_excluded_fraction"):
        if getattr(args, name, None) is not None:
            data[name] = getattr(args, name)
    for name in ("responses", "out_dir"):
        if not data.get(name):
            raise ConfigError(f"rnc {args.rnc_command}: give --{'out' if name == 'out_dir' else name} (or --config)")
    if args.no_cv:
        data["cross_validation"] = False
    if args.endpoint_url:
        data.setdefault("storage", {})["endpoint_url"] = args.endpoint_url
    plots = data.setdefault("plots", {})
    if args.no_plots:
        plots["enabled"] = False
    if args.images:
        plots["images"] = args.images
    analysis = args.rnc_command
    other = "multivariate" if analysis == "univariate" else "univariate"
    section = data.setdefault(analysis, {})
    section["enabled"] = True
    data.setdefault(other, {})["enabled"] = False
    keys = ["n_bootstrap", "n_permutations", "baseline_batches", "baseline_batch_size", "margin", "generations",
            "population", "batch_size", "device", "storage_dtype", "conditions"]
    for name in keys:
        value = getattr(args, name, None)
        if value is not None:
            section[name] = value
    if getattr(args, "distributed", False):
        section["distributed"] = True
    return parse_config(data, "command line")


def run(args: argparse.Namespace) -> int:
    from berg_scale.io.storage_errors import storage_errors
    from berg_scale.rnc.study import run_study

    config = build_config(args)
    # The study reads `responses` and writes `out_dir`: the error names which path failed.
    with storage_errors(None, config.storage.options(), what="read or write"):
        summary = run_study(config, announce_sections=args.rnc_command == "run")
    for analysis in ("univariate", "multivariate"):
        excluded = summary.get(analysis, {}).get("exclusions") or {}
        if excluded.get("n_excluded"):
            columns = ", ".join(f"{c} {n}" for c, n in sorted(excluded["by_column"].items(), key=lambda i: -i[1])[:4])
            print(f"{analysis}: {excluded['n_excluded']} of {excluded['n_images']} images excluded for NaN or "
                  f"infinite responses ({columns}); listed in {analysis}/excluded.parquet")
    for line in result_lines(summary):
        print(line)
    print(f"results: {config.out_dir}")
    return 0


def _ci(interval) -> str:
    low, high = interval if interval else (None, None)
    if low is None or high is None:
        return "n/a"
    return f"[{low:+.3f}, {high:+.3f}]"


def _verdict(row: dict) -> str:
    significant = row["binomial_p"] is not None and row["binomial_p"] < 0.05
    return "significant" if significant else "not significant"


def result_lines(summary: dict) -> list[str]:
    """Console report: held-out scores and significance first, training scores after.

    Held-out scores are those of each left-out subject on the sets chosen without it;
    the training score of the all-subjects run is what the search optimised, so it is
    printed last and named as such.
    """
    from berg_scale.rnc.plots import condition_label

    lines = []
    uni = summary.get("univariate")
    if uni is not None:
        if uni.get("statistics"):
            lines.append("univariate, held-out subjects (sets chosen on the other subjects; z-units, "
                         "difference to the ROI's baseline with its 95% CI):")
        else:
            lines.append("univariate: no held-out test (one subject, or cross_validation off); the all-subjects "
                         "selections are in univariate/controlling.parquet")
        for row in uni.get("statistics", []):
            pair = (row["roi_1"], row["roi_2"])
            difference = row["mean_score"] - row["mean_baseline"] if row["mean_score"] is not None else float("nan")
            lines.append(
                f"  univariate {pair[0]}-{pair[1]} {condition_label(row['condition'], pair):<13} "
                f"[{row['condition']}] {row['roi']:<5} held-out {row['mean_score']:+.3f} vs baseline "
                f"{row['mean_baseline']:+.3f} (difference {difference:+.3f}, CI {_ci(row.get('difference_ci'))}), "
                f"significant in {row['n_significant']}/{row['n_subjects']} (binomial p={row['binomial_p']:.2g}): "
                f"{_verdict(row)}"
            )
    multi = summary.get("multivariate")
    if multi is not None:
        stats = {(r["roi_1"], r["roi_2"], r["condition"]): r for r in multi.get("statistics", [])}
        if stats:
            lines.append("multivariate, held-out subjects (RSA score r of each fold's final batch on its "
                         "left-out subject; difference to the baseline batch with its 95% CI):")
        for row in multi.get("final", []):
            if row["fold"] != "all":
                continue
            stat = stats.get((row["roi_1"], row["roi_2"], row["condition"]))
            train = f"train r={row['train_score']:+.3f} (all subjects; the score the search optimised)"
            name = f"multivariate {row['roi_1']}-{row['roi_2']} {row['condition']:<12}"
            if stat is None:
                lines.append(f"  {name} no held-out test (one subject, or cross_validation off); {train}")
                continue
            lines.append(
                f"  {name} held-out r={stat['mean_score']:+.3f} vs baseline {stat['mean_baseline']:+.3f} "
                f"(difference CI {_ci(stat.get('difference_ci'))}), significant in "
                f"{stat['n_significant']}/{stat['n_subjects']} (binomial p={stat['binomial_p']:.2g}): "
                f"{_verdict(stat)}; {train}"
            )
    for analysis in ("univariate", "multivariate"):
        missing = (summary.get(analysis) or {}).get("images_not_found") or []
        if missing:
            lines.append(f"{analysis}: {len(missing)} image(s) of the grids were not found "
                         f"(listed in summary.json, images_not_found)")
    return lines
