"""One input shard from tar to committed Parquet: read -> decode -> model -> write -> marker.

Independent of Ray (unless a decode pool is handed in), so it can be tested and profiled
on its own; `EncoderWorker` calls it for each shard it is handed. Rows keep the tar's
order. Images are processed in chunks of `batch_size` samples: each chunk is decoded (by
the decode processes of `engine/decode_pool.py`, by threads in this process, or by nvJPEG
on a GPU), the images that decoded go through the model in one forward pass, and the
chunk becomes one Parquet row group (error rows included, with nulls).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from berg_scale.config import InputConfig, ResourcesConfig, RetriesConfig, default_of
from berg_scale.engine.chunk_reading import (
    ReadChunk,
    chunks_read_here,
    chunks_read_in_pool,
    iter_samples,
    with_reasons,
)
from berg_scale.errors import BergScaleError
from berg_scale.io.image_decode import DecodeOptions
from berg_scale.io.output_store import OutputStore, commit_shard, read_done_marker
from berg_scale.io.response_writer import ResponseShardWriter, build_record_batch
from berg_scale.io.shard_listing import InputShard
from berg_scale.io.storage import StorageOptions
from berg_scale.io.tar_sample import TarSample

STAGES = ("read", "decode", "model", "write")
# Notes a commit marker quotes with their keys; the rest are only counted, so a shard with
# a note on every sample keeps a small marker.
NOTE_EXAMPLES = 10


class ShardRejected(BergScaleError):
    """The shard is readable but not usable (too many bad images); retrying cannot help."""


class ShardCancelled(Exception):
    """Another execution of the same shard committed first."""


@dataclass(frozen=True)
class ShardSettings:
    """Everything about processing a shard that does not depend on the model."""

    output: str
    storage: StorageOptions | None = None
    image_size: int = default_of(InputConfig, "image_size")
    crop: str = default_of(InputConfig, "crop")
    batch_size: int = default_of(ResourcesConfig, "batch_size")
    decode: str = default_of(ResourcesConfig, "decode")  # cpu | gpu | auto
    decode_threads: int = default_of(ResourcesConfig, "decode_threads")
    decode_workers: int | str = 0  # processes outside the worker (engine/decode_pool.py); 0: threads
    auto_decode_workers: int = 0  # decode_workers "auto" on a CUDA worker (from its node's CPUs)
    decode_nodes: str = default_of(ResourcesConfig, "decode_nodes")
    decode_in_flight: int = default_of(ResourcesConfig, "decode_in_flight")
    shards_in_flight: int = default_of(ResourcesConfig, "shards_in_flight")
    # The whole decode options; None: the defaults at image_size and crop.
    decode_options: DecodeOptions | None = None
    error_rate_threshold: float = default_of(RetriesConfig, "error_rate_threshold")
    read_ahead: int = 256
    decode_ahead: int = 2  # chunks decoded ahead of the model (0: decode inline)
    pool_reads: bool = True  # with a pool, its processes read the tars (False: the worker does; for measurements)
    device: str = default_of(ResourcesConfig, "device")
    run_id: str | None = None  # staging folder of this run under _tmp/
    # What the driver checked this run against (config fingerprint, weight hashes): every
    # marker records it, so a later run can tell whether a committed shard is still valid.
    binding: dict[str, Any] = field(default_factory=dict)
    sample_metadata: tuple[str, ...] = ()  # json sidecar fields copied into columns

    @property
    def options(self) -> DecodeOptions:
        if self.decode_options is not None:
            return self.decode_options
        return DecodeOptions(size=self.image_size, crop=self.crop)


@dataclass
class ShardStats:
    rows: int = 0
    ok: int = 0
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    error_reasons: Counter = field(default_factory=Counter)
    decoded_on: Counter = field(default_factory=Counter)
    notes: int = 0
    note_examples: list[dict[str, str | None]] = field(default_factory=list)

    def add_note(self, key: str | None, note: str) -> None:
        """Count a note, and keep it with its key (None: the shard's) while there is room."""
        self.notes += 1
        if len(self.note_examples) < NOTE_EXAMPLES:
            self.note_examples.append({"key": key, "note": note})

    def marker_notes(self, shard_notes: list[str]) -> dict[str, Any]:
        """The marker's `notes` and `note_examples`: the shard's own notes first (a few, each
        summing up many members), then the samples' in row order."""
        shard_level = [{"key": None, "note": note} for note in shard_notes]
        return {"notes": self.notes + len(shard_notes),
                "note_examples": (shard_level + self.note_examples)[:NOTE_EXAMPLES]}


def process_shard(
    shard: InputShard,
    model: Any,
    schema: Any,
    store: OutputStore,
    settings: ShardSettings,
    *,
    executor: Any | None = None,
    attempt: int = 1,
    worker: dict[str, Any] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    samples: Iterable[TarSample] | None = None,
    on_rows: Callable[[int], None] | None = None,
    pool: Any | None = None,
    model_turn: Any | None = None,
) -> dict[str, Any]:
    """Process and commit one shard; returns the payload written to its `_done` marker.

    `on_rows(n)` is told the rows written so far after each row group (live progress).
    `model_turn` (an `engine.model_turns.ModelTurn`), when given, is acquired before the
    first forward and released after the last: a worker running several shards at once
    lets them read and decode ahead (bounded by `read_ahead` samples and `decode_ahead`
    chunks while they wait) and close and commit while the next one runs the model, but
    never runs two shards' forwards at the same time.

    Three stages overlap: a thread reads the tar ahead (or waits for the chunks one of
    `pool`'s processes reads), a second one decodes the next chunks (fanning out over
    `pool`'s processes, or over `executor`'s threads) while this thread runs the model on
    the current one and writes its row group. A GPU decode (nvJPEG) runs in this process,
    so it never goes to the pool; the pool then reads the tars and checks the headers.
    """
    from berg_scale.io.read_ahead import ReadAhead

    started = time.perf_counter()
    stats = ShardStats()
    schema = _with_metadata_columns(schema, settings)
    device = getattr(model, "device", "cpu")
    use_gpu = gpu_decode_wanted(settings.decode, device)
    writer = ResponseShardWriter(store, shard.name, schema)
    reader: ReadAhead[Any]
    read_chunks: Iterator[ReadChunk]
    deepen_reader_to = 0  # the reader's depth once the first chunk is decoded (0: as it is)
    shard_notes: list[str] = []  # the reader's notes about members of no row, complete once it is read
    if pool is not None and samples is None and settings.pool_reads and pool.reads(shard.url):
        check_headers_below = settings.options.max_pixels if use_gpu else None
        # One chunk ahead until the model has its first batch, then the full depth: the
        # reading process also decodes, and a full read-ahead at the shard's start would
        # take its CPU from the first chunk's decode, which the model is waiting for.
        read_chunks = reader = ReadAhead(
            chunks_read_in_pool(pool, shard.url, settings.storage, settings.batch_size, check_headers_below,
                                shard_notes),
            depth=1, name=f"read-{shard.name}")
        deepen_reader_to = max(1, -(-settings.read_ahead // settings.batch_size))
    else:
        source = (with_reasons(samples) if samples is not None
                  else iter_samples(shard.url, settings.storage, shard_notes))
        reader = ReadAhead(source, depth=settings.read_ahead, name=f"read-{shard.name}")
        read_chunks = chunks_read_here(reader, settings.batch_size)
    if pool is not None and not use_gpu:
        chunks = PooledChunks(pool, device, stats).decoded(read_chunks)
    else:
        decoder = ChunkDecoder(settings, executor, use_gpu, device, stats)
        chunks = (decoder(chunk) for chunk in read_chunks)
    decoded_chunks = (
        ReadAhead(chunks, depth=settings.decode_ahead, name=f"decode-{shard.name}")
        if settings.decode_ahead > 0
        else _Inline(chunks)
    )
    rows_written = 0

    def write(launched: _Launched) -> None:
        nonlocal rows_written
        outputs = launched.outputs(stats)
        write_started = time.perf_counter()
        writer.write(build_record_batch(schema, shard.name, launched.decoded.rows, outputs))
        stats.seconds["write"] += time.perf_counter() - write_started
        rows_written += len(launched.decoded.rows)
        if on_rows is not None:
            on_rows(rows_written)

    try:
        lagging: _Launched | None = None  # a GPU batch whose results are still on the way
        for decoded in decoded_chunks:
            if deepen_reader_to:
                reader.deepen(deepen_reader_to)
                deepen_reader_to = 0
            if cancelled():
                raise ShardCancelled(shard.name)
            if model_turn is not None and not model_turn.acquire(cancelled):
                raise ShardCancelled(shard.name)  # cancelled while waiting for the model
            launched = _launch_model(decoded, model, stats)
            if lagging is not None:  # collected only now: the GPU already runs the next batch
                write(lagging)
                lagging = None
            if launched.pending is None or launched.pending.done:
                write(launched)
            else:
                lagging = launched
        if lagging is not None:
            write(lagging)
        if model_turn is not None:
            model_turn.release()  # the last forward is done: the next shard may start its own
        stats.seconds["read"] = reader.busy_seconds
        if stats.rows and stats.errors / stats.rows > settings.error_rate_threshold:
            shown = stats.error_reasons.most_common(3)
            top = ", ".join(f"{reason} x{n}" for reason, n in shown)
            rest = stats.errors - sum(n for _, n in shown)
            if rest > 0:
                top += f", and {rest} of other kinds"
            raise ShardRejected(
                f"{stats.errors} of {stats.rows} images failed ({stats.errors / stats.rows:.0%} > "
                f"error_rate_threshold {settings.error_rate_threshold:.0%}): {top}"
            )
        if cancelled() or not may_commit(store, shard.name, settings.run_id):
            raise ShardCancelled(shard.name)
    except BaseException:
        if model_turn is not None:
            model_turn.release()
        decoded_chunks.close()
        reader.close()
        writer.abort()
        raise
    decoded_chunks.close()
    reader.close()
    payload = {
        "input": shard.url,
        "input_size": shard.size,
        "input_stamp": shard.stamp,
        "rows": stats.rows,
        "ok": stats.ok,
        "errors": stats.errors,
        "error_reasons": dict(stats.error_reasons.most_common(20)),
        **stats.marker_notes(shard_notes),
        "decoded_on": dict(stats.decoded_on),
        "attempt": attempt,
        "worker": worker or {},
        "run_id": settings.run_id,
        "weight_hashes": dict(getattr(model, "weight_hashes", {}) or {}),
        "model_fingerprint": getattr(model, "fingerprint", None),
        **{key: value for key, value in settings.binding.items()},
    }
    payload["seconds"] = _seconds(stats, started, time.perf_counter())
    try:
        return commit_shard(store, shard.name, writer, payload)
    except BaseException:
        writer.abort()
        raise


def may_commit(store: OutputStore, shard: str, run_id: str | None) -> bool:
    """Whether this execution may commit its shard now.

    First commit wins among the executions of one run (retries, speculative copies). A
    run's workers can outlive its driver (killed, or cut off long enough to lose the
    lease), so the run that holds the output's lease decides: a worker of any other run
    never commits, and a marker another run left while this one holds the lease is
    replaced rather than trusted (this run's ledger never scheduled a committed shard).
    Without a lease (a released one, or a store used directly) the first commit wins.
    """
    from berg_scale.io.output_lease import read_lease

    holder = read_lease(store) if run_id else None
    holder_run = (holder or {}).get("run_id")
    if holder_run and holder_run != run_id:
        return False  # the output belongs to another run now
    marker = read_done_marker(store, shard)
    if marker is None:
        return True
    return bool(holder_run) and marker.get("run_id") != run_id


def _with_metadata_columns(schema: Any, settings: ShardSettings) -> Any:
    """Add the `input.metadata` sidecar columns after the identity columns (if any)."""
    from berg_scale.io.response_writer import ID_FIELDS
    from berg_scale.io.sample_metadata import metadata_names, with_sample_metadata

    if not settings.sample_metadata or metadata_names(schema):
        return schema
    return with_sample_metadata(schema, settings.sample_metadata, after=len(ID_FIELDS))


def _seconds(stats: ShardStats, started: float, now: float) -> dict[str, float]:
    return {**{k: round(v, 6) for k, v in stats.seconds.items()}, "total": round(now - started, 6)}


@dataclass
class DecodedChunk:
    rows: list[TarSample]  # decoded: identity and outcome, no bytes
    images: Any  # uint8 (n_ok, 3, size, size) tensor, on the decode device
    ready: Any = None  # CUDA event recorded after a GPU decode or copy, else None
    presized: dict[tuple[int, int], Any] = field(default_factory=dict)  # exact resized copies


def account_rows(chunk: list[TarSample], errors: list[str | None], decoded_on: list[str | None],
                 stats: ShardStats) -> list[TarSample]:
    """One row per sample, in order, with its error reason (tar-level or decode-level); the
    samples' notes are counted for the commit marker, which is where they reach the user."""
    rows: list[TarSample] = []
    for sample, error, where in zip(chunk, errors, decoded_on):
        row = sample.decoded(error)
        rows.append(row)
        for note in row.notes:
            stats.add_note(row.key, note)
        reason = row.error
        if reason is None:
            stats.decoded_on[where or "cpu"] += 1
        else:
            stats.error_reasons[_reason_kind(reason)] += 1
    ok = sum(1 for row in rows if row.ok)
    stats.rows += len(rows)
    stats.ok += ok
    stats.errors += len(rows) - ok
    return rows


class PooledChunks:
    """Chunks decoded by a `DecodePool`, turned into `DecodedChunk`s in tar order.

    The pool's arrays arrive through Ray's shared memory and become tensors without a
    copy; for a CUDA model they are copied once into pinned memory and sent to the GPU
    asynchronously on a side stream (the model waits on an event).
    """

    def __init__(self, pool: Any, device: Any, stats: ShardStats) -> None:
        self.pool = pool
        self.device = device
        self.stats = stats
        self.stream = None
        if str(device).startswith("cuda"):
            import torch

            self.stream = torch.cuda.Stream(device=device)

    def decoded(self, chunks: Iterable[ReadChunk]) -> Iterator[DecodedChunk]:
        jobs = ((chunk.rows, chunk.payloads) for chunk in chunks)
        waited = time.perf_counter()
        for chunk_rows, parts in self.pool.decoded(jobs):
            errors = [error for part in parts for error in part.errors]
            decoded_on = [where for part in parts for where in part.decoded_on]
            rows = account_rows(chunk_rows, errors, decoded_on, self.stats)
            images = self._batch([part.images for part in parts])
            sizes = dict.fromkeys(size for part in parts for size in part.presized)  # parts with no ok image have none
            presized = {size: self._batch([part.presized[size] for part in parts if size in part.presized])
                        for size in sizes}
            ready = self._record() if self.stream is not None else None
            # Time the model loop's feed waited on decoding (the processes' CPU time is their own).
            self.stats.seconds["decode"] += time.perf_counter() - waited
            yield DecodedChunk(rows, images, ready, presized)
            waited = time.perf_counter()

    def _batch(self, arrays: list[Any]) -> Any:
        """One batch tensor from the parts' shared-memory arrays: no copy for a single part
        on the CPU; otherwise one copy, into pinned memory and on to the GPU for CUDA."""
        import torch

        from berg_scale.engine.decode_pool import as_tensor

        tensors = [as_tensor(array) for array in arrays if len(array)]
        if not tensors:
            return as_tensor(arrays[0])
        if self.stream is None:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        total = sum(len(t) for t in tensors)
        staging = torch.empty((total, *tensors[0].shape[1:]), dtype=tensors[0].dtype, pin_memory=True)
        torch.cat(tensors, out=staging)
        with torch.cuda.stream(self.stream):
            return staging.to(self.device, non_blocking=True)

    def _record(self) -> Any:
        import torch

        ready = torch.cuda.Event()
        ready.record(self.stream)
        return ready


class ChunkDecoder:
    """Decodes one chunk of samples into rows and a batch of ok images.

    Runs in the decode thread. GPU decodes go on a side CUDA stream and hand the model
    an event to wait on, so decoding the next chunk overlaps the current forward pass.
    """

    def __init__(self, settings: ShardSettings, executor: Any, use_gpu: bool, device: Any, stats: ShardStats) -> None:
        self.settings = settings
        self.executor = executor
        self.use_gpu = use_gpu
        self.device = device
        self.stats = stats
        self.stream = None
        if use_gpu:
            import torch

            self.stream = torch.cuda.Stream(device=device)

    def __call__(self, chunk: ReadChunk) -> DecodedChunk:
        from berg_scale.io.batch_decode_cpu import decode_batch_cpu
        from berg_scale.io.batch_decode_gpu import decode_jpeg_batch_gpu

        started = time.perf_counter()
        payloads = chunk.payload_list()
        options = self.settings.options
        ready = None
        if self.use_gpu:
            import torch

            with torch.cuda.stream(self.stream):
                result = decode_jpeg_batch_gpu(payloads, self.device, options, executor=self.executor,
                                               headers=chunk.headers)
                ready = torch.cuda.Event()
                ready.record(self.stream)
        else:
            result = decode_batch_cpu(payloads, options, executor=self.executor)
        rows = account_rows(chunk.rows, result.errors, result.decoded_on, self.stats)
        ok = [i for i, row in enumerate(rows) if row.ok]
        images = result.images if len(ok) == len(rows) else result.images[ok]
        self.stats.seconds["decode"] += time.perf_counter() - started
        return DecodedChunk(rows, images, ready)


@dataclass
class _Launched:
    """A chunk whose forward has been launched: results ready, or still on their way."""

    decoded: DecodedChunk
    pending: Any = None  # PendingOutputs of a model with `forward_async`
    ready: dict[str, np.ndarray] | None = None  # the results of a model without it

    def outputs(self, stats: ShardStats) -> dict[str, np.ndarray]:
        if self.pending is None:
            return self.ready or {}
        started = time.perf_counter()
        outputs = {name: np.asarray(values) for name, values in self.pending.result().items()}
        stats.seconds["model"] += time.perf_counter() - started
        return outputs


def _launch_model(decoded: DecodedChunk, model: Any, stats: ShardStats) -> _Launched:
    if not len(decoded.images):
        return _Launched(decoded, ready={})
    started = time.perf_counter()
    images = decoded.images
    if decoded.ready is not None:
        import torch

        current = torch.cuda.current_stream(images.device)
        current.wait_event(decoded.ready)
        for tensor in (images, *decoded.presized.values()):
            tensor.record_stream(current)  # the side stream's allocator must not reuse it early
    extra = {"presized": decoded.presized} if decoded.presized else {}
    forward_async = getattr(model, "forward_async", None)
    if forward_async is not None:
        launched = _Launched(decoded, pending=forward_async(images, **extra))
    else:
        forwarded = model.forward(images, **extra)
        launched = _Launched(decoded, ready={name: np.asarray(values) for name, values in forwarded.items()})
    stats.seconds["model"] += time.perf_counter() - started
    return launched


class _Inline:
    """The no-overlap variant of ReadAhead (same interface), for measurements."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator

    def __iter__(self) -> Iterator[Any]:
        return self.iterator

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


_QUOTED = re.compile(r"'[^']*'")


def _reason_kind(reason: str, limit: int = 60) -> str:
    """Group messages like 'truncated (image file is truncated (3 bytes not processed))'.

    Quoted member names are left out, so "member '…' is a symbolic link" counts every
    such member as one kind; a long kind is cut at a word, with an ellipsis.
    """
    kind = _QUOTED.sub("'…'", reason.split("(")[0].strip() or reason.strip())
    if len(kind) <= limit:
        return kind
    cut = kind[: limit - 1].rsplit(" ", 1)[0] if " " in kind[: limit - 1] else kind[: limit - 1]
    return cut.rstrip(" ,;:") + "…"


def gpu_decode_wanted(decode: str, device: Any) -> bool:
    """Whether a worker on `device` decodes with nvJPEG (`decode: gpu` or `auto` on CUDA)."""
    on_cuda = str(device).startswith("cuda")
    if decode == "gpu" and not on_cuda:
        return False  # documented fallback: the CPU path, never an error
    return on_cuda and decode in ("gpu", "auto")
