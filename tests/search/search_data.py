"""A response output for search tests, with the raw arrays kept for brute-force checks.

N images over 4 shards: a voxel column of one ROI, three ROI-mean columns, one error row,
rows with NaN or infinite responses in one column each, a constant row (undefined
correlation), and one shard written but never committed. Every expectation in the tests
is recomputed from these arrays with plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from berg_scale.io.output_store import OutputStore, read_done_marker, write_done_marker
from berg_scale.io.storage import StorageOptions, join
from berg_scale.io.tar_writer import TarShardWriter
from berg_scale.rnc.synthetic import shard_name, write_synthetic_output
from berg_scale.synthetic.shards import encode, synthetic_image

MODEL = "fmri-nsd-fwrf"
VOXELS = f"{MODEL}/sub-01/V1"
MEANS = tuple(f"{MODEL}/sub-01/{roi}:mean" for roi in ("V1", "V2", "hV4"))
N, WIDTH, N_SHARDS = 400, 12, 4
ERROR_ROW = 7
NAN_ROW, INF_ROW, CONSTANT_ROW = 5, 130, 210  # NaN in VOXELS, inf in MEANS[1], constant VOXELS row
UNCOMMITTED_SHARD = 3


@dataclass(frozen=True)
class SearchData:
    output: str
    images: str  # folder of the input tars
    keys: list[str]
    shards: list[str]  # shard of each image
    positions: np.ndarray  # row of each image in its shard
    voxels: np.ndarray  # (N, WIDTH) float32
    means: dict[str, np.ndarray]  # column -> (N,) float32
    bounds: np.ndarray

    def committed_ok(self) -> np.ndarray:
        """Images a search may read: committed shards, status ok."""
        ok = np.ones(N, dtype=bool)
        ok[ERROR_ROW] = False
        ok[self.bounds[UNCOMMITTED_SHARD]:self.bounds[UNCOMMITTED_SHARD + 1]] = False
        return ok

    def matrix(self, columns) -> np.ndarray:
        parts = [self.voxels if c == VOXELS else self.means[c][:, None] for c in columns]
        return np.concatenate(parts, axis=1).astype(np.float64)


def write_search_data(root: Path | str, seed: int = 0, storage: StorageOptions | None = None) -> SearchData:
    rng = np.random.default_rng(seed)
    voxels = rng.normal(size=(N, WIDTH)).astype(np.float32)
    voxels[NAN_ROW, 3] = np.nan
    voxels[CONSTANT_ROW] = 0.25
    means = {c: rng.normal(size=N).astype(np.float32) for c in MEANS}
    means[MEANS[1]][INF_ROW] = np.inf
    output = join(str(root), "responses")
    keys = write_synthetic_output(output, means, {VOXELS: voxels}, n_shards=N_SHARDS, error_rows=[ERROR_ROW],
                                  uncommitted_shards=[UNCOMMITTED_SHARD], storage=storage)
    bounds = np.linspace(0, N, N_SHARDS + 1).astype(int)
    shards = [shard_name(int(np.searchsorted(bounds, i, side="right") - 1)) for i in range(N)]
    positions = np.array([i - bounds[int(shard)] for i, shard in enumerate(shards)])
    images = join(str(root), "tars")
    store = OutputStore(output, storage)
    for j in range(N_SHARDS):
        url = f"{images}/{shard_name(j)}.tar"
        with TarShardWriter(url, storage) as writer:
            for i in range(bounds[j], bounds[j + 1]):
                pixels = synthetic_image(np.random.default_rng([seed, i]), 40, 40)
                writer.add_sample(keys[i], {"png": encode(pixels, "png")})
        marker = read_done_marker(store, shard_name(j))
        if marker is not None:  # as `generate` does: the marker records the input tar
            write_done_marker(store, shard_name(j), {**marker, "input": url})
    return SearchData(output, images, keys, shards, positions, voxels, means, bounds)
