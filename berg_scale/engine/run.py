"""A whole generation run, from a validated config to a committed output folder.

The conductor only orders the parts; each lives in its own module:

1. preflight (`preflight`): storage access, the shard list, weight files present;
2. the lease (`io.output_lease`): one driver per output, taken before anything is read;
3. the ledger (`ledger`): weights hashed on the driver, every committed shard's marker
   compared with this run's config, weights and inputs; a mismatch is refused here,
   before any worker starts and before `run.json` is touched;
4. the worker pool (`worker_pool`) and the scheduler (`scheduler`);
5. `run.json`, written only once every refusal has passed, and rewritten at the end.

readouts.json comes from a worker rather than the driver: computing column coordinates
needs the weight files (fsaverage ROI tables, EEG channel lists), and loading models on
the driver would cost a GPU node's worth of memory for a list of indices.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from dataclasses import dataclass, field
from typing import Any

from berg_scale.config import RunConfig
from berg_scale.engine.ledger import LedgerMismatch, RunBinding, hash_weights, reconcile
from berg_scale.engine.manifest import build_manifest
from berg_scale.engine.model_factory import ModelSetFactory
from berg_scale.engine.preflight import (
    check_output_location,
    check_storage,
    check_weights,
    list_input_shards,
)
from berg_scale.engine.progress import LiveProgress, RunStats, StartupPhases, where_noted
from berg_scale.engine.scheduler import (
    RetryPolicy,
    SchedulerReport,
    ShardScheduler,
    WorkerSlot,
)
from berg_scale.engine.shard_pipeline import ShardSettings
from berg_scale.engine.termination import sigterm_as_interrupt
from berg_scale.engine.worker_pool import (
    start_workers,
    stop_workers,
    wait_for_first_worker,
)
from berg_scale.io.output_lease import OutputLease, holder_process_gone, new_run_id
from berg_scale.io.output_store import (
    TMP_DIR,
    OutputStore,
    clear_output,
    done_shards,
    failed_shards,
    read_manifest,
    read_readouts,
    with_storage_retries,
    write_manifest,
    write_readouts,
)
from berg_scale.io.shard_listing import InputShard
from berg_scale.io.storage import join
from berg_scale.models.encoder import EncoderFactory
from berg_scale.weights.digest_cache import forget_remembered_digest


@dataclass
class RunResult:
    output: str
    status: str  # complete | incomplete | nothing-to-do
    stats: RunStats
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    scheduler: SchedulerReport | None = None

    @property
    def exit_code(self) -> int:
        return 0 if not self.failed else 1

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"output: {self.output}",
            f"shards: {s.shards_done} done now, {s.shards_skipped} already done, "
            f"{s.shards_failed} quarantined, of {s.shards_total}",
            f"images: {s.images} ({s.images_ok} ok, {s.images_error} error rows)",
        ]
        if s.notes:
            lines.append(f"notes: {s.notes} reader note(s): members left out or sidecars not read "
                         f"(`berg-scale status {self.output}` and _done/<shard>.json quote them)")
            first = s.first_note
            if first:
                lines.append(f"       first, in {where_noted(first)}: {first.get('note', '')}")
        if s.images:  # a run with nothing to do has no rate to report
            lines.append(f"rate: {s.rate_line()}")
        for name, info in sorted(self.failed.items())[:10]:
            lines.append(f"quarantined {name}: {info.get('error')}")
        if len(self.failed) > 10:
            lines.append(f"... and {len(self.failed) - 10} more quarantined shards (see _failed/)")
        return "\n".join(lines)


def run_generation(
    config: RunConfig,
    *,
    overwrite: bool = False,
    take_over: bool = False,
    model_factory: EncoderFactory | None = None,
    show_progress: bool | None = None,
    ray_address: str | None = None,
    allow_auto_address: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run (or resume) the generation described by `config`."""
    log = log or (lambda message: print(message, file=sys.stderr))
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    started_at = time.time()
    storage = config.storage_options()
    specs = config.readout_specs()
    factory = model_factory or ModelSetFactory.from_config(config)
    needs_weights = getattr(factory, "needs_weights", True)

    # --- preflight: nothing below starts a worker ------------------------------------
    patterns = config.input.shard_patterns()
    roles = {"input": patterns, "output": [config.output]}
    if needs_weights:
        roles["berg_root"] = [config.berg_root]
    check_storage(roles, storage)
    shards = list_input_shards(patterns, storage)
    check_output_location(config.output, shards)
    if needs_weights:
        check_weights(config.berg_root, specs, storage, config.backbone)

    run_id = new_run_id()
    store = OutputStore(config.output, storage, run_id=run_id)
    lease = OutputLease(store, run_id)
    with_storage_retries(lambda: lease.acquire(take_over=take_over), "taking the output's lease")
    try:
        if lease.taken_over:
            previous_run = lease.taken_over.get("run_id")
            holder = lease.taken_over
            age = time.time() - float(holder.get("renewed_at") or 0)
            if holder_process_gone(holder):
                why = "which is no longer running"
            elif holder.get("host") == socket.gethostname():
                why = (f"whose lease was not renewed for {age:.0f} s although its process still "
                       f"exists (stopped or stalled; if it resumes, it finds its lease taken and stops)")
            else:
                why = f"whose lease was not renewed for {age:.0f} s"
            log(f"took over the lease of run {previous_run} (host {holder.get('host')}, "
                f"pid {holder.get('pid')}), {why}")
            if previous_run:
                with_storage_retries(lambda: store.remove_tree(f"{TMP_DIR}/{previous_run}"),
                                     "cleaning the stopped run's staging files")
        return _run_holding_lease(config, factory, store, lease, shards, specs, needs_weights,
                                  overwrite=overwrite, started_at=started_at, show_progress=show_progress,
                                  ray_address=ray_address, allow_auto_address=allow_auto_address, log=log)
    finally:
        # Workers are stopped and run.json is written: this run's staging files are garbage
        # (other runs' are not ours to remove).
        try:
            with_storage_retries(lambda: store.remove_tree(store.staging_folder()), "cleaning this run's _tmp/")
            store.remove_folder_if_empty(TMP_DIR)
        finally:
            lease.release()


