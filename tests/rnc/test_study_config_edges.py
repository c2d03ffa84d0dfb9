"""Study configs share the run config's strict edges: booleans are not numbers."""

from __future__ import annotations

import pytest

from berg_scale.errors import ConfigError


def _study(**changes) -> dict:
    return {"responses": "/tmp/out", "out_dir": "/tmp/study", "subjects": [1, 2], **changes}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"subjects": [1, True]}, "subjects"),
        ({"seed": True}, "seed"),
        ({"univariate": {"n_images": True}}, "univariate.n_images"),
        ({"multivariate": {"population": False}}, "multivariate.population"),
        ({"cross_validation": 1}, "cross_validation"),
        ({"ncsnr_threshold": float("nan")}, "ncsnr_threshold"),
    ],
)
def test_booleans_numbers_and_nan_are_refused(changes, field):
    from berg_scale.rnc.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(_study(**changes))
    message = str(info.value)
    assert field in message and "\n" not in message


def test_plain_values_still_load():
    from berg_scale.rnc.config import parse_config

    study = parse_config(_study(seed=7, univariate={"n_images": 10}, cross_validation=False))
    assert study.seed == 7 and study.univariate.n_images == 10 and study.cross_validation is False
