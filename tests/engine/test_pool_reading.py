"""Tars read by a decode process: the worker receives the same samples, bytes and
headers, in the same chunks, as when it reads the tar itself; a damaged tar raises the
reader's own error; a read stopped midway frees its process."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import threading

import numpy as np
import pytest

from berg_scale.synthetic.shards import encode, synthetic_image


def _folder(root) -> None:
    """Images as users keep them: JPEG and PNG with sidecars, a hard link, a symbolic
    link, an animated GIF, a member with no image, an empty image file."""
    rng = np.random.default_rng(7)
    for i in range(9):
        ext = "png" if i % 3 == 0 else "jpg"
        (root / f"img-{i:02d}.{ext}").write_bytes(encode(synthetic_image(rng, 40 + i, 30), ext))
        (root / f"img-{i:02d}.json").write_text(f'{{"i": {i}}}')
    os.link(root / "img-01.jpg", root / "copy-of-01.jpg")
    os.symlink("img-02.jpg", root / "alias.jpg")
    (root / "only-a-sidecar.json").write_text("{}")
    (root / "empty.jpg").write_bytes(b"")
    (root / "junk.jpg").write_bytes(b"not a jpeg at all")


@pytest.fixture(scope="module")
def user_tars(tmp_path_factory) -> list[str]:
    """The same folder as GNU tar and Python's tarfile write it."""
    base = tmp_path_factory.mktemp("user-tars")
    src = base / "src"
    src.mkdir()
    _folder(src)
    out = base / "in"
    out.mkdir()
    urls = []
    with tarfile.open(out / "python.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(os.listdir(src)):
            archive.add(src / name, arcname=name)
    urls.append(str(out / "python.tar"))
    if shutil.which("tar"):
        subprocess.run(["tar", "cf", str(out / "gnu.tar"), "-C", str(src), "."], check=True)
        subprocess.run(["tar", "czf", str(out / "gnu.tar.gz"), "-C", str(src), "."], check=True)
        urls += [str(out / "gnu.tar"), str(out / "gnu.tar.gz")]
    return urls


def _here(url: str, batch_size: int):
    from berg_scale.engine.chunk_reading import chunks_read_here, iter_samples

    return list(chunks_read_here(iter_samples(url, None), batch_size))


def _payloads(chunk) -> list[bytes | None]:
    return [None if item is None else bytes(item) for item in chunk.payload_list()]


def _without_bytes(rows):
    return [dataclasses.replace(row, image=None) for row in rows]


def test_chunk_objects_carry_every_sample_its_bytes_and_its_checked_header(user_tars):
    from berg_scale.engine.chunk_reading import BlobPayloads, ChunkRows, read_chunk_objects
    from berg_scale.io.batch_decode_gpu import check_header

    for url in user_tars:
        here = _here(url, 4)
        objects = list(read_chunk_objects(url, None, 4, check_headers_below=10_000))
        assert len(objects) == 2 * len(here)
        for chunk, meta, blob in zip(here, objects[0::2], objects[1::2]):
            assert isinstance(meta, ChunkRows) and blob.dtype == np.uint8
            assert meta.rows == _without_bytes(chunk.rows)
            views = BlobPayloads(blob, meta.starts, meta.lengths).views()
            assert [None if v is None else bytes(v) for v in views] == chunk.payloads
            expected = [None if p is None else check_header(p, 10_000) for p in chunk.payloads]
            assert meta.headers == expected
        statuses = {row.key: row.error for chunk in here for row in chunk.rows}
        assert statuses["alias"] is not None and statuses["only-a-sidecar"].startswith("no image member")
        assert any(isinstance(h, str) for m in objects[0::2] for h in m.headers)  # junk.jpg, empty.jpg
    assert read_chunk_objects(user_tars[0], None, 4).__next__().headers is None  # CPU decode: not checked


def test_the_pool_reads_a_shard_exactly_as_the_worker_does(ray_session, user_tars):
    from berg_scale.engine.chunk_reading import chunks_read_in_pool
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions

    pool = DecodePool(2, DecodeOptions(size=16))
    try:
        for url in user_tars:
            here = _here(url, 3)
            there = list(chunks_read_in_pool(pool, url, None, 3, check_headers_below=10_000))
            assert [_without_bytes(c.rows) for c in there] == [_without_bytes(c.rows) for c in here]
            assert [_payloads(c) for c in there] == [c.payloads for c in here]
            assert all(c.headers is not None and len(c.headers) == len(c.rows) for c in there)
        assert pool.reading == [0, 0]
    finally:
        pool.close()


def test_the_pool_reads_shards_in_object_storage(ray_session, s3_server, s3_bucket):
    from berg_scale.engine.chunk_reading import chunks_read_here, chunks_read_in_pool, iter_samples
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.io.shard_reader import ShardReadError
    from berg_scale.synthetic.shards import write_synthetic_shards

    storage = s3_server.storage_options()
    (info,) = write_synthetic_shards(f"{s3_bucket}/in", 1, 9, storage=storage, seed=2,
                                     defects={"not_image": 1}, formats=("jpg", "png"))
    pool = DecodePool(1, DecodeOptions(size=16), nodes="any")
    try:
        assert pool.reads(info.url) and not pool.reads("/data/shard.tar")  # another node may lack the file
        here = list(chunks_read_here(iter_samples(info.url, storage), 4))
        there = list(chunks_read_in_pool(pool, info.url, storage, 4))
        assert [_without_bytes(c.rows) for c in there] == [_without_bytes(c.rows) for c in here]
        assert [_payloads(c) for c in there] == [c.payloads for c in here]
        with pytest.raises(ShardReadError, match="no such shard"):
            list(chunks_read_in_pool(pool, f"{s3_bucket}/in/missing.tar", storage, 4))
    finally:
        pool.close()


def test_a_damaged_tar_read_in_the_pool_raises_the_readers_own_error(ray_session, tmp_path):
    from berg_scale.engine.chunk_reading import chunks_read_in_pool, iter_samples
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.io.shard_reader import ShardReadError
    from berg_scale.synthetic.shards import write_corrupt_shard

    url = str(tmp_path / "bad.tar")
    write_corrupt_shard(url, "mid_member", n_images=6)
    with pytest.raises(ShardReadError) as local:
        list(iter_samples(url, None))
    pool = DecodePool(1, DecodeOptions(size=16))
    try:
        with pytest.raises(ShardReadError) as remote:
            list(chunks_read_in_pool(pool, url, None, 2))
        assert str(remote.value) == str(local.value)
        assert (remote.value.url, remote.value.reason) == (local.value.url, local.value.reason)
        with pytest.raises(ShardReadError, match="no such shard"):
            list(chunks_read_in_pool(pool, str(tmp_path / "missing.tar"), None, 2))
        assert pool.reading == [0]
    finally:
        pool.close()


def test_reads_stopped_midway_free_their_process_for_the_next_shards(ray_session, tmp_path):
    """More stopped reads than a process has read slots: a leaked slot would hang the rest."""
    from berg_scale.engine.chunk_reading import chunks_read_in_pool
    from berg_scale.engine.decode_pool import READ_SLOTS, DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.synthetic.shards import write_synthetic_shards

    (info,) = write_synthetic_shards(str(tmp_path / "in"), 1, 60, seed=3, sizes=((16, 12),))
    pool = DecodePool(1, DecodeOptions(size=8))
    outcome: dict[str, object] = {}

    def read_many() -> None:
        for _ in range(READ_SLOTS + 2):
            chunks = chunks_read_in_pool(pool, info.url, None, 2)
            next(chunks)
            chunks.close()
        outcome["rows"] = sum(len(c.rows) for c in chunks_read_in_pool(pool, info.url, None, 7))

    try:
        thread = threading.Thread(target=read_many, daemon=True)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "a stopped read kept its slot"
        assert outcome["rows"] == 60 and pool.reading == [0]
    finally:
        pool.close()


def test_a_reading_process_that_dies_midway_is_restarted_and_the_shard_arrives_whole(ray_session, tmp_path):
    import ray

    from berg_scale.engine.chunk_reading import chunks_read_in_pool
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.synthetic.shards import write_synthetic_shards

    (info,) = write_synthetic_shards(str(tmp_path / "in"), 1, 40, seed=9, sizes=((16, 12),))
    expected = [(c.rows, c.payloads) for c in _here(info.url, 4)]
    pool = DecodePool(1, DecodeOptions(size=8))
    received = []
    try:
        for index, chunk in enumerate(chunks_read_in_pool(pool, info.url, None, 4)):
            received.append((_without_bytes(chunk.rows), _payloads(chunk)))
            if index == 2:
                ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it and re-runs the read
        assert received == [(_without_bytes(rows), payloads) for rows, payloads in expected]
        assert pool.reading == [0]
    finally:
        pool.close()


def test_a_worker_whose_pool_reads_writes_the_same_rows(ray_session, tmp_path, user_tars):
    """Through `EncoderWorker`: decode processes that read and decode give the table that
    reading and decoding in the worker gives, row for row and bit for bit."""
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker import EncoderWorker
    from berg_scale.io.results import open_responses
    from berg_scale.io.shard_listing import list_shards

    shards = list_shards(os.path.dirname(user_tars[0]))
    tables = {}
    for workers in (0, 2):
        output = str(tmp_path / f"out-{workers}")
        settings = ShardSettings(output=output, image_size=24, batch_size=4, decode_threads=1, device="cpu",
                                 decode_workers=workers, error_rate_threshold=1.0)
        worker = EncoderWorker(0, FixedCostModelFactory(), settings)
        try:
            for shard in shards:
                result = worker.process(shard, 1)
                assert result.status == "done", result
                if workers:
                    assert sum(result.marker["decoded_on"].values()) == result.marker["ok"]
        finally:
            if worker.pool is not None:
                worker.pool.close()
        tables[workers] = open_responses(output).to_table().sort_by([("shard", "ascending"), ("index", "ascending")])
    assert tables[2].num_rows == tables[0].num_rows > 0
    assert tables[2].to_pylist() == tables[0].to_pylist()


def test_one_process_reads_a_long_shard_and_decodes_it_too(ray_session, tmp_path):
    """The reader runs ahead only so far, then waits for the worker, which waits for
    decodes queued on the same process: reading must not hold the process's decode slot."""
    from berg_scale.engine.decode_pool import READ_AHEAD_CHUNKS
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.engine.worker import EncoderWorker
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    batch_size = 2
    n_images = batch_size * (3 * READ_AHEAD_CHUNKS + 1)
    write_synthetic_shards(str(tmp_path / "in"), 1, n_images, seed=5, sizes=((20, 16),))
    (shard,) = list_shards(str(tmp_path / "in"))
    settings = ShardSettings(output=str(tmp_path / "out"), image_size=16, batch_size=batch_size,
                             decode_threads=1, device="cpu", decode_workers=1, read_ahead=2)
    worker = EncoderWorker(0, FixedCostModelFactory(), settings)
    outcome: dict[str, object] = {}
    try:
        thread = threading.Thread(target=lambda: outcome.update(result=worker.process(shard, 1)), daemon=True)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "reading and decoding on one process deadlocked"
    finally:
        worker.pool.close()
    result = outcome["result"]
    assert result.status == "done" and result.marker["rows"] == result.marker["ok"] == n_images


def test_errors_cross_processes_as_themselves():
    from berg_scale.errors import StorageError
    from berg_scale.io.image_decode import DecodeError
    from berg_scale.io.shard_reader import ShardReadError

    for error in (ShardReadError("s3://b/x.tar", "damaged tar (bad checksum)"), DecodeError("truncated"),
                  StorageError("access denied: check the credentials")):
        error.note = "kept"
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_a_gpu_worker_starts_readers_only_for_its_shards_in_flight():
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import decode_pool_size

    settings = ShardSettings(output="unused", decode_workers="auto", auto_decode_workers=15, shards_in_flight=2)
    assert settings.decode == "cpu"  # the exact path is the default, on a GPU too
    assert decode_pool_size(settings, "cuda:0") == (15, False)
    for nvjpeg in ("gpu", "auto"):  # nvJPEG decodes in the worker; the pool reads
        assert decode_pool_size(dataclasses.replace(settings, decode=nvjpeg), "cuda:0") == (2, True)
    assert decode_pool_size(dataclasses.replace(settings, decode="gpu"), "cpu") == (0, False)
    assert decode_pool_size(dataclasses.replace(settings, decode="gpu", decode_workers=0), "cuda:0") == (0, True)
    assert decode_pool_size(dataclasses.replace(settings, decode_workers=3), "cpu") == (3, False)


def test_blob_spans_keep_empty_images_apart_from_missing_ones():
    from berg_scale.engine.chunk_reading import BlobPayloads

    blob = np.frombuffer(b"abcdef", dtype=np.uint8)
    payloads = BlobPayloads(blob, np.array([0, 2, 2, 2]), np.array([2, -1, 0, 4]))
    assert [None if v is None else bytes(v) for v in payloads.views()] == [b"ab", None, b"", b"cdef"]
    part = payloads[2:4]
    assert len(part) == 2 and [bytes(v) for v in part.views()] == [b"", b"cdef"]
    assert io.BytesIO(payloads.views()[3]).read() == b"cdef"
