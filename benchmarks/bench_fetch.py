"""Weight fetching throughput against a loopback S3 server: chunk size, resume, node cache.

Starts the same SeaweedFS server the tests use, uploads one file of --mib MiB in BERG's
layout, and times (1) a full fetch per chunk size, (2) a resume from a half-written part
file, (3) N processes calling `ensure_local_weights` at once (one download, N-1 waits).
Loopback numbers show per-request overhead and the cost of hashing and writing, not
what a cloud network gives; on AWS, expect the bucket's per-connection rate instead.

    python benchmarks/bench_fetch.py --mib 64 --markdown benchmarks/RESULTS-cluster.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

from berg_scale.testing.env import apply_test_environment

apply_test_environment()

REL = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/encoding_models_weights/weights_subject-01.npy"


def _worker(url, storage, cache_dir, barrier, results) -> None:
    apply_test_environment()
    from berg_scale.weights import ensure_local_weights

    barrier.wait(timeout=120)
    start = time.perf_counter()
    ensure_local_weights(url, [REL], cache_dir, storage)
    results.put(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--cases", nargs="+", default=["1x1", "8x1", "8x4", "32x1"],
                        help="CHUNK_MIBxRANGES_IN_FLIGHT")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args()

    from berg_scale.io.storage import filesystem_for
    from berg_scale.testing.s3_server import start_test_server
    from berg_scale.weights.fetch import PART_SUFFIX, fetch_files

    server = start_test_server()
    work = tempfile.mkdtemp(prefix="bench-fetch-")
    try:
        os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint_url
        storage = server.storage_options()
        server.client().create_bucket(Bucket="bench")
        data = os.urandom(args.mib << 20)
        server.client().put_object(Bucket="bench", Key=REL, Body=data)
        url = "s3://bench"
        fs, root = filesystem_for(url, storage)
        size_mb = len(data) / 1e6
        lines = [
            f"Fetching one {args.mib} MiB file from SeaweedFS on loopback ({os.cpu_count()} cores, "
            f"{platform.machine()}, Python {platform.python_version()}; load average before the run "
            f"{os.getloadavg()[0]:.1f}):",
            "",
            "| case | seconds | MB/s |",
            "|---|---:|---:|",
        ]
        for case in args.cases:
            chunk_mib, concurrency = (int(v) for v in case.split("x"))
            dest = os.path.join(work, f"full-{case}")
            start = time.perf_counter()
            fetch_files(fs, root, [REL], dest, progress=False, chunk_bytes=chunk_mib << 20,
                        concurrency=concurrency)
            seconds = time.perf_counter() - start
            lines.append(f"| full fetch, {chunk_mib} MiB ranges, {concurrency} in flight (sha256 on the fly) "
                         f"| {seconds:.2f} | {size_mb / seconds:,.0f} |")
            print(lines[-1], flush=True)

        dest = os.path.join(work, "resume")
        os.makedirs(os.path.dirname(os.path.join(dest, REL)), exist_ok=True)
        with open(os.path.join(dest, REL) + PART_SUFFIX, "wb") as handle:
            handle.write(data[: len(data) // 2])
        start = time.perf_counter()
        report = fetch_files(fs, root, [REL], dest, progress=False)
        seconds = time.perf_counter() - start
        moved = report.bytes_transferred / 1e6
        lines.append(f"| resume from a half-written part ({moved:,.0f} MB moved) | {seconds:.2f} | {moved / seconds:,.0f} |")
        print(lines[-1], flush=True)

        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(args.workers), ctx.Queue()
        cache_dir = os.path.join(work, "cache")
        processes = [ctx.Process(target=_worker, args=(url, storage, cache_dir, barrier, results))
                     for _ in range(args.workers)]
        for process in processes:
            process.start()
        times = sorted(results.get(timeout=600) for _ in processes)
        for process in processes:
            process.join()
        lines.append(
            f"| node cache, {args.workers} workers at once (one download; slowest worker) | "
            f"{times[-1]:.2f} | {size_mb / times[-1]:,.0f} |"
        )
        print(lines[-1], flush=True)
        text = "\n".join(lines)
        print(text)
        if args.markdown:
            with open(args.markdown, "a") as handle:
                handle.write(text + "\n")
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
