"""Fixtures of the RNC tests; the planted-truth builders live in `rnc_planted`."""

from __future__ import annotations

import pytest

from berg_scale.testing.env import apply_test_environment

apply_test_environment()

from rnc_planted import PlantedUnivariate, planted_univariate  # noqa: E402


@pytest.fixture
def planted(tmp_path) -> PlantedUnivariate:
    return planted_univariate(tmp_path / "out")
