"""Does the decode pool feed the model at the model's rate? Measured on this machine (CPU).

    python benchmarks/bench_feed.py [--quick] [--record] [--model-rate IMG_PER_S]
    python benchmarks/bench_feed.py memory [--record]        # worker RSS over 100 shards
    python benchmarks/bench_feed.py reading [--record]       # worker CPU: tars read here or by the pool
    python benchmarks/bench_feed.py shards [--shards N] [--per-shard M] [--quick] [--record]

In one run, on the same synthetic JPEG shards (500 x 375, decoded and cropped to 256):

(a) decode capacity: the decode pool alone (chunks in, uint8 batches out, nothing else);
(b) model rate: a stand-in model of fixed rate (engine/stand_in_model.py's features from
    a subsample of the pixels, then asleep for the rest of the batch's time, so it leaves
    the CPUs to decoding as a GPU would) on batches already in memory;
(c) the whole pipeline: the engine worker (`EncoderWorker.process`, what one Ray actor
    runs: tar read-ahead, decode pool, model, Parquet, commit markers), here in this
    process, with its pool of decode processes, timed after a warm-up shard; it also
    reports when the model sat idle: before each shard's first batch, between batches,
    and after its last.

The last line printed is `feed efficiency: X.XX` = (c) / min(a, b): 1.0 means the worker
runs as fast as its slowest stage allows. The model's rate is fixed for the whole run; by
default it is 0.6 of the decode capacity first measured in (a) at 2 processes (a pool
sized to outrun the model, as on a GPU node; the margin absorbs the load of other users
of a shared machine), or given with --model-rate. The stand-in runs are repeated at 1, 2
and 4 decode processes; at 1 process the pool is slower than the model, so that row
measures the decode-bound case.

`memory` runs 100 shards through one worker with a decode pool and reports the worker's
resident memory (RSS) every 10 shards: it must stay flat.

`reading` measures where a worker's tars are read: by the worker itself, or by one of
its decode processes, which streams each chunk back as the samples without their bytes
plus one shared blob of the images' bytes (`engine/chunk_reading.py`; the engine's way
whenever a worker has a decode pool). For chunks of 32, 100 and 256 images it reports
images/s and the worker's CPU per image: of its whole process, and of the one thread
that consumes the chunks (interpreter time that a GPU worker's model loop would share).

`shards` runs N small shards (--shards, default 8, of --per-shard images, default 96) through one Ray worker actor and the
driver's scheduler, as a generation run does, with `resources.shards_in_flight` 1 and 2
(alternating, repeated): with 1, each shard's start (tar open, first decode) and end
(Parquet close, commit, report, next dispatch) leave the model waiting; with 2 the next
shard is read and decoded while the current one runs the model. The model's rate is 0.6
of the worker's own decode rate measured first (or --model-rate), so the model is the
stage that should stay busy; "model busy" is the model's summed seconds over the wall
time (1.0: it never waited).

--record appends the report to benchmarks/RESULTS-feed.md. Never part of the test run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from berg_scale.offline_env import apply_offline_environment  # noqa: E402

apply_offline_environment()

WORK = HERE / "_work" / "feed"
RESULTS = HERE / "RESULTS-feed.md"
IMAGE_SIZE = 256
BATCH = 32
WORKER_COUNTS = (1, 2, 4)


def _ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs: one for the engine worker plus up to 4 decode processes; they share
    # the machine's real cores (that sharing is part of what is measured).
    ray.init(num_cpus=1 + max(WORKER_COUNTS), num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    return ray


def _shards(quick: bool) -> tuple[Path, Path]:
    """The timed shards (as large as real ones: 100 MB-1 GB tars hold thousands of images,
    so the pool fills once per shard) and a small warm-up shard."""
    from berg_scale.synthetic.shards import write_synthetic_shards

    n_shards, per_shard = (1, 768) if quick else (2, 2048)
    folders = []
    for name, count, size, seed in (("jpeg", n_shards, per_shard, 7), ("warm", 1, 2 * BATCH, 8)):
        folder = WORK / f"{name}_{count}x{size}"
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            write_synthetic_shards(str(folder), count, size, sizes=((500, 375), (375, 500)),
                                   formats=("jpg",), seed=seed)
            (folder / ".complete").touch()
        folders.append(folder)
    return folders[0], folders[1]


def _payload_chunks(folder: Path) -> list[list[bytes]]:
    from berg_scale.io.shard_listing import list_shards

    return _payload_chunks_of(list_shards(str(folder)))


# --------------------------------------------------------------------------- stages


class FixedRateModel:
    """The stand-in model with a fixed rate: each batch takes `n / rate` seconds in all.

    Its features (channel means and spreads, as `FixedCostModel` computes them) come from
    every 8th pixel in each direction, so that its own CPU cost stays small, as a GPU
    model's host-side cost is; the rest of the batch's time is spent asleep.
    """

    def __init__(self, rate: float) -> None:
        from berg_scale.engine.stand_in_model import FixedCostModel

        self.rate = rate
        self.calls: list[tuple[float, float]] = []  # (start, end) of each forward, for idle times
        self.inner = FixedCostModel()
        self.device = "cpu"
        self.columns = self.inner.columns
        self.weight_hashes = self.inner.weight_hashes
        self.fingerprint = self.inner.fingerprint

    def forward(self, images) -> dict:
        began = time.perf_counter()
        out = self.inner.forward(images[:, :, ::8, ::8])
        left = len(images) / self.rate - (time.perf_counter() - began)
        if left > 0:
            time.sleep(left)
        self.calls.append((began, time.perf_counter()))
        return out


@dataclass(frozen=True)
class FixedRateFactory:
    rate: float
    needs_weights: bool = False

    def build(self, device) -> FixedRateModel:
        return FixedRateModel(self.rate)


def decode_capacity(pool, chunks: list[list[bytes]]) -> float:
    """(a) Images/s of the pool alone, fed from memory as fast as it takes chunks."""
    started = time.perf_counter()
    images = 0
    for _, parts in pool.decoded((i, chunk) for i, chunk in enumerate(chunks)):
        images += sum(len(part.images) for part in parts)
    return images / (time.perf_counter() - started)


def model_rate(rate: float, n_images: int) -> float:
    """(b) Images/s of the stand-in model on decoded batches already in memory."""
    import torch

    model = FixedRateModel(rate)
    batch = torch.randint(0, 256, (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    model.forward(batch)
    started = time.perf_counter()
    done = 0
    while done < n_images:
        model.forward(batch)
        done += BATCH
    return done / (time.perf_counter() - started)


def pipeline_rate(worker, shards) -> dict:
    """(c) Images/s of the engine worker's `process` over every shard (read-ahead, decode
    pool, model, Parquet row groups, commit markers)."""
    shutil.rmtree(worker.settings.output, ignore_errors=True)
    idle = {"first": 0.0, "between": 0.0, "last": 0.0}  # model idle: before its first batch, ...
    markers = []
    started = time.perf_counter()
    for shard in shards:
        calls = worker.model.calls
        calls.clear()
        shard_started = time.perf_counter()
        result = worker.process(shard, 1)
        shard_ended = time.perf_counter()
        assert result.status == "done", result
        markers.append(result.marker)
        idle["first"] += calls[0][0] - shard_started
        idle["between"] += sum(calls[i + 1][0] - calls[i][1] for i in range(len(calls) - 1))
        idle["last"] += shard_ended - calls[-1][1]
    elapsed = time.perf_counter() - started
    images = sum(marker["rows"] for marker in markers)
    stages = {stage: sum(m["seconds"][stage] for m in markers) for stage in ("read", "decode", "model", "write")}
    return {"rate": images / elapsed, "images": images, "seconds": elapsed, "stages": stages, "idle": idle}


def start_worker(rate: float, workers: int, tag: str):
    """An `EncoderWorker` in this process (what one Ray actor runs) with its decode pool."""
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker

    settings = ShardSettings(output=str(WORK / f"out_{tag}"), image_size=IMAGE_SIZE, batch_size=BATCH,
                             decode_workers=workers, device="cpu")
    return EncoderWorker(0, FixedRateFactory(rate), settings)


# --------------------------------------------------------------------------- report


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
            f"users; load average {_load()} at the end)")


def bench_feed(quick: bool, model_rate_arg: float | None) -> tuple[list[str], float]:
    import ray
    import torch

    torch.set_num_threads(1)  # as in a worker with cpus_per_worker=1
    folder, warm_folder = _shards(quick)
    chunks = _payload_chunks(folder)
    from berg_scale.io.shard_listing import list_shards

    shards = list_shards(str(folder))
    (warm_shard,) = list_shards(str(warm_folder))
    n_images = sum(len(chunk) for chunk in chunks)
    main_workers = max(1, min(os.cpu_count() or 1, max(WORKER_COUNTS)))
    counts = [main_workers] + [n for n in WORKER_COUNTS if n != main_workers]
    _ray()
    capacity, runs, rate, model = {}, {}, None, None
    try:
        for n in counts:
            print(f"{n} decode processes ...", file=sys.stderr, flush=True)
            worker = start_worker(model_rate_arg or 1e9, n, str(n))
            try:
                list(worker.pool.decoded((i, chunk) for i, chunk in enumerate(chunks[: 2 * n])))  # warm-up
                capacities, results = [], []
                for repeat in range(2 if n == main_workers else 1):  # (a), (c) back to back
                    capacities.append(decode_capacity(worker.pool, chunks))
                    if rate is None:  # fixed for the rest of the run
                        rate = model_rate_arg or round(0.6 * capacities[0])
                        model = model_rate(rate, n_images // 4 if quick else n_images)
                    worker.model = FixedRateModel(rate)
                    worker.process(warm_shard, 1)  # warm-up shard
                    results.append(pipeline_rate(worker, shards))
                capacity[n] = statistics.median(capacities)
                runs[n] = min(results, key=lambda run: abs(run["rate"] - statistics.median(r["rate"] for r in results)))
                runs[n]["rate"] = statistics.median(r["rate"] for r in results)
            finally:
                worker.pool.close()
    finally:
        ray.shutdown()
    rows = []
    for n in WORKER_COUNTS:
        run = runs[n]
        bound = min(capacity[n], model)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stages"].items())
        idle = " / ".join(f"{run['idle'][k]:.2f}" for k in ("first", "between", "last"))
        rows.append(f"| {n} | {capacity[n]:.0f} | {model:.0f} | {run['rate']:.0f} | {run['rate'] / bound:.2f} | "
                    f"{stages} | {idle} of {run['seconds']:.2f} |")
    efficiency = runs[main_workers]["rate"] / min(capacity[main_workers], model)
    how = "--model-rate" if model_rate_arg else f"0.6 of the decode capacity first measured at {main_workers} processes"
    lines = [
        f"### Feed: decode pool vs model ({'quick' if quick else 'full'})",
        "",
        f"{n_images} synthetic JPEGs (500 x 375 and 375 x 500, decoded, centre-cropped and resized to "
        f"{IMAGE_SIZE}) in {len(shards)} shards, chunks of {BATCH}; stand-in model of fixed rate {rate} img/s "
        f"({how}). (a) the decode pool alone, (b) the model alone, (c) one engine worker "
        f"(`EncoderWorker.process`: tar read-ahead, decode pool, model, Parquet, commit markers) with both; "
        f"for each pool size (a) and (c) run back to back with the same pool ({main_workers} processes: twice, "
        f"means of the two). Efficiency = (c) / min(a, b). "
        f"Stage seconds are the worker's, summed over shards (decode: time the model loop waited for "
        f"decoded chunks). Model idle: the seconds of (c) the model did not run, before its first "
        f"batch of each shard (the first chunk read and decoded) / between batches / after its last "
        f"(Parquet close, commit), of the wall seconds of (c).",
        "",
        "| decode processes | (a) decode img/s | (b) model img/s | (c) pipeline img/s | efficiency | worker stage seconds "
        "| model idle s: first / between / last |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Machine: {_machine()}.",
        "",
    ]
    return lines, efficiency


def bench_memory(n_shards: int = 100, per_shard: int = 24, pool_reads: bool = True) -> list[str]:
    """Worker RSS every 10 shards over `n_shards` shards, with a 2-process decode pool and
    two shards in flight (the default `shards_in_flight`), handed out as the scheduler does."""
    from collections import deque

    import ray

    from berg_scale.config import load_config
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker_pool import start_workers, stop_workers
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    folder = WORK / f"memory_{n_shards}x{per_shard}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_synthetic_shards(str(folder), n_shards, per_shard, sizes=((400, 300), (300, 400), (256, 256)),
                               formats=("jpg", "png"), defects={"truncated_jpeg": 1}, seed=3)
        (folder / ".complete").touch()
    output = WORK / "memory_out"
    shutil.rmtree(output, ignore_errors=True)
    _ray()
    config = load_config({
        "input": {"shards": str(folder), "image_size": IMAGE_SIZE}, "berg_root": "/unused",
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}], "output": str(output),
        "resources": {"workers": 1, "gpus_per_worker": 0, "decode_workers": 2},
    })
    settings = ShardSettings(output=str(output), image_size=IMAGE_SIZE, batch_size=8, decode_workers=2,
                             device="cpu", error_rate_threshold=1.0, pool_reads=pool_reads)
    (slot,) = start_workers(config, FixedCostModelFactory(), settings, n_shards=1)
    samples = []
    in_flight = config.resources.shards_in_flight
    try:
        ray.get(slot.ready_ref)
        pending: deque = deque()
        done = 0

        def finish_oldest() -> None:
            nonlocal done
            result = ray.get(pending.popleft())
            assert result.status == "done", result
            done += 1
            if done == 1 or done % 10 == 0:
                memory = ray.get(slot.handle.memory.remote())
                samples.append((done, memory["rss_mb"], max(memory["decode_rss_mb"])))

        for shard in list_shards(str(folder)):
            pending.append(slot.handle.process.remote(shard, 1))
            if len(pending) >= in_flight:
                finish_oldest()
        while pending:
            finish_oldest()
    finally:
        stop_workers([slot])
        ray.shutdown()
    first, last = samples[1][1], samples[-1][1]
    pool_first, pool_last = samples[1][2], samples[-1][2]
    return [
        f"### Worker memory over {n_shards} shards with a decode pool",
        "",
        f"One worker (stand-in model, CPU) with 2 decode processes and {in_flight} shards in flight, "
        f"{n_shards} shards x {per_shard} images "
        f"(JPEG/PNG up to 400 px, one truncated JPEG per shard), batches of 8; the worker's resident memory "
        f"(RSS) after shard n:",
        "",
        "| shards done | " + " | ".join(str(n) for n, _, _ in samples) + " |",
        "| --- |" + " --- |" * len(samples),
        "| worker RSS (MB) | " + " | ".join(f"{rss:.0f}" for _, rss, _ in samples) + " |",
        "| largest decode process RSS (MB) | " + " | ".join(f"{rss:.0f}" for _, _, rss in samples) + " |",
        "",
        f"Growth from shard {samples[1][0]} to shard {samples[-1][0]}: worker {last - first:+.1f} MB "
        f"({(last - first) / first:+.1%}), largest decode process {pool_last - pool_first:+.1f} MB "
        f"({'the decode processes also read the tars' if pool_reads else 'the worker reads the tars'}). "
        f"Machine: {_machine()}.",
        "",
    ]


def bench_shards(n_shards: int, quick: bool, model_rate_arg: float | None, per_shard: int = 3 * BATCH) -> list[str]:
    """Images/s and model busy time over many small shards, shards_in_flight 1 vs 2."""
    import ray

    from berg_scale.config import load_config
    from berg_scale.engine.scheduler import RetryPolicy, ShardScheduler
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker_pool import start_workers, stop_workers
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.io.output_store import OutputStore
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    repeats, threads = (2 if quick else 3), 2
    folder = WORK / f"small_{n_shards}x{per_shard}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_synthetic_shards(str(folder), n_shards, per_shard, sizes=((500, 375), (375, 500)),
                               formats=("jpg",), seed=11)
        (folder / ".complete").touch()
    shards = list_shards(str(folder))
    if model_rate_arg:
        rate = model_rate_arg
    else:  # the worker's decode threads alone, on one shard's chunks from memory
        from concurrent.futures import ThreadPoolExecutor

        chunks = _payload_chunks_of(shards[:1])
        options = DecodeOptions(size=IMAGE_SIZE, crop="center")
        with ThreadPoolExecutor(threads) as pool:
            decode_batch_cpu(chunks[0], options, executor=pool)  # warm-up
            began = time.perf_counter()
            for chunk in chunks:
                decode_batch_cpu(chunk, options, executor=pool)
            rate = round(0.6 * sum(map(len, chunks)) / (time.perf_counter() - began))
    _ray()
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for repeat in range(repeats):
            for in_flight in (1, 2):
                output = WORK / f"small_out_{in_flight}"
                shutil.rmtree(output, ignore_errors=True)
                config = load_config({
                    "input": {"shards": str(folder), "image_size": IMAGE_SIZE}, "berg_root": "/unused",
                    "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
                    "output": str(output),
                    "resources": {"workers": 1, "gpus_per_worker": 0, "decode_workers": 0,
                                  "decode_threads": threads, "shards_in_flight": in_flight},
                })
                settings = ShardSettings(output=str(output), image_size=IMAGE_SIZE, batch_size=BATCH,
                                         decode_workers=0, decode_threads=threads, device="cpu")
                slots = start_workers(config, FixedRateFactory(rate), settings, n_shards=len(shards))
                try:
                    for slot in slots:  # time the shards only: the actor is up first
                        ray.get(slot.ready_ref)
                        slot.ready_ref, slot.state = None, "idle"
                    policy = RetryPolicy(speculative_tail=False, shards_in_flight=in_flight)
                    scheduler = ShardScheduler(slots, shards, OutputStore(str(output)), policy)
                    began = time.perf_counter()
                    report = scheduler.run()
                    wall = time.perf_counter() - began
                finally:
                    stop_workers(slots)
                assert len(report.done) == len(shards), report.failed
                model_s = sum(m["seconds"]["model"] for m in report.done.values())
                images = sum(m["rows"] for m in report.done.values())
                results[in_flight].append({"rate": images / wall, "wall": wall, "busy": model_s / wall})
                print(f"shards_in_flight {in_flight}, round {repeat + 1}: {images / wall:.1f} img/s, "
                      f"model busy {model_s / wall:.2f}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    rows = []
    for in_flight, runs in results.items():
        rates = [run["rate"] for run in runs]
        rows.append(f"| {in_flight} | {statistics.median(rates):.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                    f"{statistics.median(run['wall'] for run in runs):.2f} | "
                    f"{statistics.median(run['busy'] for run in runs):.2f} |")
    gain = statistics.median(r["rate"] for r in results[2]) / statistics.median(r["rate"] for r in results[1])
    return [
        f"### Shard boundaries: shards_in_flight 1 vs 2 ({'quick' if quick else 'full'})",
        "",
        (f"{len(shards)} shards x {per_shard} synthetic JPEGs (500 x 375 and 375 x 500, to {IMAGE_SIZE} px), "
        f"chunks of {BATCH}; one Ray worker actor decoding in {threads} threads, driven by the scheduler "
        f"as in a run (timed after the actor is up); stand-in model of fixed rate {rate} img/s "
        f"({'--model-rate' if model_rate_arg else '0.6 of the decode threads measured alone'}), asleep "
        f"for most of each batch as a GPU leaves the CPUs free. {repeats} rounds, alternating; medians. "
        f"Model busy = the model's seconds summed over shards / wall time."),
        "",
        "| shards_in_flight | images/s | range | wall s | model busy |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Throughput with 2 in flight / with 1: {gain:.2f}. Machine: {_machine()}.",
        "",
    ]


def bench_reading(quick: bool) -> list[str]:
    """Tars read by the worker vs by one decode process: images/s and the worker's CPU."""
    import ray

    from berg_scale.engine.chunk_reading import chunks_read_here, chunks_read_in_pool, iter_samples
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.io.shard_listing import list_shards

    folder, _ = _shards(quick)
    urls = [shard.url for shard in list_shards(str(folder))]
    limit = DecodeOptions(IMAGE_SIZE).max_pixels
    _ray()
    pool = DecodePool(1, DecodeOptions(IMAGE_SIZE))
    def read_here(size: int) -> int:
        return sum(len(chunk.rows) for url in urls for chunk in chunks_read_here(iter_samples(url, None), size))

    def read_in_pool(size: int) -> int:
        """As a GPU-decode worker receives them: headers checked there, views of the blob here."""
        rows = 0
        for url in urls:
            for chunk in chunks_read_in_pool(pool, url, None, size, limit):
                chunk.payload_list()
                rows += len(chunk.rows)
        return rows

    ways = {"the worker reads": read_here, "a decode process reads": read_in_pool}
    rows = []
    n = 0
    try:
        for size in (32, 100, 256):
            for name, read in ways.items():
                read(size)  # warm-up: page cache, the process's imports
                runs = []
                for _ in range(3):
                    began, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
                    n = read(size)
                    runs.append((n / (time.perf_counter() - began), 1e6 * (time.process_time() - cpu) / n,
                                 1e6 * (time.thread_time() - thread) / n))
                rate, process_us, thread_us = (statistics.median(column) for column in zip(*runs))
                rows.append(f"| {size} | {name} | {rate:.0f} | {process_us:.0f} | {thread_us:.0f} |")
    finally:
        pool.close()
        ray.shutdown()
    return [
        "### Where the tars are read: the worker's CPU per image",
        "",
        f"{n} synthetic JPEGs (500 x 375) in {len(urls)} "
        "shard(s) on local disk, read into chunks, no decode. 'A decode process reads' also checks every "
        "header there (as for nvJPEG) and the worker maps each chunk's blob and cuts it into views. Medians of 3.",
        "",
        "| chunk | who reads | img/s | worker process CPU µs/img | consuming thread CPU µs/img |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Machine: {_machine()}.",
        "",
    ]


