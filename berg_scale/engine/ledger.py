"""The run ledger: which committed shards are still valid for the run about to start.

Each commit marker (`_done/<shard>.json`) records what made its shard: the input's URL,
size and change stamp (ETag on S3, mtime on disk), the config fingerprint and the sha256
of every weight and metadata file. Before a run skips, adopts or overwrites anything,
the driver compares those records with what it is about to do and refuses, in one line
that names what changed and the way out, when they disagree:

* a different config (readouts, input settings, precision),
* different weights under `berg_root` (named file by file),
* committed shards whose input bytes changed, or that now come from another dataset,
* committed shards that are no longer among `input.shards`, including the same file
  reached under a new shard name (a moved input root), which would otherwise be
  written a second time.

A committed shard whose input moved but whose size and stamp are unchanged is the same
bytes and is kept. Extending `input.shards` and resuming only adds work. A marker whose
response file is gone (deleted by hand, or a clear that stopped midway) vouches for
nothing: its shard is run again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from berg_scale.errors import ConfigError
from berg_scale.io.output_store import (
    OutputStore,
    done_shards,
    read_done_markers,
    response_shards,
    with_storage_retries,
)
from berg_scale.io.shard_listing import InputShard
from berg_scale.io.storage import StorageOptions
from berg_scale.weights.digest_cache import DigestCache, default_cache_path

WAY_OUT = "use --overwrite to discard the existing responses, or a new output"


class LedgerMismatch(ConfigError):
    """The output holds responses that the run about to start would not produce."""


@dataclass(frozen=True)
class RunBinding:
    """What this run's responses depend on, as recorded in every marker it writes."""

    config_fingerprint: str
    weights: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def marker_fields(self) -> dict[str, Any]:
        return {"config_fingerprint": self.config_fingerprint, "weights": dict(self.weights)}


@dataclass
class LedgerPlan:
    """The outcome of reconciling an output with a run: what to do and what to keep."""

    todo: list[InputShard]
    committed: list[str]
    relocated: list[str] = field(default_factory=list)  # kept: same bytes, new location
    unbacked: list[str] = field(default_factory=list)  # marker without its response file: rerun


def hash_weights(
    berg_root: str, specs: Sequence[Any], storage: StorageOptions | None, backbone: str | None = None
) -> dict[str, str]:
    """sha256 of every file the readouts read (weights and metadata), on the driver.

    Hashing here, before any worker starts, is what lets a changed berg_root be refused
    before GPUs are taken; workers hash the same files again when they load them and the
    run stops if the two disagree.
    """
    from berg_scale.engine.preflight import required_weight_files
    from berg_scale.models.families import backbones_of
    from berg_scale.models.store import WeightStore, backbone_hash_key, sha256_of_url

    store = WeightStore(berg_root, storage)
    digests = DigestCache(default_cache_path())
    files = sorted({relative for _, relative in required_weight_files(specs)})
    try:
        hashes = {relative: store.sha256(relative, digests) for relative in files}
        if backbone and backbones_of(spec.model_id for spec in specs):
            hashes[backbone_hash_key(backbone)] = sha256_of_url(backbone, storage, digests)
    finally:
        digests.save()  # what was hashed before a failure need not be hashed again
    return hashes


def reconcile(
    store: OutputStore,
    shards: Sequence[InputShard],
    binding: RunBinding,
    previous: dict[str, Any] | None,
    config: dict[str, Any] | None = None,
) -> LedgerPlan:
    """Decide what to run; raise LedgerMismatch when the output cannot be resumed as is.

    `config` is this run's redacted config: with it, a refused config change names the
    settings that differ from those run.json recorded.
    """
    _check_config(store.url, previous, binding, config)
    done = with_storage_retries(lambda: done_shards(store), "listing _done/")
    markers = with_storage_retries(lambda: read_done_markers(store, done), "reading _done/ markers")
    present = with_storage_retries(lambda: response_shards(store), "listing responses/") if markers else set()
    unbacked = sorted(name for name in markers if name not in present)
    for name in unbacked:
        del markers[name]
    _check_marker_configs(store.url, markers, binding)
    _check_weights(store.url, markers, previous, binding)
    by_name = {shard.name: shard for shard in shards}
    relocated = _check_inputs(store.url, markers, by_name)
    _check_not_listed(store.url, markers, by_name)
    todo = [shard for shard in shards if shard.name not in markers]
    return LedgerPlan(todo=todo, committed=sorted(markers), relocated=relocated, unbacked=unbacked)


