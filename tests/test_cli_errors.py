"""Every command reports storage, credential, endpoint and file errors as one line.

Each case runs the real CLI in-process against the loopback S3 server (wrong
credentials, no credentials) or against a loopback port with nothing listening (an
endpoint that is down), and checks the exit status (2), that stderr is exactly one
line without a traceback, and that the line names the problem and the fix.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from berg_scale.cli import main
from berg_scale.testing.s3_server import free_port

pytestmark = pytest.mark.s3

FWRF = ["--models", "fmri-nsd-fwrf", "--subjects", "1", "--rois", "V1"]
CREDENTIAL_FIX = "AWS_ACCESS_KEY_ID"
# "rejected the credentials" (the server said why) or "refused access" (a bodiless 403).
WRONG_CREDENTIALS = "credentials"
ENDPOINT_FIX = "--endpoint-url"
# A down endpoint must fail fast: botocore's defaults took 10+ s per command.
DOWN_ENDPOINT_BUDGET_S = 20.0


@pytest.fixture(autouse=True)
def fresh_s3_clients():
    """s3fs caches filesystems (and their credentials) per process; start each case clean."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def wrong_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")


@pytest.fixture
def no_credentials(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def down_endpoint(monkeypatch) -> str:
    """A loopback port with nothing listening, also as the environment's endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    return endpoint


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, command: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"berg-scale {command}: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", line)) - _flags_of(command)
    assert not unknown, f"{line!r} advises options berg-scale {command} does not have: {sorted(unknown)}"
    return line


def _flags_of(command: str) -> set[str]:
    """Every option of a command and of its sub-commands."""
    import argparse

    from berg_scale.cli import build_parser

    def walk(parser: argparse.ArgumentParser) -> set[str]:
        found = {option for action in parser._actions for option in action.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    found |= walk(child)
        return found

    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return walk(top.choices[command])


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 24), (i * 40, 10, 200)).save(folder / f"img{i}.png")
    return folder


def _run_config(tmp_path: Path, shards: str, **storage) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "input": {"shards": shards},
        "berg_root": str(tmp_path / "berg_root"),
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
        "output": str(tmp_path / "out"),
        **({"storage": storage} if storage else {}),
    }))
    return path


# --------------------------------------------------------------------------- status


def test_status_with_wrong_credentials(s3_bucket, wrong_credentials, capsys):
    code, err = run_cli(capsys, "status", f"{s3_bucket}/out")
    assert_one_line_error(code, err, "status", WRONG_CREDENTIALS, CREDENTIAL_FIX)


def test_status_without_credentials(s3_bucket, no_credentials, capsys):
    code, err = run_cli(capsys, "status", f"{s3_bucket}/out")
    assert_one_line_error(code, err, "status", "no S3 credentials", CREDENTIAL_FIX, "storage.anon")


def test_status_with_a_down_endpoint_fails_fast(down_endpoint, capsys):
    started = time.monotonic()
    code, err = run_cli(capsys, "status", "s3://bucket/out", "--endpoint-url", down_endpoint)
    elapsed = time.monotonic() - started
    assert_one_line_error(code, err, "status", f"cannot reach the S3 endpoint {down_endpoint}", ENDPOINT_FIX)
    assert elapsed < DOWN_ENDPOINT_BUDGET_S


# --------------------------------------------------------------------------- fetch-weights


def _fetch_args(bucket: str, dest: Path, endpoint: str) -> list[str]:
    return ["fetch-weights", *FWRF, "--to", str(dest), "--bucket", bucket,
            "--endpoint-url", endpoint, "--no-anon", "--no-progress"]


def test_fetch_weights_with_wrong_credentials(s3_server, s3_bucket, wrong_credentials, tmp_path, capsys):
    code, err = run_cli(capsys, *_fetch_args(s3_bucket, tmp_path / "root", s3_server.endpoint_url))
    assert_one_line_error(code, err, "fetch-weights", WRONG_CREDENTIALS, CREDENTIAL_FIX, "--anon")


def test_fetch_weights_without_credentials(s3_server, s3_bucket, no_credentials, tmp_path, capsys):
    code, err = run_cli(capsys, *_fetch_args(s3_bucket, tmp_path / "root", s3_server.endpoint_url))
    assert_one_line_error(code, err, "fetch-weights", "no S3 credentials", CREDENTIAL_FIX, "--anon")


def test_fetch_weights_with_a_down_endpoint_fails_fast(down_endpoint, tmp_path, capsys):
    started = time.monotonic()
    code, err = run_cli(capsys, *_fetch_args("s3://bucket", tmp_path / "root", down_endpoint))
    elapsed = time.monotonic() - started
    assert_one_line_error(code, err, "fetch-weights", f"cannot reach the S3 endpoint {down_endpoint}",
                          ENDPOINT_FIX)
    assert elapsed < DOWN_ENDPOINT_BUDGET_S


def test_fetch_weights_from_a_missing_bucket_names_it(s3_server, tmp_path, capsys):
    code, err = run_cli(capsys, *_fetch_args("s3://no-such-bucket-here", tmp_path / "root",
                                             s3_server.endpoint_url))
    assert_one_line_error(code, err, "fetch-weights", "no-such-bucket-here")


def test_fetch_weights_into_an_unwritable_destination(s3_server, s3_bucket, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, *_fetch_args(s3_bucket, blocker / "root", s3_server.endpoint_url))
    assert_one_line_error(code, err, "fetch-weights", str(blocker))


# --------------------------------------------------------------------------- plan


def test_plan_with_wrong_credentials(s3_bucket, wrong_credentials, tmp_path, capsys):
    config = _run_config(tmp_path, f"{s3_bucket}/shards/")
    code, err = run_cli(capsys, "plan", str(config))
    assert_one_line_error(code, err, "plan", WRONG_CREDENTIALS, CREDENTIAL_FIX, "--images")


def test_plan_without_credentials(s3_bucket, no_credentials, tmp_path, capsys):
    config = _run_config(tmp_path, f"{s3_bucket}/shards/")
    code, err = run_cli(capsys, "plan", str(config))
    assert_one_line_error(code, err, "plan", "no S3 credentials", CREDENTIAL_FIX)


def test_plan_with_a_down_endpoint_fails_fast(down_endpoint, tmp_path, capsys):
    config = _run_config(tmp_path, "s3://bucket/shards/", endpoint_url=down_endpoint)
    started = time.monotonic()
    code, err = run_cli(capsys, "plan", str(config))
    elapsed = time.monotonic() - started
    assert_one_line_error(code, err, "plan", "cannot reach the S3 endpoint", down_endpoint, "storage.endpoint_url")
    assert elapsed < DOWN_ENDPOINT_BUDGET_S


def test_plan_with_a_missing_config_file(tmp_path, capsys):
    code, err = run_cli(capsys, "plan", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "plan", "missing.yaml")


# --------------------------------------------------------------------------- rnc


def _rnc_args(responses: str, out: Path, *extra: str) -> list[str]:
    return ["rnc", "univariate", "--responses", responses, "--out", str(out), "--rois", "V1", "hV4",
            "--no-plots", *extra]


def test_rnc_with_wrong_credentials(s3_bucket, wrong_credentials, tmp_path, capsys):
    code, err = run_cli(capsys, *_rnc_args(f"{s3_bucket}/out", tmp_path / "rnc"))
    assert_one_line_error(code, err, "rnc", WRONG_CREDENTIALS, CREDENTIAL_FIX)


def test_rnc_without_credentials(s3_bucket, no_credentials, tmp_path, capsys):
    code, err = run_cli(capsys, *_rnc_args(f"{s3_bucket}/out", tmp_path / "rnc"))
    assert_one_line_error(code, err, "rnc", "no S3 credentials", CREDENTIAL_FIX)


def test_rnc_with_a_down_endpoint_fails_fast(down_endpoint, tmp_path, capsys):
    started = time.monotonic()
    code, err = run_cli(capsys, *_rnc_args("s3://bucket/out", tmp_path / "rnc", "--endpoint-url", down_endpoint))
    elapsed = time.monotonic() - started
    assert_one_line_error(code, err, "rnc", f"cannot reach the S3 endpoint {down_endpoint}", ENDPOINT_FIX)
    assert elapsed < DOWN_ENDPOINT_BUDGET_S


# --------------------------------------------------------------------------- make-shards


def test_make_shards_to_s3_with_wrong_credentials(s3_bucket, wrong_credentials, tmp_path, capsys):
    src = _images(tmp_path / "images")
    code, err = run_cli(capsys, "make-shards", str(src), f"{s3_bucket}/shards", "--quiet")
    assert_one_line_error(code, err, "make-shards", WRONG_CREDENTIALS, CREDENTIAL_FIX)


def test_make_shards_to_s3_without_credentials(s3_bucket, no_credentials, tmp_path, capsys):
    src = _images(tmp_path / "images")
    code, err = run_cli(capsys, "make-shards", str(src), f"{s3_bucket}/shards", "--quiet")
    assert_one_line_error(code, err, "make-shards", "no S3 credentials", CREDENTIAL_FIX)


def test_make_shards_to_a_down_endpoint_fails_fast(down_endpoint, tmp_path, capsys):
    src = _images(tmp_path / "images")
    started = time.monotonic()
    code, err = run_cli(capsys, "make-shards", str(src), "s3://bucket/shards", "--quiet",
                        "--endpoint-url", down_endpoint)
    elapsed = time.monotonic() - started
    assert_one_line_error(code, err, "make-shards", f"cannot reach the S3 endpoint {down_endpoint}",
                          ENDPOINT_FIX)
    assert elapsed < DOWN_ENDPOINT_BUDGET_S


def test_make_shards_into_a_file_path(tmp_path, capsys):
    src = _images(tmp_path / "images")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "make-shards", str(src), str(blocker / "shards"), "--quiet")
    assert_one_line_error(code, err, "make-shards", str(blocker))


# --------------------------------------------------------------------------- synth-root


def test_synth_root_into_a_file_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "synth-root", str(blocker / "root"), "--models", "fmri-nsd-fwrf",
                        "--no-backbone")
    assert_one_line_error(code, err, "synth-root", str(blocker), "fix the path")


def test_synth_root_refuses_an_s3_url(capsys):
    code, err = run_cli(capsys, "synth-root", "s3://bucket/root", "--models", "fmri-nsd-fwrf", "--no-backbone")
    assert_one_line_error(code, err, "synth-root", "local folder", "aws s3 sync")


# --------------------------------------------------------------------------- last resort


def test_top_level_handler_translates_what_a_command_let_through(monkeypatch, capsys):
    """A command that forgets to translate still gives one line, not a traceback."""
    import berg_scale.commands.status as status

    def broken(output, storage=None, **checks):
        raise PermissionError(13, "Permission denied", "/data/out/run.json")

    monkeypatch.setattr(status, "output_status", broken)
    monkeypatch.setattr("berg_scale.io.storage_errors.storage_errors", _no_translation)
    code, err = run_cli(capsys, "status", "/data/out")
    assert_one_line_error(code, err, "status", "/data/out/run.json", "permission denied")


def test_bugs_keep_their_traceback(monkeypatch):
    import berg_scale.commands.status as status

    def broken(output, storage=None, **checks):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(status, "output_status", broken)
    with pytest.raises(ZeroDivisionError):
        main(["status", "/data/out"])


def test_a_bug_while_handling_a_file_error_keeps_its_traceback(monkeypatch):
    import berg_scale.commands.status as status

    def broken(output, storage=None, **checks):
        try:
            raise FileNotFoundError(2, "No such file or directory", "/data/out/run.json")
        except FileNotFoundError:
            return {}["shards"]

    monkeypatch.setattr(status, "output_status", broken)
    with pytest.raises(KeyError):
        main(["status", "/data/out"])


def _no_translation(*args, **kwargs):
    import contextlib

    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the translation itself


def _client_error(code: str, operation: str = "HeadObject"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} message"}}, operation)


@pytest.mark.parametrize("make, needles", [
    (lambda: OSError(28, "No space left on device", "/scratch/out/x.parquet"), ("/scratch/out/x.parquet", "free space")),
    (lambda: OSError(30, "Read-only file system", "/ro/out"), ("/ro/out", "read-only")),
    (lambda: FileNotFoundError(2, "No such file or directory", "/data/none"), ("/data/none does not exist",)),
    (lambda: IsADirectoryError(21, "Is a directory", "/data/dir"), ("/data/dir", "folder, not a file")),
    (lambda: _client_error("NoSuchBucket", "ListObjectsV2"), ("'bucket' does not exist", "create it")),
    (lambda: _client_error("SignatureDoesNotMatch"), ("rejected the credentials", "SignatureDoesNotMatch")),
    (lambda: _client_error("ExpiredToken"), ("rejected the credentials", CREDENTIAL_FIX)),
    (lambda: _client_error("AccessDenied"), ("refused access", CREDENTIAL_FIX, "--anon")),
    (lambda: _client_error("InternalError"), ("S3 request", "failed", "run again")),
])
def test_translation_names_problem_and_fix(make, needles):
    from berg_scale.io.storage_errors import translate_storage_error

    translated = translate_storage_error(make(), url="s3://bucket/out")
    assert translated is not None
    message = str(translated)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_translation_of_botocore_errors_without_context():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        SSLError,
    )

    from berg_scale.io.storage_errors import translate_storage_error

    down = translate_storage_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k"))
    assert "cannot reach the S3 endpoint http://127.0.0.1:9 " in str(down)
    assert "cannot reach" in str(translate_storage_error(ConnectTimeoutError(endpoint_url="http://127.0.0.1:9")))
    assert "no S3 credentials" in str(translate_storage_error(NoCredentialsError()))
    assert "--region" in str(translate_storage_error(NoRegionError()))
    assert "AWS_CA_BUNDLE" in str(translate_storage_error(SSLError(endpoint_url="https://127.0.0.1:9", error="x")))
    assert translate_storage_error(ValueError("a bug")) is None


def test_local_permission_error_is_not_blamed_on_the_bucket():
    from berg_scale.io.storage_errors import translate_storage_error

    local = PermissionError(13, "Permission denied", "/root/berg")
    message = str(translate_storage_error(local, url="s3://bucket/berg"))
    assert message.startswith("/root/berg: permission denied") and "credentials" not in message


def test_s3_clients_fail_fast_by_default_and_callers_can_override():
    from berg_scale.io.storage import StorageOptions

    kwargs = StorageOptions(endpoint_url="http://127.0.0.1:9").s3fs_kwargs()
    assert kwargs["config_kwargs"]["connect_timeout"] <= 5
    assert kwargs["config_kwargs"]["retries"]["max_attempts"] <= 3
    custom = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    assert StorageOptions(extra={"config_kwargs": custom}).s3fs_kwargs()["config_kwargs"] == custom


@pytest.mark.parametrize("command", [
    ["search"], ["status"], ["make-shards"], ["rnc", "univariate"], ["fetch-weights"],
    ["experiment", "tripartite"], ["experiment", "eeg-decoding"],
])
def test_every_endpoint_option_states_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--endpoint-url URL S3-compatible endpoint (default: the first of $AWS_ENDPOINT_URL_S3" in text
