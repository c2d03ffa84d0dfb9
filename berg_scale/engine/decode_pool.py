"""Decoding outside the model's process: a pool of Ray actors that turn chunks into batches.

Decoding in threads inside the worker shares one Python interpreter (and its GIL) with
the model loop, Parquet writing and the tar reader, so a fast GPU waits for pixels. Here
each `DecodeProcess` is its own process (a Ray actor, one CPU each) that decodes a chunk of
compressed images with Pillow, crops it, and, when the model resamples on the CPU, also
makes the model's resized copies (the exact resize of each preprocessing recipe), then returns uint8 arrays.
NumPy results go through Ray's shared-memory object store: on the worker's node the
worker maps them without a copy.

A process also reads tars for the worker (`engine/chunk_reading.py`): `DecodePool.read`
streams a shard's chunks from the process with the fewest reads, in a concurrency group
of its own so that the process goes on decoding while it reads. A chunk it read reaches
the decoders as a reference to its blob, so its bytes never pass through the worker.

`DecodePool.decoded(chunks)` keeps the tar order: each chunk is cut into contiguous parts,
one per process (so a shard's first batch is ready after a fraction of its decode time),
handed to the processes with the fewest queued, at most `in_flight` chunks at a time
(backpressure: memory stays flat whatever the shard size), and taken back strictly in
submission order. Error rows stay in their chunk, so a shard's rows and
commit are exactly as with in-process decoding.

A worker holding two shards runs two `decoded` calls at once, from two threads: each call
keeps its own queue of chunks (its order and its `in_flight` bound are its own), and
the only state they share, the processes' queue counts, is updated under a lock.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.io.image_decode import DecodeOptions

# A decode process that does not come up within this time means the node lacks CPUs.
DEFAULT_START_TIMEOUT_S = 300.0
# The smallest piece of a chunk handed to one process (smaller pieces cost more in calls
# than they save in waiting).
MIN_PART = 8
# Shards one process may read at once (resources.shards_in_flight is at most 8).
READ_SLOTS = 8
# Chunks a reading process may run ahead of the worker (each is two objects: rows, blob).
READ_AHEAD_CHUNKS = 4


@dataclass
class DecodedArrays:
    """What a decode process returns for one chunk (NumPy only: zero-copy through Ray).

    `images` holds only the images that decoded, in chunk order; `presized` maps an
    (height, width) the model will resample to onto the same images at that size.
    """

    images: np.ndarray  # uint8 (n_ok, 3, size, size)
    errors: list[str | None]
    decoded_on: list[str | None]
    presized: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def decode_chunk_arrays(
    payloads: Sequence[bytes | memoryview | None],
    options: DecodeOptions,
    presize: Sequence[tuple[int, int]] = (),
    executor: Any | None = None,
) -> DecodedArrays:
    """Decode one chunk on the CPU; also the body of `DecodeProcess.decode`."""
    import torch

    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.models.preprocess import resize_uint8_cpu

    started = time.perf_counter()
    result = decode_batch_cpu(payloads, options, executor=executor)
    ok = result.ok_indices
    images = result.images if len(ok) == len(payloads) else result.images[ok]
    presized = {}
    if len(ok):
        for height, width in presize:
            presized[(height, width)] = resize_uint8_cpu(images, [height, width]).numpy()
    arrays = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return DecodedArrays(arrays, result.errors, result.decoded_on, presized, time.perf_counter() - started)


class DecodeProcess:
    """One decode process (`remote_decode_class` wraps it as a Ray actor)."""

    def __init__(self, options: DecodeOptions, presize: tuple[tuple[int, int], ...] = ()) -> None:
        import torch
        from PIL import Image

        torch.set_num_threads(1)  # one CPU per process: parallelism comes from the pool
        Image.init()
        self.options = options
        self.presize = tuple(presize)

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def decode(self, payloads: list[bytes | None]) -> DecodedArrays:
        return decode_chunk_arrays(payloads, self.options, self.presize)

    def decode_blob(self, blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> DecodedArrays:
        """Decode the images at these spans of a chunk's blob (mapped from shared memory)."""
        from berg_scale.engine.chunk_reading import BlobPayloads

        return decode_chunk_arrays(BlobPayloads(blob, starts, lengths).views(), self.options, self.presize)

    def resident_mb(self) -> float:
        return resident_mb()

    def read(self, url: str, storage: Any, batch_size: int, check_headers_below: int | None) -> Iterator[Any]:
        """A shard's chunks, as `chunk_reading.read_chunk_objects` yields them."""
        from berg_scale.engine.chunk_reading import read_chunk_objects

        yield from read_chunk_objects(url, storage, batch_size, check_headers_below)


def remote_decode_class() -> Any:
    import ray

    return ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3,
                      concurrency_groups={"read": READ_SLOTS})(DecodeProcess)


class ReadStream:
    """One shard being read by a pool process: its chunks' objects, and how to stop it."""

    def __init__(self, pool: DecodePool, index: int, objects: Any) -> None:
        self.pool = pool
        self.index = index
        self.objects = objects  # ObjectRefGenerator: rows, blob, rows, blob, ...
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        import ray

        try:
            ray.cancel(self.objects)  # a reader still running stops at its next chunk
        except Exception:  # noqa: BLE001 - already finished, or the process is gone
            pass
        self.pool._read_finished(self.index)


