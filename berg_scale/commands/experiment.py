"""Run one of the BERG paper's in silico experiments over committed responses.

Each experiment reads committed responses (an output folder written by `generate`) and,
depending on the experiment, a label table (CSV or Parquet with a `key` column and a
label column, `label` or the one `--label-column` names: tripartite, eeg-decoding) or a
cross-validated `rnc univariate` or `rnc multivariate` study (cortical-distance,
categorical-selectivity), and writes Parquet tables, a JSON summary and figures under --out.
"""

from __future__ import annotations

import argparse
import importlib

# (command name, module under berg_scale.experiments, one-line help)
EXPERIMENTS: list[tuple[str, str, str]] = [
    ("tripartite", "tripartite", "category preference of every fsaverage vertex and its share per ROI (BERG Fig. 1C)"),
    ("eeg-decoding", "eeg_decoding", "time-resolved pairwise decoding of exemplars and a binary label (BERG Fig. 1D)"),
    ("cortical-distance", "cortical_distance", "RNC control (univariate or multivariate study) vs cortical distance along V1-V2-V3-hV4 (RNC follow-up)"),
    ("categorical-selectivity", "categorical_selectivity", "RNC control (univariate or multivariate study) for same- vs different-category areas EBA/FFA/PPA/RSC (RNC follow-up)"),
    ("roi-mds", "roi_mds", "multidimensional scaling of ROIs by their responses (RNC follow-up)"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, module_name, help_text in EXPERIMENTS:
        try:
            module = importlib.import_module(f"berg_scale.experiments.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"berg_scale.experiments.{module_name}":
                raise
            continue
        experiment_parser = sub.add_parser(name, help=help_text, description=module.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(experiment_parser)
        experiment_parser.set_defaults(_experiment=module.run)
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    runner = getattr(args, "_experiment", None)
    if runner is None:
        args._parser.print_help()
        return 2
    return int(runner(args) or 0)
