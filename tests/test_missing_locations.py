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


@pytest.mark.s3
def test_python_readers_give_one_line_storage_errors(s3_server, s3_bucket):
    import dataclasses

    from berg_scale.errors import BergScaleError, StorageError
    from berg_scale.io.results import column_info, open_responses
    from berg_scale.testing.s3_server import free_port

    with pytest.raises(BergScaleError) as info:
        open_responses("s3://no-such-bucket-here/out")
    assert "bucket 'no-such-bucket-here' does not exist" in str(info.value)
    closed = dataclasses.replace(s3_server.storage_options(), endpoint_url=f"http://127.0.0.1:{free_port()}")
    for read in (lambda: open_responses(f"{s3_bucket}/out", closed),
                 lambda: column_info(f"{s3_bucket}/out", "x", closed)):
        with pytest.raises(StorageError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message and message.startswith("cannot reach the S3 endpoint http://127.0.0.1:")
