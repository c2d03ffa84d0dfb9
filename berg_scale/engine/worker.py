"""`EncoderWorker`: the Ray actor that holds the models on one device and runs shards.

One actor per GPU (`num_gpus=1`) or N CPU actors. The models are built once in the
constructor (Ray re-runs it after a restart), then the actor is handed shards, up to
`resources.shards_in_flight` at once. Only shard descriptions and small `ShardResult`s cross process boundaries to
the driver; with `decode_workers` > 0 the actor also owns a pool of decode processes on
its node (`engine/decode_pool.py`) that send it decoded batches through shared memory
(they live and die with the actor).

The actor runs `shards_in_flight + 1` method threads: one `process` call per shard it
holds, and one more so that the driver can `cancel` a speculative duplicate or ask for
`progress` while they run. The shards' reading, decoding, Parquet closing and commits
overlap, but the model runs one shard at a time, in order of arrival
(`engine/model_turns.py`): the next shard's first chunks are decoded by the time the
current one's last forward ends, so the device does not wait at shard boundaries.
Decoding two shards at once is safe on every path: the thread pool and the decode pool
keep per-call state (`DecodePool` guards its shared queue counts with a lock), and each
shard's GPU decoder has its own CUDA stream (torchvision serialises calls into its one
nvJPEG decoder).
"""

from __future__ import annotations

import itertools
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from berg_scale.engine.model_turns import ModelTurns
from berg_scale.engine.shard_pipeline import ShardCancelled, ShardRejected, ShardSettings, process_shard
from berg_scale.engine.shard_result import ShardOutcome, ShardResult
from berg_scale.io.output_store import OutputStore
from berg_scale.io.response_writer import build_schema, iter_descriptions
from berg_scale.io.shard_listing import InputShard
from berg_scale.io.shard_reader import ShardReadError

# Failures that come from the input bytes themselves (a damaged tar or gzip stream, a
# shard with too many bad images): running the same shard again fails the same way,
# so the driver quarantines it at once instead of retrying.
PERMANENT_ERRORS = (ShardRejected, ShardReadError)


class EncoderWorker:
    """Plain class; `remote_worker_class()` wraps it as a Ray actor."""

    def __init__(self, worker_index: int, factory: Any, settings: ShardSettings) -> None:
        import time

        from berg_scale.engine.devices import choose_device, describe_worker

        self.worker_index = worker_index
        self.settings = settings
        self.device = choose_device(settings.device)
        self.info = describe_worker(self.device, worker_index)
        load_started = time.perf_counter()
        self.model = factory.build(self.device)
        self.model_load_seconds = time.perf_counter() - load_started
        self.columns = iter_descriptions(self.model.columns)
        self.schema = build_schema(
            self.columns,
            {
                "weight_hashes": dict(self.model.weight_hashes),
                "model_fingerprint": self.model.fingerprint,
                "image_size": settings.image_size,
                "crop": settings.crop,
                # How the numbers were computed travels with them, not only in run.json.
                **{name: getattr(self.model, name) for name in ("precision", "exact_resize", "compile")
                   if getattr(self.model, name, None) is not None},
            },
        )
        self.store = OutputStore(settings.output, settings.storage, run_id=settings.run_id)
        _preload_pipeline_modules()
        self.executor = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.pool = start_decode_pool(settings, self.model, self.device)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.shards_done = 0
        self.model_turns = ModelTurns()
        self._calls = itertools.count()
        self._current: dict[int, tuple[str, int]] = {}  # call -> (shard, rows written), for progress()

    def ready(self) -> dict[str, Any]:
        """What the driver needs before it hands out work (and to check the fingerprint)."""
        return {
            "info": self.info,
            "fingerprint": self.model.fingerprint,
            "weight_hashes": dict(self.model.weight_hashes),
            "columns": self.columns,
            "model_load_seconds": self.model_load_seconds,
        }

    def progress(self) -> dict[str, Any]:
        """Rows written of every shard this worker holds now (cheap; polled by the driver).

        `shards` maps each shard in flight to its rows written (0 while it waits for the
        model); `shard`/`rows` name the one furthest along, for a single-shard reader."""
        with self._lock:
            shards: dict[str, int] = {}
            for name, rows in self._current.values():
                shards[name] = max(rows, shards.get(name, 0))
        furthest = max(shards.items(), key=lambda item: item[1], default=(None, 0))
        return {"shards": shards, "shard": furthest[0], "rows": furthest[1], "worker": self.worker_index}

    def column_coords(self) -> list[dict[str, Any]]:
        """Full column descriptions with coordinates, for readouts.json."""
        return iter_descriptions(self.model.columns, with_coords=True)

    def process(self, shard: InputShard, attempt: int) -> ShardResult:
        """Run one shard; failures come back as data so the driver can decide on retries."""
        with self._lock:
            self._cancelled.discard(shard.name)

        def report(outcome: ShardOutcome, **details: Any) -> ShardResult:
            return ShardResult(shard.name, attempt, self.worker_index, outcome, **details)

        call = next(self._calls)
        with self._lock:
            self._current[call] = (shard.name, 0)

        def on_rows(rows: int) -> None:
            with self._lock:
                self._current[call] = (shard.name, rows)

        turn = self.model_turns.ticket()  # taken on arrival: the model goes in this order
        try:
            payload = process_shard(
                shard,
                self.model,
                self.schema,
                self.store,
                self.settings,
                executor=self.executor,
                pool=self.pool,
                attempt=attempt,
                worker=self.info,
                cancelled=lambda: shard.name in self._cancelled,
                on_rows=on_rows,
                model_turn=turn,
            )
        except ShardCancelled:
            return report(ShardOutcome.CANCELLED)
        except PERMANENT_ERRORS as exc:
            return report(ShardOutcome.REJECTED, error=" ".join(str(exc).split())[:2000])
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
            return report(
                ShardOutcome.FAILED,
                error=f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000],
                traceback=traceback.format_exc(limit=8)[-4000:],
            )
        finally:
            turn.release()
            with self._lock:
                self._current.pop(call, None)
        with self._lock:
            self.shards_done += 1
        return report(ShardOutcome.DONE, marker=payload)

    def cancel(self, shard_name: str) -> None:
        with self._lock:
            self._cancelled.add(shard_name)

    def memory(self) -> dict[str, Any]:
        """Resident memory of this worker process and of its decode processes (for the
        flat-memory benchmark: the processes that read the tars hold their chunks too)."""
        import resource

        from berg_scale.engine.decode_pool import resident_mb

        decode_rss = self.pool.resident_mb() if self.pool is not None else []
        return {
            "rss_mb": resident_mb(),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "shards_done": self.shards_done,
            "decode_workers": self.pool.count if self.pool is not None else 0,
            "decode_rss_mb": decode_rss,
        }


