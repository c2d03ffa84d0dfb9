"""A mistyped bucket or folder is named as such, not as "not a berg-scale output"."""

from __future__ import annotations

import pytest

from berg_scale.io.storage import absence_note


def _error(capsys, argv: list[str]) -> tuple[int, str]:
    from berg_scale.cli import main

    capsys.readouterr()
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def test_a_missing_local_folder_is_named(tmp_path, capsys):
    missing = str(tmp_path / "no-such" / "out")
    assert absence_note(str(tmp_path)) == ""
    code, line = _error(capsys, ["status", missing])
    assert code == 2 and f"{missing} does not exist" in line, line
    code, line = _error(capsys, ["status", str(tmp_path)])  # exists, holds no output
    assert code == 2 and "not a berg-scale output" in line and "does not exist" not in line, line


@pytest.mark.s3
def test_a_missing_bucket_is_named_by_status_and_rnc(s3_bucket, tmp_path, capsys):
    code, line = _error(capsys, ["status", "s3://no-such-bucket-here/out"])
    assert code == 2 and "bucket 'no-such-bucket-here' does not exist" in line, line
    code, line = _error(capsys, ["rnc", "univariate", "--responses", "s3://no-such-bucket-here/out",
                                 "--out", str(tmp_path / "study"), "--rois", "V1", "hV4"])
    assert code == 2 and "bucket 'no-such-bucket-here' does not exist" in line, line
    code, line = _error(capsys, ["status", f"{s3_bucket}/never-written"])  # bucket there, prefix not
    assert code == 2 and f"{s3_bucket}/never-written does not exist" in line, line
