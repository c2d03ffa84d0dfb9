"""A whole generation run, from a validated config to a committed output folder.

Order matters: everything that can be checked from the driver (config, storage access,
shard list, weight files, the fingerprint of an existing output) is checked before any
worker starts; workers start next, the first one that is ready describes the output
columns (written once to readouts.json) and the model fingerprint; only then is work
handed out. The manifest is written at the start (status "running") and at the end.

readouts.json comes from a worker rather than the driver: computing column coordinates
needs the weight files (fsaverage ROI tables, EEG channel lists), and loading models on
the driver would cost a GPU node's worth of memory for a list of indices.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from berg_scale.config import RunConfig
from berg_scale.engine.manifest import build_manifest
from berg_scale.engine.model_factory import ModelSetFactory
from berg_scale.engine.preflight import check_storage, check_weights, list_input_shards
from berg_scale.engine.progress import ProgressBar, RunStats
from berg_scale.engine.scheduler import RetryPolicy, SchedulerReport, ShardScheduler, WorkerSlot
from berg_scale.engine.shard_pipeline import ShardSettings
from berg_scale.errors import BergScaleError, ConfigError
from berg_scale.io.output_store import (
    TMP_DIR,
    OutputStore,
    clear_output,
    done_shards,
    read_manifest,
    read_readouts,
    with_storage_retries,
    write_manifest,
    write_readouts,
)
from berg_scale.io.shard_listing import InputShard


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
            f"images: {s.images} ({s.images_ok} ok, {s.images_error} error rows), "
            f"{s.images_per_second:.1f} images/s over {s.elapsed:.1f} s",
        ]
        for name, info in sorted(self.failed.items())[:10]:
            lines.append(f"quarantined {name}: {info.get('error')}")
        if len(self.failed) > 10:
            lines.append(f"... and {len(self.failed) - 10} more quarantined shards (see _failed/)")
        return "\n".join(lines)


def run_generation(
    config: RunConfig,
    *,
    overwrite: bool = False,
    model_factory: Any | None = None,
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
    factory = model_factory or ModelSetFactory(
        berg_root=config.berg_root,
        readouts=tuple(specs),
        precision=config.resources.precision,
        batch_size=config.resources.batch_size,
        backbone_path=config.backbone,
        exact_resize=config.resources.exact_resize,
        storage=storage,
    )
    patterns = config.input.shard_patterns()

    # --- preflight: nothing below starts a worker ------------------------------------
    roles = {"input": patterns, "output": [config.output]}
    if getattr(factory, "needs_weights", True):
        roles["berg_root"] = [config.berg_root]
    check_storage(roles, storage)
    shards = list_input_shards(patterns, storage)
    if getattr(factory, "needs_weights", True):
        check_weights(config.berg_root, specs, storage, config.backbone)
    store = OutputStore(config.output, storage)
    config_fingerprint = config.input_fingerprint()
    previous = with_storage_retries(lambda: read_manifest(store), "reading run.json")
    if overwrite:
        with_storage_retries(lambda: clear_output(store), "clearing the output")
        previous = None
    elif previous is not None:
        _check_same_config(previous, config_fingerprint, config.output)
    done = with_storage_retries(lambda: done_shards(store), "listing _done/")
    todo = [shard for shard in shards if shard.name not in done]
    stats = RunStats(shards_total=len(shards), shards_skipped=len(shards) - len(todo))
    manifest_args: dict[str, Any] = {
        "config": config.redacted(),
        "config_fingerprint": config_fingerprint,
        "model_fingerprint": (previous or {}).get("fingerprints", {}).get("model"),
        "weight_hashes": (previous or {}).get("weight_hashes"),
        "input_shards": [s.name for s in shards],  # names only: run.json stays small at 10^6 shards
        "started_at": started_at,
    }
    _write_manifest(store, manifest_args, "running", stats)
    if not todo:
        log(f"nothing to do: all {len(shards)} shards of {config.output} are committed")
        stats.finished = time.monotonic()
        _write_manifest(store, manifest_args, "complete", stats, shards_done=len(done))
        return RunResult(config.output, "nothing-to-do", stats)

    # --- workers ------------------------------------------------------------------------
    from berg_scale.engine.ray_connect import ensure_ray

    settings = ShardSettings(
        output=config.output,
        storage=storage,
        image_size=config.input.image_size,
        crop=config.input.crop,
        batch_size=config.resources.batch_size,
        decode=config.resources.decode,
        decode_threads=config.resources.decode_threads,
        error_rate_threshold=config.retries.error_rate_threshold,
        device=config.resources.device,
    )
    we_started_ray = ensure_ray(ray_address, allow_auto=allow_auto_address)
    slots: list[WorkerSlot] = []
    progress: ProgressBar | None = None
    try:
        slots = start_workers(config, factory, settings, n_shards=len(todo))
        first = wait_for_first_worker(slots, config.resources.startup_timeout_s)
        _check_same_model(previous, first["fingerprint"], config.output)
        manifest_args["model_fingerprint"] = first["fingerprint"]
        manifest_args["weight_hashes"] = first["weight_hashes"]
        _write_manifest(store, manifest_args, "running", stats)
        if overwrite or with_storage_retries(lambda: read_readouts(store), "reading readouts.json") is None:
            import ray

            ready_slot = next(slot for slot in slots if slot.state == "idle")
            columns = ray.get(ready_slot.handle.column_coords.remote())
            with_storage_retries(lambda: write_readouts(store, columns), "writing readouts.json")
        log(f"generating {len(todo)} shards ({stats.shards_skipped} already done) with "
            f"{len(slots)} workers into {config.output}")
        stats.startup_seconds = stats.elapsed
        stats.started = time.monotonic()  # throughput counts from the first ready worker
        progress = ProgressBar(stats, enabled=show_progress)

        def on_done(name: str, marker: dict[str, Any]) -> None:
            stats.add_marker(marker)
            progress.update()

        def on_failed(name: str, info: dict[str, Any]) -> None:
            stats.shards_failed += 1
            progress.update()
            log(f"quarantined shard {name} after {info.get('attempts')} attempt(s): {info.get('error')}")

        policy = RetryPolicy(
            max_attempts=config.retries.max_attempts,
            backoff_s=config.retries.backoff_s,
            speculative_tail=config.retries.speculative_tail,
            speculative_min_elapsed_s=config.retries.speculative_min_elapsed_s,
            startup_timeout_s=config.resources.startup_timeout_s,
        )
        scheduler = ShardScheduler(slots, todo, store, policy, on_done=on_done, on_failed=on_failed)
        report = scheduler.run()
    finally:
        if progress is not None:
            progress.close()
        _stop_workers(slots)
        if we_started_ray:
            import ray

            ray.shutdown()
    stats.finished = time.monotonic()
    # Workers are stopped: staging files left by cancelled or killed executions are garbage.
    with_storage_retries(lambda: store.remove_tree(TMP_DIR), "cleaning _tmp/")
    status = "complete" if not report.failed else "incomplete"
    workers = [{"worker": slot.index, "shards_done": slot.shards_done, "losses": slot.losses,
                "state": slot.state, **{k: v for k, v in slot.info.items() if k != "worker"}}
               for slot in slots]
    done_now = with_storage_retries(lambda: done_shards(store), "listing _done/")
    _write_manifest(
        store, manifest_args, status, stats,
        shards_done=len(done_now & {s.name for s in shards}),
        workers=workers,
        scheduler=_scheduler_summary(report),
        failed={name: info.get("error", "") for name, info in report.failed.items()},
    )
    return RunResult(config.output, status, stats, dict(report.failed), workers, report)


# --------------------------------------------------------------------------- workers


def resolve_worker_count(config: RunConfig, n_shards: int) -> tuple[int, float]:
    """(number of workers, GPUs per worker) from the config and the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per = config.resources
    use_gpus = per.device != "cpu" and per.gpus_per_worker > 0 and gpus > 0
    if per.device == "cuda" and not use_gpus:
        raise ConfigError("resources.device is 'cuda' but the Ray cluster has no GPUs")
    gpus_per_worker = per.gpus_per_worker if use_gpus else 0.0
    if per.workers == "auto":
        count = int(gpus // gpus_per_worker) if use_gpus else int(cpus // per.cpus_per_worker)
    else:
        count = int(per.workers)
    return max(1, min(count, n_shards)), gpus_per_worker


def start_workers(config: RunConfig, factory: Any, settings: ShardSettings, n_shards: int) -> list[WorkerSlot]:
    from berg_scale.engine.worker import remote_worker_class

    count, gpus_per_worker = resolve_worker_count(config, n_shards)
    actor = remote_worker_class()
    slots = []
    for index in range(count):
        handle = actor.options(
            num_gpus=gpus_per_worker,
            num_cpus=config.resources.cpus_per_worker,
            max_restarts=config.retries.max_worker_restarts,
            max_task_retries=0,
            name=None,
        ).remote(index, factory, settings)
        slot = WorkerSlot(index=index, handle=handle, state="starting")
        slot.ready_ref = handle.ready.remote()
        slots.append(slot)
    return slots


def wait_for_first_worker(slots: list[WorkerSlot], timeout_s: float) -> dict[str, Any]:
    """Block until one worker has its models loaded; a worker that cannot start is fatal
    only when none can."""
    import ray

    deadline = time.monotonic() + timeout_s
    waiting = {slot.ready_ref: slot for slot in slots}
    errors: list[str] = []
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BergScaleError(
                f"no worker became ready within {timeout_s:.0f} s: the cluster lacks the "
                f"requested resources (resources.workers / gpus_per_worker / cpus_per_worker)"
            )
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=min(remaining, 5.0))
        for ref in ready:
            slot = waiting.pop(ref)
            slot.ready_ref = None
            try:
                info = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - constructor errors arrive wrapped
                slot.state = "dead"
                errors.append(_root_cause(exc))
                continue
            slot.state = "idle"
            slot.info = info.get("info", {})
            # The others keep loading; the scheduler takes them on when they are ready.
            for other_ref, other in waiting.items():
                other.ready_ref = other_ref
            return info
    raise BergScaleError(f"no worker could load the models: {errors[0] if errors else 'unknown error'}")


def _stop_workers(slots: list[WorkerSlot]) -> None:
    try:
        import ray
    except ImportError:
        return
    for slot in slots:
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass


def _root_cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc.__cause__
    text = str(cause or exc)
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]


# --------------------------------------------------------------------------- manifest


def _check_same_config(previous: dict[str, Any], fingerprint: str, output: str) -> None:
    old = previous.get("fingerprints", {}).get("config")
    if old and old != fingerprint:
        raise ConfigError(
            f"{output} holds responses of a different config (readouts or input settings "
            f"changed): use a new output, or --overwrite to discard the existing one"
        )


def _check_same_model(previous: dict[str, Any] | None, fingerprint: str, output: str) -> None:
    old = (previous or {}).get("fingerprints", {}).get("model")
    if old and old != fingerprint:
        raise ConfigError(
            f"{output} was written with different model weights or precision (fingerprint "
            f"{old[:12]} != {fingerprint[:12]}): use a new output, or --overwrite to discard it"
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
