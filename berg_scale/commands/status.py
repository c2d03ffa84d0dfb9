"""Show done / failed / pending shards of an output and the totals of its committed shards.

Exit status: 0 when no shard is quarantined, 1 when any is (so scripts can react), 2 when
the path is not a berg-scale output.
"""

from __future__ import annotations

import argparse
import json
import time

from berg_scale.io.endpoints import ENDPOINT_HELP


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="output folder or s3:// prefix of a generation run")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)
    parser.add_argument(
        "--no-input-check", action="store_true",
        help="do not list the input shards or look at the weight files again (by default status "
        "compares both with what was committed, as the next generate would, and says when that "
        "generate would refuse)",
    )
    parser.add_argument(
        "--hash-weights", action="store_true",
        help="read and hash the weight files this machine holds no digest for (by default those "
        "are counted as not verified; the driver's digest cache answers for the rest)",
    )


def output_status(output: str, storage=None, check_inputs: bool = False, hash_weights: bool = False) -> dict:
    """Counts and totals of an output, from its markers and run.json."""
    from berg_scale.errors import BergScaleError
    from berg_scale.io.output_lease import read_lease
    from berg_scale.io.storage import absence_note
    from berg_scale.io.output_store import (
        OutputStore,
        done_shards,
        failed_shards,
        read_done_markers,
        read_manifest,
        response_shards,
    )

    store = OutputStore(output, storage)
    manifest = read_manifest(store)
    marked = done_shards(store)
    # A marker whose response file is gone vouches for nothing: the next run redoes it.
    unbacked = sorted(marked - response_shards(store)) if marked else []
    done = marked - set(unbacked)
    failed = failed_shards(store) - done
    if manifest is None and not done and not failed and read_lease(store) is None:
        raise BergScaleError(
            f"{output} is not a berg-scale output (no run.json, no markers){absence_note(output, storage)}"
        )
    inputs = {entry["name"] if isinstance(entry, dict) else str(entry)
              for entry in (manifest or {}).get("input_shards", [])}
    # Counts are of the shards run.json lists; committed shards it does not list are reported
    # apart (they can only come from outside a run, e.g. copied in by hand).
    unlisted = sorted(done - inputs) if inputs else []
    listed_done = done & inputs if inputs else done
    listed_failed = failed & inputs if inputs else failed
    pending = sorted(inputs - done - failed)
    totals = {"rows": 0, "ok": 0, "errors": 0, "notes": 0}
    markers = read_done_markers(store, done)
    for marker in markers.values():
        for key in totals:
            totals[key] += int(marker.get(key, 0))
    first_note = next(({"shard": name, **markers[name]["note_examples"][0]} for name in sorted(markers)
                       if markers[name].get("note_examples")), None)
    failures = {}
    for name in sorted(listed_failed):
        marker = store.read_json(store.failed_path(name)) or {}
        failures[name] = marker.get("error", "")
    lease = read_lease(store)
    run_status = (manifest or {}).get("status", "unknown")
    if manifest is None and lease is not None:
        run_status = "running"  # a first run still starting: it writes run.json once its workers are up
    if run_status == "running" and (lease is None or _lease_is_dead(lease)):
        run_status = "stopped"  # its driver ended without finishing (killed, or its node lost)
    return {
        "output": output,
        "run_status": run_status,
        "shards": {"total": len(inputs) or len(done | failed), "done": len(listed_done),
                   "failed": len(listed_failed), "pending": len(pending), "unlisted": len(unlisted),
                   "unbacked": len(unbacked), "failed_not_listed": len(failed - listed_failed)},
        "images": totals,
        "first_note": first_note,
        "starting": manifest is None and lease is not None,
        "failed": failures,
        "pending": pending[:50],
        "unlisted": unlisted[:50],
        "unbacked": unbacked[:50],
        "lease": lease,
        "lease_holder_gone": lease is not None and _lease_is_dead(lease),
        "this_run": (manifest or {}).get("this_run", {}),
        "inputs": _input_check(output, manifest, markers, storage, inputs | done) if check_inputs else None,
        "weights": _weights_check(output, manifest, markers, storage, hash_weights) if check_inputs else None,
    }


