"""Body of one simulated GPU worker for the node-cache test (runs in a spawned process)."""

from __future__ import annotations


def fetch_like_a_worker(remote_url, storage, files, cache_dir, barrier, results) -> None:
    import s3fs

    from berg_scale.testing.env import apply_test_environment

    apply_test_environment()
    received = 0
    original = s3fs.S3FileSystem._cat_file

    async def counting(self, path, *args, **kwargs):
        nonlocal received
        data = await original(self, path, *args, **kwargs)
        received += len(data)
        return data

    s3fs.S3FileSystem._cat_file = counting
    from berg_scale.weights import ensure_local_weights

    barrier.wait(timeout=60)
    local_root = ensure_local_weights(remote_url, files, cache_dir, storage)
    results.put((local_root, received))
