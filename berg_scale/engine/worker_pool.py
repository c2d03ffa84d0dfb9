"""The driver's pool of EncoderWorker actors: how many, how they start, how they stop.

The first worker that has its models loaded describes the output (columns, fingerprint);
the others keep loading and the scheduler takes them on when they are ready. A worker
that cannot start is fatal only when none can.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from berg_scale.config import RunConfig
from berg_scale.engine.scheduler import WorkerSlot
from berg_scale.engine.shard_pipeline import ShardSettings
from berg_scale.errors import BergScaleError, ConfigError


def resolve_worker_count(
    config: RunConfig, n_shards: int, *, cluster: bool = False, log: Callable[[str], None] | None = None
) -> tuple[int, float]:
    """(number of workers, GPUs per worker) from the config and the cluster's resources.

    `cluster`: the driver joined an existing Ray cluster, whose autoscaler may add GPU
    nodes for workers that wait for a GPU. There, `device: cuda` asks for GPU workers even
    while no GPU node is up (they wait up to `startup_timeout_s`), and `workers: auto`,
    which can only count the GPUs present, is refused without them. A private local Ray
    has this machine's resources and no more, so `device: cuda` without GPUs fails at once.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per = config.resources
    say = log or (lambda message: None)
    wants_gpus = per.device != "cpu" and per.gpus_per_worker > 0
    use_gpus = wants_gpus and (gpus > 0 or (per.device == "cuda" and cluster))
    if per.device == "cuda" and not use_gpus:
        raise ConfigError(
            "resources.device is 'cuda' but this machine has no GPU that Ray sees (a local Ray has "
            "this machine's GPUs only): set device: auto or cpu, or run on a GPU machine or cluster "
            "(RAY_ADDRESS)"
        )
    gpus_per_worker = per.gpus_per_worker if use_gpus else 0.0
    if per.workers == "auto":
        if use_gpus and gpus == 0:
            raise ConfigError(
                "resources.workers is 'auto', which counts the cluster's GPUs, and the cluster has none "
                "up yet (an autoscaler adds GPU nodes only for workers that wait for one): set "
                "resources.workers to the number of GPU workers to run"
            )
        count = int(gpus // gpus_per_worker) if use_gpus else int(cpus // per.cpus_per_worker)
        if cluster and wants_gpus and not use_gpus:
            say(f"warning: the Ray cluster has no GPUs now, so workers: auto starts {max(1, min(count, n_shards))} "
                "CPU worker(s); for GPU workers on an autoscaling cluster set resources.device: cuda and "
                "resources.workers: N, and Ray adds GPU nodes for them")
    else:
        count = int(per.workers)
        if use_gpus and gpus < count * gpus_per_worker:
            say(f"{count} GPU worker(s) asked for and {gpus:g} GPU(s) up now: the others wait for GPU nodes "
                f"(an autoscaler adds them) for up to resources.startup_timeout_s ({per.startup_timeout_s:.0f} s), "
                "while the ready ones start")
    return max(1, min(count, n_shards)), gpus_per_worker


def node_cpus_per_gpu() -> float | None:
    """CPUs per GPU on the cluster's least CPU-rich GPU node (None without GPU nodes)."""
    import ray

    ratios = [
        float(node["Resources"].get("CPU", 0)) / float(node["Resources"]["GPU"])
        for node in ray.nodes()
        if node.get("Alive") and float(node.get("Resources", {}).get("GPU", 0)) > 0
    ]
    return min(ratios) if ratios else None


def resolve_decode_workers(config: RunConfig, gpus_per_worker: float) -> int:
    """Decode processes per worker (`resources.decode_workers`, `auto` resolved here)."""
    from berg_scale.engine.decode_pool import resolve_decode_workers as resolve

    per = config.resources
    return resolve(per.decode_workers, uses_gpus=gpus_per_worker > 0, cpus_per_worker=per.cpus_per_worker,
                   gpus_per_worker=gpus_per_worker,
                   node_cpus_per_gpu=node_cpus_per_gpu() if gpus_per_worker > 0 else None)


def start_workers(config: RunConfig, factory: Any, settings: ShardSettings, n_shards: int,
                  log: Callable[[str], None] | None = None) -> list[WorkerSlot]:
    from berg_scale.engine.ray_connect import joined_cluster
    from berg_scale.engine.worker import remote_worker_class

    count, gpus_per_worker = resolve_worker_count(config, n_shards, cluster=joined_cluster(), log=log)
    if settings.decode_workers == "auto":  # what auto means on a worker that finds a CUDA device
        settings = dataclasses.replace(settings, auto_decode_workers=resolve_decode_workers(config, gpus_per_worker))
    actor = remote_worker_class(config.resources.shards_in_flight)
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
                errors.append(root_cause(exc))
                continue
            slot.state = "idle"
            slot.info = info.get("info", {})
            # The others keep loading; the scheduler takes them on when they are ready.
            for other_ref, other in waiting.items():
                other.ready_ref = other_ref
            return info
    raise BergScaleError(f"no worker could load the models: {errors[0] if errors else 'unknown error'}")


def stop_workers(slots: list[WorkerSlot]) -> None:
    try:
        import ray
    except ImportError:
        return
    for slot in slots:
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass


def root_cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc.__cause__
    text = str(cause or exc)
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]
