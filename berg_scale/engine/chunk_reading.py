"""A shard as chunks of `batch_size` samples, read in the worker or by a decode process.

At GPU rates the tar reader is the worker's costliest per-image Python work: parsing
member headers and splitting the stream takes tens of microseconds an image, in the
same interpreter (and under the same GIL) as the model loop. When the worker has a
decode pool, one of its processes reads the shard instead and streams the chunks back
through Ray's object store, each as two objects:

- a `ChunkRows`: the samples without their bytes (identity, sidecar, tar-level error),
  where each image sits in the blob, and, for a GPU decode, each image's header as
  checked on that process (pixel limit, format, orientation);
- the blob: every image's bytes back to back in one uint8 array, which the worker maps
  from shared memory without a copy and hands on by reference to the decode processes
  (they map it too), or slices into the tensors nvJPEG decodes.

The last `ChunkRows` also carries the reader's notes about members of no row (hidden
files, for instance), which are known only once the whole tar has been read; a shard
without a single sample sends one pair of an empty `ChunkRows` with those notes and an
empty blob.

Either way the pipeline sees the same `ReadChunk`s: the same samples, in tar order,
cut at the same places, with the reader's errors and notes unchanged, and the same
shard notes in the list it handed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from berg_scale.io.image_decode import ImageHeader
from berg_scale.io.storage import StorageOptions
from berg_scale.io.tar_sample import TarSample

# A header checked ahead of decoding: the header, the reason it failed, or None (no image).
CheckedHeader = ImageHeader | str | None


@dataclass(frozen=True)
class BlobPayloads:
    """A chunk's images as spans of one shared byte array (`length` -1: no image)."""

    blob: Any  # np.ndarray uint8, or the ObjectRef of one
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, span: slice) -> BlobPayloads:
        """Some of the images, as spans of the same blob (so a chunk cuts like a list)."""
        return BlobPayloads(self.blob, self.starts[span], self.lengths[span])

    def views(self, blob: np.ndarray | None = None) -> list[memoryview | None]:
        """Each image as a zero-copy view of `blob` (default: this one's, if it is an array)."""
        data = memoryview(self.blob if blob is None else blob)  # type: ignore[arg-type]
        return [None if length < 0 else data[start : start + length]
                for start, length in zip(self.starts.tolist(), self.lengths.tolist())]


@dataclass
class ReadChunk:
    """One chunk of a shard, as the decoders receive it."""

    rows: list[TarSample]  # in tar order; an image's bytes in `rows` or in `payloads`
    payloads: list[bytes | None] | BlobPayloads
    headers: list[CheckedHeader] | None = None  # checked where the chunk was read (GPU decode)

    def payload_list(self) -> Sequence[bytes | memoryview | None]:
        """The images in row order, for decoders in this process (views of a fetched blob)."""
        if isinstance(self.payloads, BlobPayloads):
            blob = self.payloads.blob
            if not isinstance(blob, np.ndarray):
                import ray

                blob = ray.get(blob)
            return self.payloads.views(blob)
        return self.payloads


@dataclass(frozen=True)
class ChunkRows:
    """The small half of a chunk read by a decode process (the blob travels on its own)."""

    rows: list[TarSample]
    starts: np.ndarray
    lengths: np.ndarray
    headers: list[CheckedHeader] | None
    shard_notes: tuple[str, ...] = ()  # on the shard's last chunk only


def with_reasons(samples: Iterable[TarSample]) -> Iterator[TarSample]:
    """Samples whose `error` is set exactly when they have no image (then it says why),
    whatever their source: the reader, or samples handed in."""
    for sample in samples:
        if sample.image is None and sample.error is None:
            sample = dataclasses.replace(sample, error="no image member")
        elif sample.image is not None and sample.error is not None:
            sample = dataclasses.replace(sample, error=None)
        yield sample


def iter_samples(url: str, storage: StorageOptions | None,
                 shard_notes: list[str] | None = None) -> Iterator[TarSample]:
    """Samples of one tar in order, via the shared shard reader (which raises on a damaged
    tar); notes about members of no row go to `shard_notes` once the tar is read."""
    from berg_scale.io.shard_reader import iter_shard_samples

    return with_reasons(iter_shard_samples(url, storage, shard_notes=shard_notes))