def check_committed_inputs(output: str, markers: dict[str, dict[str, Any]], shards: Sequence[InputShard]) -> None:
    """The input checks of `reconcile` alone, for `status`: raise LedgerMismatch as it would."""
    by_name = {shard.name: shard for shard in shards}
    _check_inputs(output, markers, by_name)
    _check_not_listed(output, markers, by_name)


def check_committed_weights(
    output: str, markers: Mapping[str, Mapping[str, Any]], weights: dict[str, str]
) -> None:
    """The weight check of `reconcile` alone, for `status`: raise LedgerMismatch as it would."""
    _check_weights(output, markers, None, RunBinding("", weights))


def marker_weights(marker: Mapping[str, Any]) -> dict[str, str]:
    """The weight digests a commit marker records (relative path -> sha256)."""
    return dict(marker.get("weights") or marker.get("weight_hashes") or {})


# --------------------------------------------------------------------------- checks


def _check_config(
    output: str, previous: dict[str, Any] | None, binding: RunBinding, config: dict[str, Any] | None
) -> None:
    old = (previous or {}).get("fingerprints", {}).get("config")
    if old and old != binding.config_fingerprint:
        raise LedgerMismatch(
            f"{output} holds responses of a different config ({_config_change(previous, config)}): {WAY_OUT}"
        )


def _config_change(previous: dict[str, Any] | None, config: dict[str, Any] | None) -> str:
    """The settings that changed, as `path: old -> new` (the first three)."""
    before = _numbers_settings((previous or {}).get("config") or {})
    differences = _differences(before, _numbers_settings(config or {})) if before and config else []
    if not differences:
        return "readouts, input settings or precision changed"
    shown = "; ".join(f"{path}: {_short(old)} -> {_short(new)}{_reorder_hint(old, new)}"
                      for path, old, new in differences[:3])
    more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
    return f"{shown}{more}"


