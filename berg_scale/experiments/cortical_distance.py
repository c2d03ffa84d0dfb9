"""Cortical distance: does RNC control weaken or strengthen with distance along V1-V2-V3-hV4?

Follow-up of univariate or multivariate RNC (the RNC paper's cortical-distance analysis).
Over a cross-validated `berg-scale rnc univariate` study over V1, V2, V3 and hV4 (all 6
pairs) it reads the study and the responses it read, and groups the pairs by how many steps
apart the two areas are:

  d1 = {V1-V2, V2-V3, V3-hV4}    d2 = {V1-V3, V2-hV4}    d3 = {V1-hV4}

For every held-out subject and control condition, each pair's score is the mean over its
controlling images and both ROIs of |u(image) - mean u(baseline images)| on that subject;
d_g is the mean score of the pairs in group g, and the trend statistic is
(d1 - d2) + (d2 - d3). Aligning conditions (high1-high2, low1-low2) are expected to weaken
with distance (trend > 0), disentangling ones (high1-low2, low1-high2) to strengthen
(trend < 0). The null reassigns, for every image independently, its four ROI responses to
random ROIs (--permutations, default 100,000); one-sided p-values are BH-corrected over the
4 conditions within each subject and the number of significant subjects is tested against
Binomial(subjects, 0.05). The pairs' response correlations over all images get the same
trend and per-image null (--correlation-permutations), at the uncorrected alpha.

Writes pair_scores, groups, statistics and correlations (.parquet), summary.json and
cortical-distance.png/.svg under --out.

Over a multivariate RNC study (--kind multivariate, or a study with only multivariate
results) the pairs' held-out RSA scores are grouped instead, against the study's saved
random-batch nulls reassigned to pairs (see `roi_groups_multivariate`).
"""

from __future__ import annotations

import argparse

from berg_scale.experiments import roi_groups
from berg_scale.experiments.roi_groups import PairGrouping

GROUPING = PairGrouping(
    name="cortical-distance",
    title="Univariate RNC and cortical distance (V1, V2, V3, hV4)",
    rois=("V1", "V2", "V3", "hV4"),
    groups=(
        ("d1", (("V1", "V2"), ("V2", "V3"), ("V3", "hV4"))),
        ("d2", (("V1", "V3"), ("V2", "hV4"))),
        ("d3", (("V1", "hV4"),)),
    ),
    axis_label="cortical distance (areas apart)",
    statistic_label="(d1 − d2) + (d2 − d3)",
)


def configure(parser: argparse.ArgumentParser) -> None:
    roi_groups.configure(parser, GROUPING)


def run(args: argparse.Namespace) -> int:
    return roi_groups.run(args, GROUPING)
