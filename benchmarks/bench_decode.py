"""CPU decode + resize throughput (images/s) per thread count, and shard read speed.

Images are synthetic photographs-like pictures (gradients, shapes, noise) at typical
dataset sizes, encoded once; the timed part is `decode_and_prepare` only, run in a
thread pool the way the engine runs it. Pillow releases the GIL while decoding and
resampling, so throughput should grow with threads up to the core count.

    python benchmarks/bench_decode.py --threads 1 2 --seconds 3 --markdown out.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from berg_scale.io.decode import decode_and_prepare
from berg_scale.io.shard_reader import iter_shard_samples
from berg_scale.synthetic.shards import encode, synthetic_image, write_synthetic_shards

CASES = [
    # (label, format, width, height, decode options)
    ("JPEG 500x375 (ImageNet-like)", "jpg", 500, 375, {}),
    ("JPEG 500x375, Pillow decode only (baseline)", "jpg", 500, 375, {"baseline": True}),
    ("JPEG 500x375, jpeg_draft", "jpg", 500, 375, {"jpeg_draft": True}),
    ("JPEG 1600x1200 (photo)", "jpg", 1600, 1200, {}),
    ("JPEG 1600x1200, jpeg_draft", "jpg", 1600, 1200, {"jpeg_draft": True}),
    ("PNG 425x425 (NSD-like)", "png", 425, 425, {}),
    ("WebP 512x512", "webp", 512, 512, {}),
]


def _images(fmt: str, width: int, height: int, count: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [encode(synthetic_image(rng, width, height), fmt) for _ in range(count)]


def _pillow_only(data: bytes) -> None:
    """Baseline: what Pillow alone needs to decode the image (no checks, no resize)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def measure(
    images: list[bytes], threads: int, size: int, seconds: float, options: dict
) -> tuple[float, float]:
    """(images per wall-clock second, CPU milliseconds per image) over `seconds`.

    CPU time per image barely depends on what else the machine runs, so it is the
    figure to compare between runs on a shared machine; wall-clock rates show scaling.
    """
    def work(data: bytes) -> None:
        if options.get("baseline"):
            _pillow_only(data)
        else:
            decode_and_prepare(data, size, "center", **options)

    batch = images * 4
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, images))  # warm-up
        done, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            list(pool.map(work, batch))
            done += len(batch)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    return done / wall, 1000 * cpu / done


def measure_shard_read(seconds: float) -> tuple[float, float]:
    """(MB/s, samples/s) of iter_shard_samples on a local shard, bytes only (no decode)."""
    with tempfile.TemporaryDirectory() as tmp:
        (info,) = write_synthetic_shards(
            tmp, 1, 200, sizes=((500, 375),), formats=("jpg",), seed=1
        )
        size_mb = os.path.getsize(info.url) / 1e6
        reads, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in iter_shard_samples(info.url):
                pass
            reads += 1
        elapsed = time.perf_counter() - start
    return reads * size_mb / elapsed, reads * 200 / elapsed


def measure_header_reads(seconds: float) -> tuple[float, float]:
    """(Pillow's probe, jpeg_header's scan) in CPU microseconds per 500x375 JPEG: the
    GPU decode path reads every header on the CPU before nvJPEG decodes."""
    from berg_scale.io.image_decode import DEFAULT_MAX_PIXELS, probe
    from berg_scale.io.jpeg_header import scan_jpeg_header

    images = _images("jpg", 500, 375, count=64)
    costs = []
    for read in (probe, scan_jpeg_header):
        done, cpu_start, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            for data in images:
                read(data, DEFAULT_MAX_PIXELS)
            done += len(images)
        costs.append(1e6 * (time.process_time() - cpu_start) / done)
    return costs[0], costs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args()

    header = (
        "| input | CPU ms/image | "
        + " | ".join(f"img/s, {t} thread(s)" for t in args.threads)
        + " |"
    )
    lines = [
        f"CPU decode + centre crop + bilinear resize to {args.size}x{args.size}, images/s "
        f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; load average before the run "
        f"{os.getloadavg()[0]:.1f}):",
        "",
        header,
        "|---|---:|" + "---:|" * len(args.threads),
    ]
    for label, fmt, width, height, options in CASES:
        images = _images(fmt, width, height)
        results = [measure(images, t, args.size, args.seconds, options) for t in args.threads]
        cpu_ms = results[0][1] if args.threads[0] == 1 else min(r[1] for r in results)
        rates = " | ".join(f"{rate:,.0f}" for rate, _ in results)
        lines.append(f"| {label} | {cpu_ms:.2f} | {rates} |")
        print(lines[-1], flush=True)
    mb_s, samples_s = measure_shard_read(args.seconds)
    probe_us, scan_us = measure_header_reads(args.seconds)
    lines += [
        "",
        f"Shard reading (local disk, read-ahead on, no decode): {mb_s:,.0f} MB/s, "
        f"{samples_s:,.0f} samples/s.",
        "",
        f"Header read before GPU decode (500x375 JPEG, CPU us/image): Pillow {probe_us:.1f}, "
        f"jpeg_header {scan_us:.1f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