def _run_holding_lease(
    config: RunConfig, factory: Any, store: OutputStore, lease: OutputLease, shards: list[InputShard],
    specs: list[Any], needs_weights: bool, *, overwrite: bool, started_at: float, show_progress: bool,
    ray_address: str | None, allow_auto_address: bool, log: Callable[[str], None],
) -> RunResult:
    storage = store.storage
    weights = hash_weights(config.berg_root, specs, storage, config.backbone) if needs_weights else {}
    binding = RunBinding(config.input_fingerprint(), weights)
    if overwrite:
        # The old output is cleared only once a worker has loaded the models: a typo in the
        # config or a bad weight file must not cost the responses already there.
        previous = None
        todo = list(shards)
    else:
        previous = with_storage_retries(lambda: read_manifest(store), "reading run.json")
        todo = _plan_resume(store, shards, binding, previous, config, log)
    stats = RunStats(shards_total=len(shards), shards_skipped=len(shards) - len(todo))
    # Storage checks, listing, weight hashing and the ledger ran before this point.
    preflight_seconds = max(time.time() - started_at, 0.0)
    stats.startup_phases["preflight"] = preflight_seconds
    manifest_args: dict[str, Any] = {
        "config": config.redacted(),
        "config_fingerprint": binding.config_fingerprint,
        "model_fingerprint": (previous or {}).get("fingerprints", {}).get("model"),
        "weight_hashes": weights or (previous or {}).get("weight_hashes"),
        "input_shards": [s.name for s in shards],  # names only: run.json stays small at 10^6 shards
        "started_at": started_at,
        "run_id": store.run_id,
        "ray_job": lease.holder().get("ray_job"),
    }
    if not todo:
        log(f"nothing to do: {'the one shard' if len(shards) == 1 else f'all {len(shards)} shards'} of "
            f"{config.output} {'is' if len(shards) == 1 else 'are'} committed")
        stats.finished = time.monotonic()
        _write_manifest(store, manifest_args, "nothing-to-do", stats, shards_done=len(shards))
        return RunResult(config.output, "nothing-to-do", stats)

    # --- workers ------------------------------------------------------------------------
    from berg_scale.engine.ray_connect import ensure_ray

    settings = ShardSettings(
        output=config.output,
        storage=storage,
        image_size=config.input.image_size,
        crop=config.input.crop,
        decode_options=config.input.decode_options(),
        batch_size=config.resources.batch_size,
        decode=config.resources.decode,
        decode_threads=config.resources.decode_threads,
        decode_workers=config.resources.decode_workers,
        decode_nodes=config.resources.decode_nodes,
        decode_in_flight=config.resources.decode_in_flight,
        shards_in_flight=config.resources.shards_in_flight,
        error_rate_threshold=config.retries.error_rate_threshold,
        device=config.resources.device,
        run_id=store.run_id,
        binding=binding.marker_fields(),
        sample_metadata=tuple(config.input.metadata),
    )
    phases = StartupPhases(stats, log, live=show_progress)
    with phases.phase("ray", "connecting to Ray"):
        we_started_ray = ensure_ray(ray_address, allow_auto=allow_auto_address)
    slots: list[WorkerSlot] = []
    progress: LiveProgress | None = None
    report: SchedulerReport | None = None
    described = interrupted = False  # run.json says "running" / the run was stopped
    with sigterm_as_interrupt():  # entered after ensure_ray: it replaces Ray's handler
        try:
            with phases.phase("workers", "starting workers and loading the models"):
                slots = start_workers(config, factory, settings, n_shards=len(todo), log=log)
                first = wait_for_first_worker(slots, config.resources.startup_timeout_s)
            if first.get("model_load_seconds") is not None:
                phases.record("model_load", float(first["model_load_seconds"]))
                log(f"start-up: the first of {_count(len(slots), 'worker')} loaded its models in "
                    f"{first['model_load_seconds']:.1f} s on {first.get('info', {}).get('device', '?')}")
            _check_same_model(previous, first, weights, config)
            if overwrite:
                with phases.phase("clear_output", "discarding the existing responses (--overwrite)"):
                    with_storage_retries(lambda: clear_output(store), "clearing the output")
            manifest_args["model_fingerprint"] = first["fingerprint"]
            manifest_args["model_weight_hashes"] = first["weight_hashes"]
            with phases.phase("describe_output", "writing run.json and readouts.json"):
                _write_manifest(store, manifest_args, "running", stats)
                described = True
                if overwrite or with_storage_retries(lambda: read_readouts(store), "reading readouts.json") is None:
                    import ray

                    ready_slot = next(slot for slot in slots if slot.state == "idle")
                    columns = ray.get(ready_slot.handle.column_coords.remote())
                    with_storage_retries(lambda: write_readouts(store, columns), "writing readouts.json")
            log(f"generating {_count(len(todo), 'shard')} ({stats.shards_skipped} already done) with "
                f"{_count(len(slots), 'worker')} into {config.output}")
            stats.startup_seconds = preflight_seconds + stats.elapsed
            stats.started = time.monotonic()  # throughput counts from the first ready worker
            progress = LiveProgress(stats, slots, todo, live=show_progress, log=log)

            def on_done(name: str, marker: dict[str, Any]) -> None:
                lease.check()
                stats.add_marker(marker, name)
                progress.shard_done(name, marker)

            def on_failed(name: str, info: dict[str, Any]) -> None:
                lease.check()
                stats.shards_failed += 1
                progress.shard_failed(name)
                log(f"quarantined shard {name} after {info.get('attempts')} attempt(s): {info.get('error')}")

            policy = RetryPolicy(
                max_attempts=config.retries.max_attempts,
                backoff_s=config.retries.backoff_s,
                speculative_tail=config.retries.speculative_tail,
                speculative_min_elapsed_s=config.retries.speculative_min_elapsed_s,
                startup_timeout_s=config.resources.startup_timeout_s,
                shards_in_flight=config.resources.shards_in_flight,
            )
            scheduler = ShardScheduler(slots, todo, store, policy, on_done=on_done, on_failed=on_failed)
            report = scheduler.run()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if progress is not None:
                progress.close()
            stop_workers(slots)
            if we_started_ray:
                import ray

                ray.shutdown()
            if interrupted and described:
                stats.finished = time.monotonic()
                _write_manifest(store, manifest_args, "interrupted", stats,
                                shards_done=_committed_count(store, shards))
    stats.finished = time.monotonic()
    status = "complete" if not report.failed else "incomplete"
    workers = [{"worker": slot.index, "shards_done": slot.shards_done, "losses": slot.losses,
                "state": slot.state, **{k: v for k, v in slot.info.items() if k != "worker"}}
               for slot in slots]
    _write_manifest(
        store, manifest_args, status, stats,
        shards_done=_committed_count(store, shards),
        workers=workers,
        scheduler=_scheduler_summary(report),
        failed={name: info.get("error", "") for name, info in report.failed.items()},
    )
    return RunResult(config.output, status, stats, dict(report.failed), workers, report)


