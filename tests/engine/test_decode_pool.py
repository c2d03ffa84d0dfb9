"""Decoding in separate processes: same rows, same order, same bits as in-process decoding."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from engine_support import (
    assert_each_key_once,
    assert_tables_equal,
    make_config,
    output_table,
)


def _run(config, factory=None):
    from berg_scale.engine.run import run_generation

    return run_generation(config, show_progress=False, model_factory=factory, log=lambda message: None)


@pytest.mark.slow
def test_pool_output_is_bit_identical_to_in_process_decoding(
    ray_session, tmp_path, engine_berg_root, engine_backbone
):
    """Real models, exact fp32 path: the pool also makes fwRF's 227 px copy (CPU resize)."""
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 2, 7, seed=11, formats=("jpg", "png", "webp"),
                                   defects={"truncated_jpeg": 1, "not_image": 1})
    tables = {}
    for workers in (0, 2):
        output = str(tmp_path / f"out-{workers}")
        config = make_config(str(tmp_path / "in"), output, berg_root=engine_berg_root, backbone=engine_backbone,
                             resources={"decode_workers": workers, "batch_size": 3},
                             retries={"error_rate_threshold": 1.0})
        result = _run(config)
        assert result.exit_code == 0
        tables[workers] = output_table(output)
        for name in ("shard-000000", "shard-000001"):  # tar order within each file
            rows = pq.read_table(f"{output}/responses/{name}.parquet").column("index").to_pylist()
            assert rows == sorted(rows)
    assert_each_key_once(tables[2], infos)
    assert_tables_equal(tables[2], tables[0])
    statuses = tables[2].column("status").to_pylist()
    assert statuses.count("error") == 2


def test_pool_with_the_stand_in_model_sees_every_pixel_in_order(ray_session, tmp_path, stand_in_factory):
    from berg_scale.engine.stand_in_model import FixedCostModel
    from berg_scale.io.decode import decode_batch_cpu
    from berg_scale.io.shard_reader import read_shard
    from berg_scale.synthetic.shards import write_synthetic_shards

    infos = write_synthetic_shards(str(tmp_path / "in"), 3, 9, seed=4, sizes=((40, 30), (30, 50)))
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output,
                         resources={"decode_workers": 2, "batch_size": 2, "decode_in_flight": 3})
    result = _run(config, stand_in_factory)
    assert result.exit_code == 0
    table = output_table(output)
    assert_each_key_once(table, infos)
    column = "stand-in/sub-01/all"
    by_key = dict(zip(table.column("key").to_pylist(), table.column(column).to_pylist()))
    model = FixedCostModel()
    for info in infos:
        samples = read_shard(info.url)
        decoded = decode_batch_cpu([s.image for s in samples], 64)
        expected = model.forward(decoded.images)[column]
        for sample, row in zip(samples, expected):
            np.testing.assert_array_equal(np.asarray(by_key[sample.key], dtype=np.float32), row)


def test_a_pool_that_cannot_start_names_the_setting(ray_session):
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.errors import BergScaleError
    from berg_scale.io.image_decode import DecodeOptions

    with pytest.raises(BergScaleError, match="resources.decode_workers"):
        DecodePool(64, DecodeOptions(size=16), start_timeout_s=2)


def test_backpressure_bounds_the_chunks_in_flight(ray_session):
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.synthetic.shards import encode, synthetic_image

    image = encode(synthetic_image(np.random.default_rng(0), 20, 20), "png")
    handed_out = []

    def jobs():
        for index in range(12):
            handed_out.append(index)
            yield index, [image, None]

    pool = DecodePool(1, DecodeOptions(size=8), in_flight=2)
    try:
        seen = []
        for tag, (arrays,) in pool.decoded(jobs()):
            assert len(handed_out) - len(seen) <= 2  # never more than in_flight ahead
            seen.append(tag)
            assert arrays.images.shape == (1, 3, 8, 8) and arrays.errors[1] == "no image data"
        assert seen == list(range(12))
    finally:
        pool.close()


def test_auto_sizing_uses_the_gpu_nodes_cpus():
    from berg_scale.engine.decode_pool import resolve_decode_workers

    assert resolve_decode_workers("auto", uses_gpus=True, cpus_per_worker=1, gpus_per_worker=1,
                                  node_cpus_per_gpu=16) == 15
    assert resolve_decode_workers("auto", uses_gpus=False, cpus_per_worker=1, gpus_per_worker=0,
                                  node_cpus_per_gpu=None) == 0
    assert resolve_decode_workers(3, uses_gpus=False, cpus_per_worker=1, gpus_per_worker=0,
                                  node_cpus_per_gpu=None) == 3


def test_a_chunk_is_cut_into_one_part_per_process_and_put_back_in_order(ray_session):
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.io.image_decode import DecodeOptions
    from berg_scale.synthetic.shards import encode, synthetic_image

    rng = np.random.default_rng(2)
    chunk = [encode(synthetic_image(rng, 30, 20), "png") for _ in range(17)]
    chunk[5] = b"junk"
    pool = DecodePool(2, DecodeOptions(size=12))
    try:
        ((tag, parts),) = list(pool.decoded([("only", chunk)]))
    finally:
        pool.close()
    assert tag == "only" and [len(part.errors) for part in parts] == [9, 8]
    expected = decode_batch_cpu(chunk, 12)
    assert [e for part in parts for e in part.errors] == expected.errors
    images = np.concatenate([part.images for part in parts])
    np.testing.assert_array_equal(images, expected.images[expected.ok_indices].numpy())
