"""Measuring a run's throughput on this machine, for `berg-scale plan --calibrate`.

A nominal images/s figure can be off by 10x between a laptop CPU and an H100, and by
2-3x between small JPEGs and large photos. Calibration runs the configured models
through the engine's own shard pipeline (read, decode, model, write; one worker, as
`generate` builds it) on the first images of the first input shard, or on synthetic
photo-sized JPEGs when the input cannot be read, and times it. One warm-up batch runs
first, so one-off costs (CUDA context, cuDNN autotuning, first allocations) are not
counted; model loading is timed separately and reported, not mixed into the rate.

On a CPU the worker uses `resources.cpus_per_worker` threads, as a Ray CPU worker does,
so the rate is per worker and scales with the number of workers a node has cores for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from berg_scale.engine.shard_result import ShardOutcome, ShardResult
from berg_scale.errors import BergScaleError

SYNTHETIC_SIZE = (640, 480)  # a typical photo (COCO's images are about this size)
MIN_IMAGES = 16


@dataclass
class Calibration:
    """What was measured, on what, and how long it took."""

    device: str  # e.g. "cuda:0" or "cpu"
    device_name: str
    images: int
    seconds: float
    source: str
    model_load_seconds: float
    warmup_images: int
    cpu_threads: int | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        threads = f", {self.cpu_threads} CPU threads" if self.cpu_threads else ""
        return (
            f"measured on {self.device_name}{threads}: {self.images} images ({self.source}) in "
            f"{self.seconds:.1f} s after a {self.warmup_images}-image warm-up; model load "
            f"{self.model_load_seconds:.1f} s not counted"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "source": self.source,
            "warmup_images": self.warmup_images,
            "model_load_seconds": round(self.model_load_seconds, 3),
            "cpu_threads": self.cpu_threads,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def _real_samples(config: Any, count: int) -> tuple[list[tuple[str, str, bytes]], str] | None:
    """Up to `count` (key, ext, bytes) images from the start of the first input shard."""
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.io.shard_reader import ShardReadError, iter_shard_samples

    storage = config.storage_options()
    try:
        shards = list_shards(config.input.shard_patterns(), storage)
        samples: list[Any] = []
        for sample in iter_shard_samples(shards[0].url, storage):
            if sample.image is not None and sample.image_ext:
                samples.append((f"{len(samples):06d}", sample.image_ext, sample.image))
            if len(samples) >= count:
                break
    except (BergScaleError, ShardReadError, OSError):
        return None
    if not samples:
        return None
    return samples, shards[0].name


def _synthetic_samples(count: int) -> list[tuple[str, str, bytes]]:
    import numpy as np

    from berg_scale.synthetic.shards import encode, synthetic_image

    rng = np.random.default_rng(20200220)
    width, height = SYNTHETIC_SIZE
    return [(f"{i:06d}", "jpg", encode(synthetic_image(rng, width, height), "jpg")) for i in range(count)]


def _write_shard(path: str, samples: list[tuple[str, str, bytes]]) -> Any:
    from berg_scale.io.shard_listing import InputShard
    from berg_scale.io.tar_writer import write_tar

    write_tar(path, [(f"{key}.{ext}", data) for key, ext, data in samples])
    name = os.path.splitext(os.path.basename(path))[0]
    return InputShard(name=name, url=path, relative=os.path.basename(path), size=os.path.getsize(path))


def calibrate(
    config: Any,
    *,
    images: int | None = None,
    device: str | None = None,
    model_factory: Any | None = None,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Time the configured models on this machine; raises BergScaleError if they cannot run."""
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker

    log = log or (lambda message: None)
    resources = config.resources
    count = max(int(images or 2 * resources.batch_size), MIN_IMAGES)
    warmup = min(resources.batch_size, count)
    real = _real_samples(config, count + warmup)
    if real is not None:
        samples, shard_name = real
        source = f"the first images of input shard {shard_name}"
        if len(samples) < count + warmup:
            source += f", its {len(samples)} images repeated"
            samples = [samples[i % len(samples)] for i in range(count + warmup)]
    else:
        samples = _synthetic_samples(count + warmup)
        width, height = SYNTHETIC_SIZE
        source = f"synthetic {width}x{height} JPEGs; the input shards could not be read"

    factory = model_factory or _factory(config)
    workdir = tempfile.mkdtemp(prefix="berg-scale-calibrate-")
    threads_before = None
    try:
        warm_shard = _write_shard(os.path.join(workdir, "in", "warmup.tar"), samples[:warmup])
        measured_shard = _write_shard(os.path.join(workdir, "in", "measured.tar"), samples[warmup:])
        settings = ShardSettings(
            output=os.path.join(workdir, "out"),
            image_size=config.input.image_size,
            crop=config.input.crop,
            batch_size=resources.batch_size,
            decode=resources.decode,
            decode_threads=resources.decode_threads,
            error_rate_threshold=1.0,
            device=device or resources.device,
            run_id="calibrate",
        )
        cpu_threads = None
        if _runs_on_cpu(settings.device):
            import torch

            threads_before = torch.get_num_threads()
            cpu_threads = max(1, int(resources.cpus_per_worker))
            torch.set_num_threads(cpu_threads)
        log("calibrating: loading the models")
        started = time.perf_counter()
        try:
            worker = EncoderWorker(0, factory, settings)
        except FileNotFoundError as exc:
            raise BergScaleError(
                f"--calibrate needs the weight files the readouts read ({exc}); fetch them first "
                "(berg-scale fetch-weights --config CONFIG --to DIR) or plan without --calibrate"
            ) from None
        model_load = time.perf_counter() - started
        device_name = worker.info.get("gpu_name") or _cpu_name()
        log(f"calibrating: {warmup} warm-up and {count} measured images on {worker.device}")
        _checked(worker.process(warm_shard, 1))
        started = time.perf_counter()
        marker = _checked(worker.process(measured_shard, 1))
        seconds = time.perf_counter() - started
        return Calibration(
            device=str(worker.device),
            device_name=device_name,
            images=int(marker["rows"]),
            seconds=seconds,
            source=source,
            model_load_seconds=model_load,
            warmup_images=warmup,
            cpu_threads=cpu_threads,
            stage_seconds={k: float(v) for k, v in marker.get("seconds", {}).items()},
        )
    finally:
        if threads_before is not None:
            import torch

            torch.set_num_threads(threads_before)
        shutil.rmtree(workdir, ignore_errors=True)


def _factory(config: Any) -> Any:
    from berg_scale.engine.model_factory import ModelSetFactory

    return ModelSetFactory.from_config(config)


def _checked(result: ShardResult) -> dict[str, Any]:
    if result.outcome is not ShardOutcome.DONE:
        reason = result.error if result.error is not None else result.status
        raise BergScaleError(f"the calibration run failed: {reason}")
    return result.marker or {}


def _runs_on_cpu(requested: str) -> bool:
    if requested == "cpu":
        return True
    import torch

    return not torch.cuda.is_available()


def _cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else the architecture)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"CPU ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return f"CPU ({platform.machine() or 'unknown'})"