def _committed_count(store: OutputStore, shards: list[InputShard]) -> int:
    """How many of this run's input shards have a commit marker now (for run.json)."""
    done = with_storage_retries(lambda: done_shards(store), "listing _done/")
    return len(done & {shard.name for shard in shards})


def _plan_resume(store: OutputStore, shards: list[InputShard], binding: RunBinding,
                 previous: dict[str, Any] | None, config: RunConfig,
                 log: Callable[[str], None]) -> list[InputShard]:
    """The shards still to run, after the ledger's refusals and its bookkeeping repairs."""
    plan = reconcile(store, shards, binding, previous, config.redacted())
    if plan.unbacked:
        log(f"{len(plan.unbacked)} shard marker(s) have no response file (first: {plan.unbacked[0]}); "
            f"those shards are generated again")
        _remove_records(store, [store.done_path(name) for name in plan.unbacked])
    stale = sorted(with_storage_retries(lambda: failed_shards(store), "listing _failed/")
                   - {shard.name for shard in shards})
    if stale:
        log(f"removing {len(stale)} quarantine record(s) of shards that are no longer inputs "
            f"(first: {stale[0]})")
        _remove_records(store, [store.failed_path(name) for name in stale])
    if plan.relocated:
        log(f"{len(plan.relocated)} committed shard(s) are now read from a new location with the "
            f"same size and stamp (first: {plan.relocated[0]}); kept")
    return plan.todo


