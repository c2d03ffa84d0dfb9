"""Fixtures of the search tests: a small committed output with planted defects."""

from __future__ import annotations

import pytest

from berg_scale.testing.env import apply_test_environment

apply_test_environment()

from search_data import SearchData, write_search_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SearchData:
    return write_search_data(tmp_path_factory.mktemp("search") / "out")
