"""Categorical selectivity: is RNC control stronger between areas that prefer the same category?

Follow-up of univariate or multivariate RNC (the RNC paper's categorical-selectivity
analysis). Over a cross-validated `berg-scale rnc univariate` study over EBA, FFA, PPA and
RSC (all 6 pairs; FFA = FFA-1 + FFA-2 as in the study) it reads the study and the responses
it read, and groups the pairs by the category their areas prefer:

  same category      = {EBA-FFA (bodies/faces), PPA-RSC (places)}
  different category = {EBA-PPA, EBA-RSC, FFA-PPA, FFA-RSC}

For every held-out subject and control condition, each pair's score is the mean over its
controlling images and both ROIs of |u(image) - mean u(baseline images)| on that subject;
the statistic is same - different (mean score of the same-category pairs minus that of the
different-category pairs). Aligning conditions (high1-high2, low1-low2) are expected to
score higher for same-category pairs (statistic > 0), disentangling ones (high1-low2,
low1-high2) lower (statistic < 0). The null reassigns, for every image independently, its
four ROI responses to random ROIs (--permutations, default 100,000); one-sided p-values are
BH-corrected over the 4 conditions within each subject and the number of significant
subjects is tested against Binomial(subjects, 0.05). The pairs' response correlations over
all images get the same statistic and per-image null (--correlation-permutations), at the
uncorrected alpha.

Writes pair_scores, groups, statistics and correlations (.parquet), summary.json and
categorical-selectivity.png/.svg under --out.

Over a multivariate RNC study (--kind multivariate, or a study with only multivariate
results) the pairs' held-out RSA scores are grouped instead, against the study's saved
random-batch nulls reassigned to pairs (see `roi_groups_multivariate`).
"""

from __future__ import annotations

import argparse

from berg_scale.experiments import roi_groups
from berg_scale.experiments.roi_groups import PairGrouping

GROUPING = PairGrouping(
    name="categorical-selectivity",
    title="Univariate RNC and categorical selectivity (EBA, FFA, PPA, RSC)",
    rois=("EBA", "FFA", "PPA", "RSC"),
    groups=(
        ("same category", (("EBA", "FFA"), ("PPA", "RSC"))),
        ("different category", (("EBA", "PPA"), ("EBA", "RSC"), ("FFA", "PPA"), ("FFA", "RSC"))),
    ),
    axis_label="preferred categories of the pair's areas",
    statistic_label="same − different",
)


def configure(parser: argparse.ArgumentParser) -> None:
    roi_groups.configure(parser, GROUPING)


def run(args: argparse.Namespace) -> int:
    return roi_groups.run(args, GROUPING)