def decode_pool_size(settings: ShardSettings, device: Any) -> tuple[int, bool]:
    """(decode processes, whether they only read) for a worker on `device`.

    `auto` gives a pool only to a worker on a CUDA device: a CPU worker's cores run the
    model, so decoding in its threads costs nothing the pool would save. Where nvJPEG
    decodes (in the worker), the pool's processes only read the tars and check the
    headers, one shard each, so it needs no more of them than shards in flight.
    """
    from berg_scale.engine.shard_pipeline import gpu_decode_wanted

    if settings.decode_workers == "auto":
        count = settings.auto_decode_workers if str(device).startswith("cuda") else 0
    else:
        count = int(settings.decode_workers or 0)
    reads_only = gpu_decode_wanted(settings.decode, device)
    if reads_only:
        count = min(count, settings.shards_in_flight)
    return max(0, count), reads_only


def start_decode_pool(settings: ShardSettings, model: Any, device: Any) -> Any | None:
    """The decode processes this worker's shards use, or None to read and decode here."""
    count, reads_only = decode_pool_size(settings, device)
    if count <= 0:
        return None
    from berg_scale.engine.decode_pool import DecodePool

    options = settings.options
    sizer = getattr(model, "cpu_resize_sizes", None)
    presize = sizer(options.size, options.size) if sizer is not None and not reads_only else []
    return DecodePool(count, options, presize=presize, nodes=settings.decode_nodes,
                      in_flight=settings.decode_in_flight)


def _preload_pipeline_modules() -> None:
    """Import what the first shard would otherwise import, so it is not slower than the rest."""
    import pyarrow.parquet  # noqa: F401
    from PIL import Image

    import berg_scale.io.batch_decode_cpu  # noqa: F401
    import berg_scale.io.shard_reader  # noqa: F401

    Image.init()


def remote_worker_class(shards_in_flight: int = 1) -> Any:
    """The Ray actor class: one method thread per shard it may hold, plus one for
    `cancel` and `progress`."""
    import ray

    return ray.remote(max_concurrency=max(1, int(shards_in_flight)) + 1)(EncoderWorker)
