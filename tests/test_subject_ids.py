"""Subjects may be written as BERG names them (`sub-01`) wherever a number is asked for."""

from __future__ import annotations

import argparse

import pytest

from berg_scale.config import load_config
from berg_scale.errors import ConfigError
from berg_scale.subject_ids import parse_subject, subject_argument


@pytest.mark.parametrize("text, number", [("1", 1), ("01", 1), ("sub-01", 1), ("sub-1", 1), ("SUB-10", 10),
                                          ("sub08", 8), (" 3 ", 3), (4, 4)])
def test_the_forms_a_researcher_copies(text, number):
    assert parse_subject(text) == number


@pytest.mark.parametrize("text", ["subject-1", "sub-", "s01", "1.0", "", "sub-01a", True])
def test_other_text_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"1, 01 or sub-01"):
        parse_subject(text)
    if isinstance(text, str):
        with pytest.raises(argparse.ArgumentTypeError, match=r"sub-01"):
            subject_argument(text)


def _config(subjects):
    return {"input": {"shards": "/data/shards/{000000..000001}.tar"}, "berg_root": "/data/berg",
            "readouts": [{"model": "fmri-nsd-fwrf", "subjects": subjects, "rois": ["V1"]}], "output": "/data/out"}


def test_run_config_takes_berg_subject_names():
    specs = load_config(_config(["sub-01", 2, "03"])).readout_specs()
    assert [spec.subject for spec in specs] == [1, 2, 3]
    assert [spec.subject for spec in load_config(_config("all")).readout_specs()] == list(range(1, 9))
    # the same run either way: a rerun that writes the names instead of numbers resumes
    assert load_config(_config(["sub-01"])).input_fingerprint() == load_config(_config([1])).input_fingerprint()


def test_run_config_names_a_bad_subject_and_the_forms():
    with pytest.raises(ConfigError, match=r"readouts\.0\.subjects.*1, 01 or sub-01") as caught:
        load_config(_config(["subject one"]))
    assert "\n" not in str(caught.value)


def test_study_config_and_cli_take_them_too(tmp_path):
    from berg_scale.cli import build_parser
    from berg_scale.rnc.config import parse_config

    study = parse_config({"responses": str(tmp_path / "out"), "out_dir": str(tmp_path / "rnc"),
                          "subjects": ["sub-01", "sub-02"]})
    assert study.subjects == [1, 2]
    parser = build_parser()
    args = parser.parse_args(["rnc", "univariate", "--responses", "out", "--out", "rnc", "--subjects", "sub-03", "4"])
    assert args.subjects == [3, 4]
    args = parser.parse_args(["experiment", "tripartite", "--responses", "out", "--out", "t", "--labels", "l.csv",
                              "--subjects", "sub-05"])
    assert args.subjects == [5]
