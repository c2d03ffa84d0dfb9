"""Checks that run on the driver before any worker starts.

A cluster run that dies ten minutes in (after GPU nodes were provisioned and models
were loaded) because of a typo in a bucket name wastes money and patience. Every
problem that can be seen from the driver is reported here, in one line that names the
problem and the fix: unreachable endpoint, rejected credentials, missing bucket, no
input shards, missing weight files.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping, Sequence

from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.shard_listing import InputShard, list_shards
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote, join

# Fail in seconds, not minutes: one attempt, short connect timeout.
_FAST_FAIL = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 1}}}


class MissingWeightsError(BergScaleError):
    """BERG weight files a readout needs are not under berg_root."""


def fast_fail_options(storage: StorageOptions | None) -> StorageOptions:
    storage = storage or StorageOptions()
    return dataclasses.replace(storage, extra={**_FAST_FAIL, **storage.extra})


def check_bucket(url: str, storage: StorageOptions | None, role: str) -> None:
    """Make one cheap request to the bucket behind `url`; translate failures into advice."""
    if not is_remote(url):
        return
    options = fast_fail_options((storage or StorageOptions()).for_url(url))
    fs, path = filesystem_for(url, options)
    fs.retries = 1  # this instance is private to the fast-fail options
    bucket = path.split("/", 1)[0]
    endpoint = options.resolved_endpoint() or "the default AWS endpoint"
    try:
        fs.invalidate_cache(bucket)
        fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise StorageError(
            f"{role} bucket {bucket!r} does not exist at {endpoint}: create it or fix the URL {url}"
        ) from None
    except PermissionError as exc:
        raise StorageError(
            f"{endpoint} refused the credentials for {role} bucket {bucket!r} ({_first_line(exc)}): "
            f"check storage.key/storage.secret or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except Exception as exc:  # noqa: BLE001 - botocore's connection errors are not OSErrors
        if _is_connection_error(exc):
            raise StorageError(
                f"cannot reach the S3 endpoint {endpoint} for {role} {url}: check "
                f"storage.endpoint_url (or AWS_ENDPOINT_URL) and that the server is running"
            ) from None
        raise StorageError(f"cannot access {role} {url}: {_first_line(exc)}") from None


def check_storage(urls: Mapping[str, Iterable[str]], storage: StorageOptions | None) -> None:
    """Check each distinct bucket once; `urls` maps a role ("input", "output") to URLs."""
    seen: set[str] = set()
    for role, items in urls.items():
        for url in items:
            if not is_remote(url):
                continue
            bucket = url.split("://", 1)[1].split("/", 1)[0]
            if bucket in seen:
                continue
            seen.add(bucket)
            check_bucket(url, storage, role)


def list_input_shards(patterns: Sequence[str], storage: StorageOptions | None) -> list[InputShard]:
    return list_shards(patterns, fast_fail_options(storage) if any(map(is_remote, patterns)) else storage)


def _folder_key(url: str) -> str:
    """`url` as a folder prefix that compares by string: absolute for local paths."""
    if not is_remote(url):
        url = os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/") + "/"


def check_output_location(output: str, shards: Sequence[InputShard]) -> None:
    """The output must be a folder of its own: never a file, never where input tars live.

    An output that holds input shards would have them deleted by `--overwrite` and mixed
    with response files on every run.
    """
    if not is_remote(output) and os.path.isfile(os.path.expanduser(output)):
        raise BergScaleError(
            f"output {output} is a file; give a folder (it is created if missing), e.g. {output}.responses"
        )
    prefix = _folder_key(output)
    inside = [shard.url for shard in shards if _folder_key(shard.url).startswith(prefix)]
    if inside:
        raise BergScaleError(
            f"output {output} holds {len(inside)} input shard(s) (e.g. {inside[0]}); write the "
            f"responses to a folder of their own, e.g. {output.rstrip('/')}-responses, so a rerun "
            "with --overwrite cannot delete inputs"
        )


def required_weight_files(specs: Sequence[Any]) -> list[tuple[str, str]]:
    """(readout label, relative path) for every file the readouts load."""
    from berg_scale.models.families import family_for

    needed: list[tuple[str, str]] = []
    for spec in specs:
        resolved = spec.resolve()
        label = spec.column_base
        family = family_for(spec.model_id)
        for relative in family.weight_files(resolved.card, int(spec.subject), resolved.roi):
            needed.append((label, relative))
        if family.metadata_required(spec):
            needed.append((label, family.metadata_file(resolved.card, int(spec.subject), resolved.roi)))
    return needed


def check_weights(
    berg_root: str, specs: Sequence[Any], storage: StorageOptions | None, backbone: str | None = None
) -> None:
    """Every weight file must exist before a worker tries to load it."""
    fs, root = filesystem_for(berg_root, fast_fail_options(storage) if is_remote(berg_root) else storage)
    if not fs.exists(root):
        raise MissingWeightsError(
            f"berg_root {berg_root} does not exist: point berg_root at a BERG copy "
            f"(`berg-scale fetch-weights` downloads one)"
        )
    missing = []
    for label, relative in required_weight_files(specs):
        if not fs.exists(join(root, relative)):
            missing.append((label, join(berg_root, relative)))
    from berg_scale.models.families import backbones_of

    for needed in backbones_of(spec.model_id for spec in specs):
        if backbone:
            bfs, bpath = filesystem_for(backbone, storage)
            if not bfs.exists(bpath):
                missing.append((f"the {needed.name} backbone (config 'backbone')", backbone))
        elif not needed.default_path().exists():
            missing.append((f"the {needed.name} backbone (torchvision cache; or set 'backbone')",
                            str(needed.default_path())))
    if missing:
        label, path = missing[0]
        raise MissingWeightsError(
            f"{len(missing)} weight file(s) missing, first for {label}: {path}; "
            f"download them with `berg-scale fetch-weights` or fix berg_root/backbone"
        )


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectionError", "ConnectTimeoutError",
                         "ConnectionClosedError", "ClientConnectorError", "ReadTimeoutError"})


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