class DecodePool:
    """`count` decode processes; `decoded(chunks)` yields (chunk, DecodedArrays) in order."""

    def __init__(
        self,
        count: int,
        options: DecodeOptions,
        *,
        presize: Sequence[tuple[int, int]] = (),
        nodes: str = "same",
        in_flight: int = 0,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        import ray

        if count < 1:
            raise BergScaleError(f"a decode pool needs at least one process, got {count}")
        if nodes not in ("same", "any"):
            raise BergScaleError(f"decode_nodes must be 'same' or 'any', got {nodes!r}")
        self.count = count
        self.in_flight = in_flight or 2 * count
        actor = remote_decode_class()
        options_for = {}
        if nodes == "same":
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            options_for["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        self.actors = [actor.options(**options_for).remote(options, tuple(presize)) for _ in range(count)]
        self.nodes = nodes
        self.queued = [0] * count
        self.reading = [0] * count
        self._queued_lock = threading.Lock()  # decoded() runs in one thread per shard in flight
        ready, pending = ray.wait([a.ready.remote() for a in self.actors], num_returns=count,
                                  timeout=start_timeout_s)
        if pending:
            self.close()
            where = "this node" if nodes == "same" else "the cluster"
            raise BergScaleError(
                f"only {len(ready)} of {count} decode processes started within {start_timeout_s:.0f} s: "
                f"each needs one CPU on {where} besides the worker's own; lower resources.decode_workers "
                f"(or set decode_nodes: any to use other nodes' CPUs)"
            )
        ray.get(ready)

    def reads(self, url: str) -> bool:
        """Whether this pool's processes can read `url`: they share the worker's node, or
        the shard is in object storage (a local path may not exist on another node)."""
        return self.nodes == "same" or ("://" in url and not url.startswith("file://"))

    def read(self, url: str, storage: Any, batch_size: int, check_headers_below: int | None = None) -> ReadStream:
        """Start reading a shard on the process with the fewest reads (then fewest queued)."""
        with self._queued_lock:
            index = min(range(self.count), key=lambda i: (self.reading[i], self.queued[i]))
            self.reading[index] += 1
        method = self.actors[index].read.options(  # its own group: the process's decodes go on meanwhile
            num_returns="streaming", concurrency_group="read",
            _generator_backpressure_num_objects=2 * READ_AHEAD_CHUNKS)
        return ReadStream(self, index, method.remote(url, storage, batch_size, check_headers_below))

    def _read_finished(self, index: int) -> None:
        with self._queued_lock:
            self.reading[index] -= 1

    def _submit(self, payloads: Any) -> tuple[int, Any]:
        from berg_scale.engine.chunk_reading import BlobPayloads

        with self._queued_lock:
            index = min(range(self.count), key=self.queued.__getitem__)
            self.queued[index] += 1
        actor = self.actors[index]
        if isinstance(payloads, BlobPayloads):
            return index, actor.decode_blob.remote(payloads.blob, payloads.starts, payloads.lengths)
        return index, actor.decode.remote(payloads)

    def _done_with(self, index: int) -> None:
        with self._queued_lock:
            self.queued[index] -= 1

    def _parts(self, payloads: Any) -> list[Any]:
        """A chunk (a list of payloads, or a `BlobPayloads`) cut into contiguous parts, one
        per process (at least MIN_PART images each), so that the first batch of a shard is
        ready after 1/count of its decode time."""
        n = max(1, min(self.count, len(payloads) // MIN_PART))
        step = -(-len(payloads) // n)
        return [payloads[i : i + step] for i in range(0, len(payloads), step)] or [payloads]

    def decoded(self, chunks: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, list[DecodedArrays]]]:
        """(tag, payloads) in -> (tag, [DecodedArrays of each part, in order]) out, in the
        same order as handed in, with at most `in_flight` chunks out at a time."""
        import ray

        pending: deque[tuple[Any, list[tuple[int, Any]]]] = deque()
        source = iter(chunks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.in_flight:
                    try:
                        tag, payloads = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append((tag, [self._submit(part) for part in self._parts(payloads)]))
                if not pending:
                    return
                tag, parts = pending[0]
                arrays = ray.get([ref for _, ref in parts])
                pending.popleft()
                for index, _ in parts:
                    self._done_with(index)
                yield tag, arrays
        finally:
            for _, parts in pending:  # a cancelled shard: drop what is still queued
                for index, ref in parts:
                    self._done_with(index)
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - already finished, or the process is gone
                        pass

    def resident_mb(self) -> list[float]:
        """Each decode process's resident memory (MB), for memory measurements."""
        import ray

        return ray.get([actor.resident_mb.remote() for actor in self.actors])

    def close(self) -> None:
        import ray

        for handle in self.actors:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    import os

    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def as_tensor(array: np.ndarray) -> Any:
    """A read-only shared-memory array as a CPU tensor without a copy (the model only reads)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(array)


def resolve_decode_workers(requested: int | str, *, uses_gpus: bool, cpus_per_worker: float,
                           gpus_per_worker: float, node_cpus_per_gpu: float | None) -> int:
    """Decode processes per worker: explicit, or for GPU workers the node's CPUs that one
    worker's share of GPUs brings, less the worker's own CPUs; CPU workers decode in-process."""
    if requested != "auto":
        return int(requested)
    if not uses_gpus or not node_cpus_per_gpu:
        return 0
    return max(0, int(node_cpus_per_gpu * gpus_per_worker - cpus_per_worker))