def sample_chunks(samples: Iterable[TarSample], size: int) -> Iterator[list[TarSample]]:
    iterator = iter(samples)
    while True:
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        yield chunk


def chunks_and_end(samples: Iterable[TarSample], size: int) -> Iterator[tuple[list[TarSample], bool]]:
    """The chunks of `sample_chunks`, each with whether it is the last. One sample is read
    past a full chunk, so the reader has finished (and its shard notes are complete) by
    the time the last chunk is given out, without holding a whole chunk back."""
    iterator = iter(samples)
    chunk = list(islice(iterator, size))
    while chunk:
        following = list(islice(iterator, 1)) if len(chunk) == size else []
        yield chunk, not following
        chunk = following + list(islice(iterator, size - 1)) if following else []


def _payloads(chunk: list[TarSample]) -> list[bytes | None]:
    return [sample.image if sample.error is None else None for sample in chunk]


def chunks_read_here(samples: Iterable[TarSample], size: int) -> Iterator[ReadChunk]:
    """Chunks of samples read in this process (the bytes stay in the rows)."""
    for chunk in sample_chunks(samples, size):
        yield ReadChunk(chunk, _payloads(chunk))


def read_chunk_objects(url: str, storage: StorageOptions | None, batch_size: int,
                       check_headers_below: int | None = None) -> Iterator[ChunkRows | np.ndarray]:
    """The body of a decode process's `read`: per chunk a `ChunkRows`, then its blob; the
    last `ChunkRows` carries the shard's notes.

    `check_headers_below` (the pixel limit) also checks every image's header, as the GPU
    decoder would before handing it to nvJPEG, so the worker does not have to.
    """
    from berg_scale.io.batch_decode_gpu import check_header

    shard_notes: list[str] = []
    empty = True
    for chunk, last in chunks_and_end(iter_samples(url, storage, shard_notes), batch_size):
        empty = False
        payloads = _payloads(chunk)
        lengths = np.array([-1 if data is None else len(data) for data in payloads], dtype=np.int64)
        starts = np.zeros(len(chunk), dtype=np.int64)
        if len(chunk) > 1:
            np.cumsum(np.maximum(lengths[:-1], 0), out=starts[1:])
        blob = np.frombuffer(b"".join(data for data in payloads if data is not None), dtype=np.uint8)
        headers = None
        if check_headers_below is not None:
            headers = [None if data is None else check_header(data, check_headers_below) for data in payloads]
        rows = [dataclasses.replace(sample, image=None) if sample.image is not None else sample for sample in chunk]
        yield ChunkRows(rows, starts, lengths, headers, tuple(shard_notes) if last else ())
        yield blob
    if empty and shard_notes:  # no chunk to carry them
        nothing = np.zeros(0, dtype=np.int64)
        yield ChunkRows([], nothing, nothing, None, tuple(shard_notes))
        yield np.zeros(0, dtype=np.uint8)


def chunks_read_in_pool(pool: Any, url: str, storage: StorageOptions | None, batch_size: int,
                        check_headers_below: int | None = None,
                        shard_notes: list[str] | None = None) -> Iterator[ReadChunk]:
    """Chunks read by one of `pool`'s processes; the blobs stay in the object store.

    An error raised by the reader (a damaged tar, a storage error) is raised here as
    itself, so the worker rejects or retries the shard exactly as if it had read it.
    The reader's notes about members of no row are added to `shard_notes`, as
    `iter_samples` adds them in this process. Closing the iterator stops the remote reader.
    """
    import ray
    from ray.exceptions import RayTaskError

    stream = pool.read(url, storage, batch_size, check_headers_below)
    try:
        while True:
            try:
                rows_ref = next(stream.objects)
            except StopIteration:
                return
            try:
                meta: ChunkRows = ray.get(rows_ref)
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            blob_ref = next(stream.objects)
            if shard_notes is not None:
                shard_notes.extend(meta.shard_notes)
            if meta.rows:
                yield ReadChunk(meta.rows, BlobPayloads(blob_ref, meta.starts, meta.lengths), meta.headers)
    finally:
        stream.close()