def _payload_chunks_of(shards) -> list[list[bytes]]:
    from berg_scale.io.shard_reader import read_shard

    chunks = []
    for shard in shards:
        images = [sample.image for sample in read_shard(shard.url)]
        chunks.extend(images[i : i + BATCH] for i in range(0, len(images), BATCH))
    return chunks


def _record(lines: list[str], title: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    existing = RESULTS.read_text() if RESULTS.exists() else "# Feed benchmark results\n\n"
    RESULTS.write_text(existing.rstrip() + "\n\n" + "\n".join([f"## {title}, {stamp}", "", *lines]) + "\n")
    print(f"appended to {RESULTS}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="feed", choices=["feed", "memory", "shards", "reading"])
    parser.add_argument("--shards", type=int, default=8, metavar="N", help="small shards for `shards` (default 8)")
    parser.add_argument("--per-shard", type=int, default=3 * BATCH, metavar="M",
                        help=f"images per shard for `shards` (default {3 * BATCH})")
    parser.add_argument("--quick", action="store_true", help="fewer images (under 2 minutes on 2 cores)")
    parser.add_argument("--record", action="store_true", help=f"append the report to {RESULTS.name}")
    parser.add_argument("--model-rate", type=float, default=None, help="stand-in model images/s (default: 0.6 of (a))")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.which == "shards":
        if args.shards < 2 or args.per_shard < 1:
            parser.error("--shards must be at least 2 (one boundary) and --per-shard at least 1")
        lines = bench_shards(args.shards, args.quick, args.model_rate, args.per_shard)
        lines.append(f"Wall time of the benchmark: {time.perf_counter() - started:.0f} s.")
        print("\n".join(lines))
        if args.record:
            _record(lines, f"Shard boundaries{' (quick)' if args.quick else ''}")
        return 0
    if args.which == "reading":
        lines = bench_reading(args.quick)
        print("\n".join(lines))
        if args.record:
            _record(lines, "Where the tars are read")
        return 0
    if args.which == "memory":
        lines = bench_memory()
        print("\n".join(lines))
        if args.record:
            _record(lines, "Worker memory with a decode pool")
        return 0
    lines, efficiency = bench_feed(args.quick, args.model_rate)
    lines.append(f"Wall time of the benchmark: {time.perf_counter() - started:.0f} s.")
    print("\n".join(lines))
    if args.record:
        _record(lines + ["", f"feed efficiency: {efficiency:.2f}"], f"Feed benchmark{' (quick)' if args.quick else ''}")
    print(f"feed efficiency: {efficiency:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
