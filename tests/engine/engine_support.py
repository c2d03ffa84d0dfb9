"""Helpers for engine tests: config builders, reference responses, table checks, and
models that inject faults (worker kill, slow worker) into a run."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg_scale.engine.stand_in_model import FixedCostModel

FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"
IMAGE_SIZE = 64


def readouts_section() -> list[dict]:
    return [
        {"model": FSAVERAGE, "subjects": [1], "rois": ["hV4"], "outputs": ["responses", "mean"]},
        {"model": FWRF, "subjects": [1], "rois": ["V1"], "outputs": ["responses", "mean"]},
    ]


def make_config(
    shards,
    output: str,
    berg_root: str = "/nonexistent-berg-root",
    backbone: str | None = None,
    storage=None,
    **sections,
):
    """A validated RunConfig for tests; keyword sections are merged over the defaults."""
    from berg_scale.config import load_config

    raw = {
        "input": {"shards": shards, "image_size": IMAGE_SIZE},
        "berg_root": berg_root,
        "backbone": backbone,
        "readouts": readouts_section(),
        "output": output,
        "resources": {"workers": 1, "batch_size": 4, "decode_threads": 2, "cpus_per_worker": 1,
                      "startup_timeout_s": 300},
        "retries": {"max_attempts": 2, "backoff_s": 0.2, "speculative_tail": False},
    }
    if storage is not None:
        raw["storage"] = {
            "endpoint_url": storage.endpoint_url,
            "region": storage.region,
            "key": storage.key,
            "secret": storage.secret,
        }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return load_config(raw)


def reference_responses(model, infos, storage=None, image_size=IMAGE_SIZE) -> dict[str, dict[str, np.ndarray]]:
    """column -> key -> response, from the model run directly on each shard's decoded images."""
    import torch

    expected: dict[str, dict[str, np.ndarray]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker with cpus_per_worker=1 (Ray sets OMP_NUM_THREADS)
    try:
        _fill_reference(model, infos, storage, image_size, expected)
    finally:
        torch.set_num_threads(threads)
    return expected


def _fill_reference(model, infos, storage, image_size, expected) -> None:
    from berg_scale.io.decode import decode_batch_cpu
    from berg_scale.io.shard_reader import read_shard

    for info in infos:
        samples = read_shard(info.url, storage)
        result = decode_batch_cpu([s.image for s in samples], image_size, "center")
        ok = result.ok_indices
        if not ok:
            continue
        outputs = model.forward(result.images[ok])
        for name, values in outputs.items():
            for row, index in enumerate(ok):
                expected.setdefault(name, {})[samples[index].key] = np.asarray(values[row])


def output_table(output: str, storage=None):
    from berg_scale.io.results import open_responses

    return open_responses(output, storage).to_table()


def assert_each_key_once(table, infos) -> None:
    keys = table.column("key").to_pylist()
    expected = [key for info in infos for key in info.keys]
    assert sorted(keys) == sorted(expected), "every input key must appear exactly once"
    assert len(set(keys)) == len(keys)


def assert_tables_equal(table, reference) -> None:
    """Same rows (by key) and bit-identical values in every column."""
    left = table.sort_by("key").drop_columns(["shard"]).to_pylist()
    right = reference.sort_by("key").drop_columns(["shard"]).to_pylist()
    assert left == right



def claim(flag_path: str) -> bool:
    """Atomically take a one-shot flag file; exactly one process across the run wins."""
    try:
        os.rename(flag_path, f"{flag_path}.claimed-{os.getpid()}")
        return True
    except FileNotFoundError:
        return False


class KillOnceModel(FixedCostModel):
    """Kills its own process (SIGKILL) on the second batch of a shard, once per run."""

    flag_path: str = ""

    def forward(self, images):
        self.calls += 1
        if self.calls >= 2 and claim(self.flag_path):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        self.calls -= 1
        return super().forward(images)


@dataclass(frozen=True)
class KillOnceFactory:
    flag_path: str
    seconds_per_image: float = 0.0
    needs_weights: bool = field(default=False, init=False)

    def build(self, device):
        model = KillOnceModel(self.seconds_per_image, device=device)
        model.flag_path = self.flag_path
        return model


class SlowModel(FixedCostModel):
    slow_seconds: float = 0.0

    def forward(self, images):
        if self.slow_seconds:
            time.sleep(self.slow_seconds)
        return super().forward(images)


@dataclass(frozen=True)
class SlowOnceFactory:
    """The first worker to start claims the flag and becomes slow (a straggler)."""

    flag_path: str
    slow_seconds: float = 3.0
    seconds_per_image: float = 0.0
    needs_weights: bool = field(default=False, init=False)

    def build(self, device):
        model = SlowModel(self.seconds_per_image, device=device)
        model.slow_seconds = self.slow_seconds if claim(self.flag_path) else 0.0
        return model


@dataclass(frozen=True)
class BrokenFactory:
    """A model that cannot be built (e.g. a corrupt weight file)."""

    needs_weights: bool = field(default=False, init=False)

    def build(self, device):
        from berg_scale.errors import UnsafeFileError

        raise UnsafeFileError("weights_sub-01_roi-V1.pt asks for builtins.eval; refusing to load it")


@dataclass(frozen=True)
class SameModelFactory:
    """Hands every worker the one model instance the test holds (to inspect it after)."""

    model: Any
    needs_weights: bool = field(default=False, init=False)

    def build(self, device):
        return self.model


def in_process_worker(output: str, model: Any):
    """An `EncoderWorker` in the test's process (what one Ray actor runs): CPU, tiny
    images, batches of 2, two decode threads and no decode pool."""
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker

    settings = ShardSettings(output=output, image_size=32, batch_size=2, decode_threads=2, decode_workers=0,
                             device="cpu")
    return EncoderWorker(0, SameModelFactory(model), settings)