def _input_check(output: str, manifest: dict | None, markers: dict, storage, known: set) -> dict:
    """What the next `generate` would say of the committed shards' inputs, listed afresh.

    A run recorded as complete may still be refused by the next generate (an input tar
    replaced, the input root moved), or have work to do (tars added under input.shards);
    status should not call such an output complete without saying so.
    """
    from berg_scale.engine.ledger import LedgerMismatch, check_committed_inputs
    from berg_scale.engine.preflight import list_input_shards

    config = (manifest or {}).get("config") or {}
    patterns = (config.get("input") or {}).get("shards")
    if not patterns or not markers:
        return {"checked": False, "note": "no recorded input shards or no committed shards to compare"}
    try:
        options = _recorded_storage(config, storage)
        shards = list_input_shards([patterns] if isinstance(patterns, str) else list(patterns), options)
    except Exception as exc:  # noqa: BLE001 - an unreachable input is a note here, not a failure
        return {"checked": False, "note": f"input shards not listed ({' '.join(str(exc).split())[:200]})"}
    new = sorted(shard.name for shard in shards if shard.name not in known)
    added = {"new_shards": len(new), "first_new": new[0] if new else None}
    try:
        check_committed_inputs(output, markers, shards)
    except LedgerMismatch as exc:
        return {"checked": True, "ok": False, "problem": str(exc), **added}
    return {"checked": True, "ok": True, **added}


def _weights_check(output: str, manifest: dict | None, markers: dict, storage, hash_unknown: bool) -> dict:
    """What the next `generate` would say of the weight files that made the committed shards."""
    from berg_scale.engine.weights_recheck import recheck_weights, recorded_weights

    config = (manifest or {}).get("config") or {}
    berg_root = config.get("berg_root")
    if not berg_root or not recorded_weights(markers):
        return {"checked": False, "note": "no recorded berg_root or weight digests to compare"}
    try:
        found = recheck_weights(output, markers, str(berg_root), config.get("backbone"),
                                _recorded_storage(config, storage), hash_unknown)
    except Exception as exc:  # noqa: BLE001 - an unreachable root is a note here, not a failure
        return {"checked": False, "note": f"weight files not read ({' '.join(str(exc).split())[:200]})"}
    return {"checked": True, **found.as_dict()}


def _recorded_storage(config: dict, storage):
    """The run's storage settings as run.json keeps them (endpoints, regions, anonymous
    access, per-prefix blocks); credentials are masked there, so they come from the
    environment, as for any run without them in its config."""
    from berg_scale.config import StorageConfig

    if storage is not None:
        return storage
    recorded = config.get("storage") or {}
    blocks = {prefix: _without_secrets(block or {}) for prefix, block in (recorded.get("prefixes") or {}).items()}
    return StorageConfig.model_validate({**_without_secrets(recorded), "prefixes": blocks}).options()


def _without_secrets(block: dict) -> dict:
    return {name: value for name, value in block.items() if name not in ("key", "secret")}


def _lease_is_dead(lease: dict) -> bool:
    """The lease's driver is known to be gone (its process, here) or stopped renewing."""
    from berg_scale.io.output_lease import holder_process_gone

    age = time.time() - float(lease.get("renewed_at") or 0)
    return holder_process_gone(lease) or age > float(lease.get("ttl_s") or 120)