def _hashed_url(config: RunConfig, relative: str) -> str:
    """The URL behind a weight_hashes entry (BERG files are relative, the backbone is named)."""
    if relative.startswith("backbone:") and config.backbone:
        return config.backbone
    return join(config.berg_root, relative)


def _remove_records(store: OutputStore, paths: list[str]) -> None:
    for path in paths:
        with_storage_retries(partial(store.remove, path), f"removing {path}")


# --------------------------------------------------------------------------- manifest


def _check_same_model(
    previous: dict[str, Any] | None, first: dict[str, Any], weights: dict[str, str], config: RunConfig
) -> None:
    """The worker's view must agree with the driver's (files can change in between)."""
    output = config.output
    for relative, digest in (first.get("weight_hashes") or {}).items():
        expected = weights.get(relative)
        if expected is not None and expected != digest:
            forget_remembered_digest(_hashed_url(config, relative))
            raise LedgerMismatch(
                f"{relative} under berg_root changed while the run started, or was rewritten "
                f"keeping its size and modification time (sha256 {expected[:12]} on the driver, "
                f"{digest[:12]} on a worker): run again once the copy is complete; the driver "
                "will hash it afresh"
            )
    old = (previous or {}).get("fingerprints", {}).get("model")
    fingerprint = first["fingerprint"]
    if old and old != fingerprint:
        raise LedgerMismatch(
            f"{output} was written with a different model (weights, precision, resampling or "
            f"engine version; fingerprint {old[:12]} != {fingerprint[:12]}): use a new output, "
            f"or --overwrite to discard it"
        )


def _write_manifest(store: OutputStore, args: dict[str, Any], status: str, stats: RunStats, *,
                    shards_done: int | None = None, **extra: Any) -> None:
    shards = {
        "total": stats.shards_total,
        "done": shards_done if shards_done is not None else stats.shards_skipped + stats.shards_done,
        "failed": stats.shards_failed,
    }
    manifest = build_manifest(status=status, this_run=stats.to_dict(), shards=shards, **args, **extra)
    with_storage_retries(lambda: write_manifest(store, manifest), "writing run.json")


def _scheduler_summary(report: SchedulerReport) -> dict[str, Any]:
    return {
        "speculative_started": report.speculative_started,
        "speculative_won": report.speculative_won,
        "worker_losses": report.worker_losses,
        "workers_dead": report.workers_dead,
        "executions_per_worker": {str(k): v for k, v in report.executions_per_worker.items()},
    }


def shards_of(config: RunConfig) -> list[InputShard]:
    """The input shards of a config (used by `status` when run.json is missing)."""
    return list_input_shards(config.input.shard_patterns(), config.storage_options())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
