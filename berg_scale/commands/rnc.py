"""Relational Neural Control over a generated response output.

  berg-scale rnc run STUDY.yaml                      everything the study config enables
  berg-scale rnc univariate --responses OUT --out DIR [--rois V1 hV4] [...]
  berg-scale rnc multivariate --responses OUT --out DIR [--generations 2000] [...]

Options given on the command line override the study config (--config). Defaults are
the published ones (rnc.md section 6).
"""

from __future__ import annotations

import argparse
from typing import Any

from berg_scale.errors import ConfigError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="study config to start from")
    parser.add_argument("--responses", metavar="URL", help="output folder or s3:// prefix of `generate`")
    parser.add_argument("--out", dest="out_dir", metavar="URL", help="where tables, plots and summary.json go")
    parser.add_argument("--model", dest="model_id", help="model id (default fmri-nsd-fwrf)")
    parser.add_argument("--subjects", nargs="+", type=int, metavar="N")
    parser.add_argument("--rois", nargs="+", metavar="ROI", help="ROIs; every pair of them is studied")
    parser.add_argument("--pair", dest="pairs", nargs=2, action="append", metavar=("ROI1", "ROI2"),
                        help="study only this pair (repeatable)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ncsnr-threshold", type=float)
    parser.add_argument("--no-cv", action="store_true", help="only the all-subjects run (no held-out folds)")
    parser.add_argument("--images", metavar="URL", help="input WebDataset shards, for the image grids")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint")
    parser.add_argument("--bootstrap", dest="n_bootstrap", type=int, metavar="N")
    parser.add_argument("--permutations", dest="n_permutations", type=int, metavar="N")
    parser.add_argument("--baseline-batches", type=int, metavar="N")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="rnc_command", metavar="ANALYSIS", required=True)
    run = sub.add_parser("run", help="run a study config (univariate and/or multivariate)")
    run.add_argument("study", metavar="STUDY.yaml")
    uni = sub.add_parser("univariate", help="univariate RNC (rnc.md section 1)")
    _common(uni)
    uni.add_argument("--margin", type=float)
    uni.add_argument("--distributed", action="store_true", help="per-shard selection in Ray tasks")
    multi = sub.add_parser("multivariate", help="multivariate RNC (rnc.md section 3)")
    _common(multi)
    multi.add_argument("--generations", type=int)
    multi.add_argument("--population", type=int)
    multi.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    multi.add_argument("--storage-dtype", choices=["float32", "bfloat16", "float16"])
    multi.add_argument("--condition", dest="conditions", action="append", choices=["align", "disentangle"])


def build_config(args: argparse.Namespace) -> Any:
    """Study config from --config plus command-line overrides."""
    from berg_scale.rnc.config import load_config, parse_config

    if args.rnc_command == "run":
        return load_config(args.study)
    data: dict[str, Any] = load_config(args.config).model_dump(mode="json") if args.config else {}
    for name in ("responses", "out_dir", "model_id", "subjects", "rois", "pairs", "seed", "ncsnr_threshold"):
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
    keys = ["n_bootstrap", "n_permutations", "baseline_batches", "margin", "generations", "population",
            "device", "storage_dtype", "conditions"]
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
        summary = run_study(config)
    for analysis in ("univariate", "multivariate"):
        excluded = summary.get(analysis, {}).get("exclusions") or {}
        if excluded.get("n_excluded"):
            columns = ", ".join(f"{c} {n}" for c, n in sorted(excluded["by_column"].items(), key=lambda i: -i[1])[:4])
            print(f"{analysis}: {excluded['n_excluded']} of {excluded['n_images']} images excluded for NaN or "
                  f"infinite responses ({columns}); listed in {analysis}/excluded.parquet")
    for row in summary.get("univariate", {}).get("statistics", []):
        print(
            f"univariate {row['roi_1']}-{row['roi_2']} {row['condition']:<12} {row['roi']:<5} "
            f"score {row['mean_score']:+.3f} vs baseline {row['mean_baseline']:+.3f}  "
            f"significant in {row['n_significant']}/{row['n_subjects']} (binomial p={row['binomial_p']:.2g})"
        )
    for row in summary.get("multivariate", {}).get("final", []):
        if row["fold"] == "all":
            print(f"multivariate {row['roi_1']}-{row['roi_2']} {row['condition']:<12} train r={row['train_score']:+.3f}")
    print(f"results: {config.out_dir}")
    return 0
