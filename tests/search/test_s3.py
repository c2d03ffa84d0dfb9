"""Search over responses in a bucket, writing results and the ANN index to the bucket."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from search_data import MEANS, write_search_data

from berg_scale.cli import main
from berg_scale.io.storage import filesystem_for


@pytest.mark.s3
def test_search_reads_and_writes_s3(s3_server, s3_bucket, capsys):
    pytest.importorskip("faiss")
    storage = s3_server.storage_options()
    data = write_search_data(f"{s3_bucket}/data", storage=storage)
    out = f"{s3_bucket}/search"
    like = f"{data.shards[20]}/{data.keys[20]}"
    args = ["search", "--responses", data.output, "--out", out, "--columns", *MEANS, "--like", like, "-k", "4",
            "--index", "ann", "--endpoint-url", s3_server.endpoint_url]
    assert main(args) == 0, capsys.readouterr().err
    assert main(args) == 0, capsys.readouterr().err
    fs, root = filesystem_for(out, storage)
    summary = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert summary["ann"]["reused"] is True  # the second run loaded the index saved in the bucket
    assert fs.exists(f"{root}/index/index.faiss") and fs.exists(f"{root}/grid.png")
    assert not summary["notes"]  # every grid image was read from the tars in the bucket
    keys = pq.read_table(f"{root}/results.parquet", filesystem=fs).column("key").to_pylist()
    matrix = data.matrix(MEANS)
    usable = data.committed_ok() & np.isfinite(matrix).all(axis=1)
    usable[20] = False
    rows = np.flatnonzero(usable)
    nearest = rows[np.argsort(np.linalg.norm(matrix[rows] - matrix[20], axis=1), kind="stable")][:4]
    assert keys == [data.keys[i] for i in nearest]
