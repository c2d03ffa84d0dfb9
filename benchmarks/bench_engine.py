"""Engine benchmarks on this machine (CPU; GPUs simulated by Ray where a GPU count matters).

    python benchmarks/bench_engine.py [e2e|scaling|memory|all] [--quick]

(a) e2e: images/s of a whole generation run (tar -> decode -> ModelSet -> Parquet) against
    the model-only rate of the same ModelSet on already-decoded batches (target >= 0.85).
(b) scaling: the scheduler with a fixed-cost stand-in model (sleep per image) on 1, 2, 4,
    8, 16 simulated GPUs; throughput relative to linear (target >= 0.9).
(c) memory: resident memory of one worker over 100 shards (target: flat).

Results are appended to benchmarks/RESULTS-engine.md as a markdown section. Never part
of the test run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from berg_scale.offline_env import apply_offline_environment  # noqa: E402

apply_offline_environment()

WORK = HERE / "_work" / "engine"
RESULTS = HERE / "RESULTS-engine.md"


def _machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; load average at the end {load} "
            f"(the machine is shared, so absolute rates are noisy)")


def _ray(num_cpus: int, num_gpus: int):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20)
    return ray


def _config(shards: str, output: str, berg_root: str, backbone: str | None, readouts: list, **sections):
    from berg_scale.config import load_config

    raw = {
        "input": {"shards": shards, "image_size": 256},
        "berg_root": berg_root,
        "backbone": backbone,
        "readouts": readouts,
        "output": output,
        "resources": {"workers": 1, "cpus_per_worker": 2, "batch_size": 16, "decode_threads": 2},
        "retries": {"speculative_tail": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(raw)


def _berg_root() -> tuple[str, str]:
    from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root

    root = WORK / "berg_root"
    stamp = root / ".complete"
    if not stamp.exists():
        make_synthetic_root(root, models=["fmri-nsd_fsaverage-vit_b_32", "fmri-nsd-fwrf"], subjects=(1,),
                            rois=("V1",), fsaverage_rois=("V1v", "hV4"), fwrf_voxels=64, seed=0)
        stamp.touch()
    return str(root), str(backbone_file(root))


READOUTS = [
    {"model": "fmri-nsd_fsaverage-vit_b_32", "subjects": [1], "rois": ["hV4"], "outputs": ["responses", "mean"]},
    {"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"], "outputs": ["responses", "mean"]},
]


# --------------------------------------------------------------------------- (a)


def _model_only_rate(root: str, specs: list, backbone: str, batch_size: int, shard: str, repeats: int) -> float:
    """Images/s of ModelSet.forward on decoded batches already in memory (runs as a Ray task
    with the worker's CPU allotment, so thread counts match the engine's worker)."""
    import torch

    from berg_scale.io.decode import decode_batch_cpu
    from berg_scale.io.shard_reader import read_shard
    from berg_scale.models import ModelSet

    images = decode_batch_cpu([s.image for s in read_shard(shard)], 256, "center").images
    model = ModelSet(root, specs, device="cpu", backbone_path=backbone, batch_size=batch_size)
    model.forward(images[:batch_size])  # warm-up at the measured batch shape
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model.forward(images[start : start + batch_size])
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates) if rates else 0.0 * torch.get_num_threads()


def bench_e2e(quick: bool) -> list[str]:
    from berg_scale.engine.run import run_generation
    from berg_scale.synthetic.shards import write_synthetic_shards

    n_shards, per_shard = (4, 16) if quick else (8, 32)
    rounds = 2 if quick else 3
    root, backbone = _berg_root()
    shards = WORK / f"e2e_shards_{n_shards}x{per_shard}"
    if not shards.exists():
        write_synthetic_shards(str(shards), n_shards, per_shard, sizes=((400, 300), (300, 400), (256, 256)),
                               formats=("jpg",), seed=1)
    output = WORK / "e2e_out"
    config = _config(str(shards), str(output), root, backbone, READOUTS)
    threads = int(config.resources.cpus_per_worker)
    ray = _ray(num_cpus=threads, num_gpus=0)
    model_only = ray.remote(num_cpus=threads)(_model_only_rate)
    model_rates, e2e_rates, stats = [], [], None
    for _ in range(rounds):  # interleaved, so that load from other processes hits both alike
        model_rates.append(ray.get(model_only.remote(root, config.readout_specs(), backbone,
                                                     config.resources.batch_size, str(shards / "shard-000000.tar"), 2)))
        result = run_generation(config, overwrite=True, show_progress=False, log=lambda m: None)
        stats = result.stats
        e2e_rates.append(stats.images_per_second)
    ray.shutdown()
    model_rate, e2e_rate = statistics.median(model_rates), statistics.median(e2e_rates)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in stats.stage_seconds.items())
    return [
        "### (a) End-to-end vs model-only throughput",
        "",
        f"ModelSet: fsaverage hV4 (k=3, ViT-B/32 backbone) + fwRF V1 (64 voxels), fp32, CPU, "
        f"{threads} threads, batch {config.resources.batch_size}; {n_shards} shards x {per_shard} JPEGs "
        f"(300-400 px, resized to 256). Medians of {rounds} interleaved rounds.",
        "",
        "| measure | images/s | rounds |",
        "| --- | --- | --- |",
        f"| model only (decoded batches in memory, same CPU allotment) | {model_rate:.2f} | "
        f"{', '.join(f'{r:.2f}' for r in model_rates)} |",
        f"| end to end (tar -> decode -> model -> Parquet, 1 worker) | {e2e_rate:.2f} | "
        f"{', '.join(f'{r:.2f}' for r in e2e_rates)} |",
        f"| **ratio** (target >= 0.85) | **{e2e_rate / model_rate:.2f}** | |",
        "",
        f"Share of the worker's stage time spent in the model (last round): "
        f"{stats.stage_seconds['model'] / max(sum(stats.stage_seconds.values()), 1e-9):.3f} - the robust "
        f"figure on a shared machine, where separate rate measurements drift with other load.",
        "",
        f"Worker start-up (Ray actor, model load, {stats.startup_seconds:.1f} s in the last round) is "
        f"excluded; stage totals of the last round: {stages}; {stats.images} images per round.",
        "",
    ]


# --------------------------------------------------------------------------- (b)


def bench_scaling(quick: bool) -> list[str]:
    from berg_scale.engine.run import start_workers
    from berg_scale.engine.scheduler import RetryPolicy, ShardScheduler
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.io.output_store import OutputStore
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    seconds_per_image, per_shard, shards_per_worker = 0.25, 8, 4 if quick else 6
    counts = (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16)
    shards_dir = WORK / f"scaling_shards_{max(counts) * shards_per_worker}"
    if not shards_dir.exists():
        write_synthetic_shards(str(shards_dir), max(counts) * shards_per_worker, per_shard,
                               sizes=((32, 32),), formats=("png",), seed=2)
    all_shards = list_shards(str(shards_dir))
    factory = FixedCostModelFactory(seconds_per_image=seconds_per_image)
    rows = []
    base_rate = None
    for n in counts:
        ray = _ray(num_cpus=max(counts), num_gpus=n)
        output = WORK / f"scaling_out_{n}"
        shutil.rmtree(output, ignore_errors=True)
        config = _config(str(shards_dir), str(output), "/unused", None, READOUTS,
                         resources={"workers": n, "gpus_per_worker": 1, "cpus_per_worker": 1,
                                    "batch_size": per_shard, "decode_threads": 1})
        settings = ShardSettings(output=str(output), image_size=32, batch_size=per_shard, decode_threads=1)
        slots = start_workers(config, factory, settings, n_shards=n * shards_per_worker)
        for slot in slots:  # time the scheduler only: every worker is up first
            ray.get(slot.ready_ref)
            slot.ready_ref, slot.state = None, "idle"
        shards = all_shards[: n * shards_per_worker]
        scheduler = ShardScheduler(slots, shards, OutputStore(str(output)), RetryPolicy(speculative_tail=False))
        started = time.perf_counter()
        report = scheduler.run()
        elapsed = time.perf_counter() - started
        assert len(report.done) == len(shards), report.failed
        rate = len(shards) * per_shard / elapsed
        base_rate = base_rate or rate
        busiest = max(_busy_seconds(report).values())
        rows.append(f"| {n} | {len(shards)} | {elapsed:.2f} | {rate:.1f} | {rate / (base_rate * n):.2f} | "
                    f"{busiest / elapsed:.2f} | {_mean_stage(report, 'write'):.2f} |")
        ray.shutdown()
    return [
        "### (b) Scheduler scaling on simulated GPUs",
        "",
        f"Stand-in model with a fixed cost of {seconds_per_image} s per image (sleep), {per_shard} images "
        f"per shard, {shards_per_worker} shards per worker, one actor per simulated GPU, timed after all "
        f"actors are up. Efficiency = rate / (N x rate with 1 GPU); target >= 0.9. 'busy / wall' is the "
        f"busiest worker's summed shard time over the wall time (1.0 = the scheduler never left it idle); "
        f"'write s' is the mean time per shard spent writing Parquet and markers, which grows with CPU "
        f"contention when many workers share few cores.",
        "",
        "| GPUs | shards | seconds | images/s | efficiency | busiest worker busy / wall | write s per shard |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def _busy_seconds(report) -> dict[int, float]:
    busy: dict[int, float] = {}
    for marker in report.done.values():
        worker = marker["worker"]["worker"]
        busy[worker] = busy.get(worker, 0.0) + marker["seconds"]["total"]
    return busy


def _mean_stage(report, stage: str) -> float:
    return statistics.mean(marker["seconds"][stage] for marker in report.done.values())


# --------------------------------------------------------------------------- (c)


def bench_memory(quick: bool) -> list[str]:
    import ray as ray_module

    from berg_scale.engine.model_factory import ModelSetFactory
    from berg_scale.engine.run import start_workers
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    n_shards, per_shard = (30, 4) if quick else (100, 4)
    root, backbone = _berg_root()
    shards_dir = WORK / f"memory_shards_{n_shards}"
    if not shards_dir.exists():
        write_synthetic_shards(str(shards_dir), n_shards, per_shard, sizes=((400, 300), (256, 256)),
                               formats=("jpg", "png"), seed=3)
    output = WORK / "memory_out"
    shutil.rmtree(output, ignore_errors=True)
    readouts = [READOUTS[1]]
    config = _config(str(shards_dir), str(output), root, None, readouts,
                     resources={"workers": 1, "cpus_per_worker": 2, "batch_size": per_shard})
    ray = _ray(num_cpus=2, num_gpus=0)
    factory = ModelSetFactory(root, tuple(config.readout_specs()), batch_size=per_shard)
    settings = ShardSettings(output=str(output), image_size=256, batch_size=per_shard, decode_threads=2)
    (slot,) = start_workers(config, factory, settings, n_shards=1)
    ray.get(slot.ready_ref)
    samples = []
    for index, shard in enumerate(list_shards(str(shards_dir))):
        result = ray.get(slot.handle.process.remote(shard, 1))
        assert result.status == "done", result
        if index % max(1, n_shards // 10) == 0 or index == n_shards - 1:
            samples.append((index + 1, ray.get(slot.handle.memory.remote())["rss_mb"]))
    ray_module.shutdown()
    first, last = samples[1][1], samples[-1][1]
    table = [f"| {n} | {rss:.0f} |" for n, rss in samples]
    return [
        "### (c) Worker memory over many shards",
        "",
        f"One worker (fwRF V1, CPU), {n_shards} shards x {per_shard} images (JPEG/PNG, up to 400 px), "
        f"resident memory (RSS) after shard n:",
        "",
        "| shards done | RSS (MB) |",
        "| --- | --- |",
        *table,
        "",
        f"Growth from shard {samples[1][0]} to shard {samples[-1][0]}: {last - first:+.0f} MB "
        f"({(last - first) / first:+.1%}).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=["e2e", "scaling", "memory", "all"])
    parser.add_argument("--quick", action="store_true", help="fewer images and shards")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, bench in (("e2e", bench_e2e), ("scaling", bench_scaling), ("memory", bench_memory)):
        if args.which in (name, "all"):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            lines = bench(args.quick)
            print("\n".join(lines))
            sections.extend(lines)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"## Engine benchmarks ({args.which}{', quick' if args.quick else ''}), {stamp}", "",
              f"Machine: {_machine()}.", ""]
    existing = RESULTS.read_text() if RESULTS.exists() else "# Engine benchmark results\n\n"
    RESULTS.write_text(existing.rstrip() + "\n\n" + "\n".join(header + sections) + "\n")
    print(f"appended to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