def _reorder_hint(old: Any, new: Any) -> str:
    """Say when a list only changed order: its order is the column order, so it counts."""
    if not (isinstance(old, list) and isinstance(new, list)) or old == new:
        return ""
    if sorted(map(_canonical, old)) != sorted(map(_canonical, new)):
        return ""
    return " (the same entries in another order, which sets the column order: keep the original order)"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _numbers_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a redacted config that change the numbers (as in the config fingerprint)."""
    settings = {key: value for key, value in (config.get("input") or {}).items() if key != "shards"}
    return {"input": settings, "readouts": config.get("readouts"),
            "resources": {"precision": (config.get("resources") or {}).get("precision")}}


_MISSING = object()


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}" if path else key)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and all(isinstance(item, dict) for item in old + new):
        found = []
        for index, (a, b) in enumerate(zip(old, new)):
            found += _differences(a, b, f"{path}[{index}]")
        return found
    return [] if old == new else [(path, old, new)]


def _short(value: Any) -> str:
    text = "(not set)" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_marker_configs(output: str, markers: dict[str, dict[str, Any]], binding: RunBinding) -> None:
    other = sorted(name for name, marker in markers.items()
                   if marker.get("config_fingerprint") not in (None, binding.config_fingerprint))
    if other:
        raise LedgerMismatch(
            f"{len(other)} committed shard(s) of {output} were made with a different config "
            f"(first: {other[0]}; readouts, input settings or precision changed): {WAY_OUT}"
        )


def _check_weights(
    output: str, markers: Mapping[str, Mapping[str, Any]], previous: dict[str, Any] | None, binding: RunBinding
) -> None:
    if not binding.weights:
        return  # a model without weight files (stand-ins); workers' fingerprints still guard
    changed: dict[str, tuple[str, str]] = {}
    affected: set[str] = set()
    records: list[tuple[str | None, dict[str, str]]] = [
        (name, marker_weights(marker)) for name, marker in markers.items()
    ]
    if previous and previous.get("weight_hashes"):
        records.append((None, previous["weight_hashes"]))
    for name, recorded in records:
        for relative, old in recorded.items():
            new = binding.weights.get(relative)
            if new is not None and old != new:
                changed.setdefault(relative, (old, new))
                if name is not None:
                    affected.add(name)
    if not changed:
        return
    relative, (old, new) = sorted(changed.items())[0]
    more = f" and {len(changed) - 1} more file(s)" if len(changed) > 1 else ""
    shards = f"{len(affected)} committed shard(s)" if affected else "the committed shards"
    raise LedgerMismatch(
        f"the weights under berg_root differ from those that made {shards} of {output}: "
        f"{relative} changed (sha256 {old[:12]} -> {new[:12]}){more}; {WAY_OUT}"
    )


def _same_bytes(marker: dict[str, Any], shard: InputShard) -> bool | None:
    """True/False when size and stamp were recorded on both sides; None when unknown."""
    size, stamp = marker.get("input_size"), marker.get("input_stamp")
    if size is None or stamp is None or shard.size is None or shard.stamp is None:
        return None
    return int(size) == int(shard.size) and str(stamp) == str(shard.stamp)


def _describe_input(url: Any, size: Any, stamp: Any) -> str:
    details = ", ".join(str(part) for part in (f"{size} bytes" if size is not None else None,
                                               _stamp_text(stamp)) if part)
    return f"{url} ({details})" if details else str(url)


def _stamp_text(stamp: Any) -> str | None:
    if stamp is None:
        return None
    try:
        import time

        return "modified " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(stamp)))
    except ValueError:
        return f"ETag {str(stamp)[:12]}"


def _check_inputs(output: str, markers: dict[str, dict[str, Any]], by_name: dict[str, InputShard]) -> list[str]:
    changed: list[tuple[str, str, str, str]] = []
    relocated: list[str] = []
    for name, marker in sorted(markers.items()):
        shard = by_name.get(name)
        if shard is None:
            continue
        same = _same_bytes(marker, shard)
        old_url = marker.get("input")
        if old_url == shard.url and same is not False:
            continue
        if old_url != shard.url and same:
            relocated.append(name)
            continue
        before = _describe_input(old_url, marker.get("input_size"), marker.get("input_stamp"))
        after = _describe_input(shard.url, shard.size, shard.stamp)
        what = "changed since it was committed" if old_url == shard.url else "now comes from a different file"
        changed.append((name, before, after, what))
    if changed:
        name, before, after, what = changed[0]
        raise LedgerMismatch(
            f"the input of {len(changed)} committed shard(s) of {output} {what} (first: {name}: "
            f"{before} -> {after}); {WAY_OUT} (or point input.shards back at the original data; to "
            f"regenerate only those shards, delete their _done/<shard>.json markers and run again)"
        )
    return relocated


def _check_not_listed(output: str, markers: dict[str, dict[str, Any]], by_name: dict[str, InputShard]) -> None:
    orphans = sorted(name for name in markers if name not in by_name)
    if not orphans:
        return
    by_bytes = {(shard.size, shard.stamp): shard for shard in by_name.values()
                if shard.size is not None and shard.stamp is not None and shard.name not in markers}
    moved: list[tuple[str, InputShard]] = []
    for name in orphans:
        size, stamp = markers[name].get("input_size"), markers[name].get("input_stamp")
        twin = by_bytes.get((size, stamp)) if size is not None and stamp is not None else None
        if twin is not None:
            moved.append((name, twin))
    if moved:
        name, twin = moved[0]
        raise LedgerMismatch(_moved_file_message(output, name, markers[name], twin, len(moved)))
    first = markers[orphans[0]]
    raise LedgerMismatch(
        f"{len(orphans)} committed shard(s) of {output} are not among input.shards (first: "
        f"{orphans[0]!r} from {first.get('input')}): the output would hold images that are not in "
        f"the input; add them back to input.shards, or {WAY_OUT}"
    )


def _moved_file_message(output: str, name: str, marker: Mapping[str, Any], twin: InputShard, count: int) -> str:
    """Name the move a user made: a file moved inside the listed folder, or a new input root.

    Both would write the file's images a second time under a new shard name, but the way
    back differs: moving one file back, or pointing input.shards at the old root.
    """
    old_url = str(marker.get("input") or "")
    stamp = marker.get("input_stamp")
    same = f"same size and {'ETag' if not _is_number(stamp) else 'mtime'}"
    root = twin.url[: -len(twin.relative)] if twin.relative and twin.url.endswith(twin.relative) else None
    if root and old_url.startswith(root) and old_url != twin.url:
        old_relative = old_url[len(root):]
        others = f" ({count - 1} more committed shard(s) moved the same way)" if count > 1 else ""
        return (
            f"input shard {twin.relative} is the same file as committed shard {name!r}, which was "
            f"{old_relative} ({same}): it moved inside the input folder {root.rstrip('/')}{others}, "
            f"and shard names are paths relative to that folder, so its images would be written "
            f"twice, under the new name {twin.name!r}; move it back to {old_relative}, or, to keep "
            f"the new layout, delete {output}/_done/{name}.json and {output}/responses/{name}.parquet "
            f"(and each moved shard's pair) so the shard is made again under its new name, or {WAY_OUT}"
        )
    return (
        f"input shard {twin.url} (output name {twin.name!r}) is the same file as committed "
        f"shard {name!r} (from {old_url}: {same}): the input root moved, so its "
        f"images would be written twice; point input.shards at the folder the output was "
        f"made from (shard names are paths relative to it), or {WAY_OUT}"
    )


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False