def run(args: argparse.Namespace) -> int:
    from berg_scale.engine.progress import where_noted
    from berg_scale.io.storage import StorageOptions
    from berg_scale.io.storage_errors import storage_errors

    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    with storage_errors(args.output, storage or StorageOptions(), what="read"):
        summary = output_status(args.output, storage, check_inputs=not args.no_input_check,
                                hash_weights=args.hash_weights)
    exit_code = 1 if summary["shards"]["failed"] else 0
    if args.json:
        print(json.dumps(summary, indent=1))
        return exit_code
    shards, images = summary["shards"], summary["images"]
    run_status = summary["run_status"]
    inputs = summary["inputs"] or {}
    weights = summary["weights"] or {}
    changed = [what for what, check in (("inputs", inputs), ("weights", weights)) if check.get("problem")]
    if run_status == "nothing-to-do":
        run_status = "complete; the last `generate` found nothing to do"
    new = int(inputs.get("new_shards") or 0)
    if summary.get("starting") and run_status == "running":
        run_status = "running, starting up: the shard list comes with run.json, once its workers are ready"
    if run_status == "stopped":
        run_status = "stopped before finishing; run `berg-scale generate` again to resume"
    elif changed:
        run_status += f", but its {' and '.join(changed)} changed since: see below"
    elif run_status.startswith("complete") and (new or shards["pending"]):
        waiting = [f"{new} new input shard{'s' if new != 1 else ''}"] if new else []
        if shards["pending"]:
            waiting.append(f"{shards['pending']} shard{'s' if shards['pending'] != 1 else ''} no longer committed")
        run_status += f"; the next `generate` has work: {' and '.join(waiting)}"
    print(f"output:  {summary['output']} (last run: {run_status})")
    print(f"shards:  {shards['done']} done, {shards['failed']} failed, {shards['pending']} pending, "
          f"of {shards['total']}")
    print(f"images:  {images['rows']} rows, {images['ok']} ok, {images['errors']} error rows")
    if images["notes"]:
        print(f"notes:   {images['notes']} reader note(s): members left out or sidecars not read "
              f"(`note_examples` in _done/<shard>.json quotes them)")
        first = summary["first_note"]
        if first:
            print(f"         first, in {where_noted(first)}: {first.get('note', '')}")
    if shards["unlisted"]:
        print(f"unlisted: {shards['unlisted']} committed shard(s) not in run.json's input shards "
              f"(first: {summary['unlisted'][0]})")
    if shards["unbacked"]:
        print(f"missing: {shards['unbacked']} shard marker(s) without their response file (first: "
              f"{summary['unbacked'][0]}); run `berg-scale generate` again to regenerate them")
    lease = summary["lease"]
    if lease:
        age = time.time() - float(lease.get("renewed_at") or 0)
        state = " (stale)" if age > float(lease.get("ttl_s") or 120) else ""
        if summary["lease_holder_gone"] and not state:
            state = " (that process has exited; the next `generate` takes the lease over)"
        print(f"writer:  run {lease.get('run_id')} on {lease.get('host')} (pid {lease.get('pid')}), "
              f"lease renewed {age:.0f} s ago{state}")
    this_run = summary["this_run"]
    rate = this_run.get("images_per_second")
    if rate:
        line = (f"last run: {this_run.get('images', 0)} images at {rate:.1f} images/s of processing "
                "(from the first ready worker")
        overall, startup = this_run.get("images_per_second_overall"), this_run.get("startup_seconds")
        if overall and startup is not None:
            line += f"; {overall:.1f} images/s including {startup:.0f} s of start-up"
        print(line + ")")
    for name, error in summary["failed"].items():
        print(f"failed:  {name}: {error}")
    if shards["failed_not_listed"]:
        print(f"stale:   {shards['failed_not_listed']} quarantine record(s) in _failed/ of shards that are "
              f"no longer inputs (the next run removes them)")
    if new:
        print(f"new:     {new} input shard{'s' if new != 1 else ''} under input.shards that the last run "
              f"did not list (first: {inputs['first_new']})")
    if inputs.get("ok") is False:
        print(f"inputs:  the next `generate` would refuse: {inputs['problem']}")
    elif inputs and not inputs.get("checked") and "not listed" in inputs.get("note", ""):
        print(f"inputs:  not checked: {inputs['note']}")
    if weights.get("problem"):
        print(f"weights: the next `generate` would refuse: {weights['problem']}")
    elif weights.get("unverified"):
        print(f"weights: {weights['unverified']} weight file(s) not verified (first: "
              f"{weights['unverified_examples'][0]}): this machine holds no digest for their bytes as they "
              "are now (hashed elsewhere, or changed since); `status --hash-weights` reads them")
    elif weights and not weights.get("checked") and "not read" in weights.get("note", ""):
        print(f"weights: not checked: {weights['note']}")
    if summary["pending"]:
        shown = summary["pending"][:10]
        more = shards["pending"] - len(shown)
        print(f"pending: {', '.join(shown)}" + (f" (+{more} more)" if more > 0 else ""))
    return exit_code
