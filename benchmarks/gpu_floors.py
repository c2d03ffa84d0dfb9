"""The rate of each stage alone, so an end-to-end figure can be set against its floors.

End to end can run no faster than its slowest stage: reading tars, decoding (the CPU
pool, or nvJPEG with its header probe on the CPU), the host-to-device copy of decoded
pixels, and the model (backbone plus read-outs). `gpu_feed.py` measures each here on the
same images and prints them beside its end-to-end rows, naming the lowest.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass
class Floor:
    stage: str
    images_per_s: float | None  # None: not measured (says why in `note`)
    note: str = ""


def _median_rate(n_images: int, run: Callable[[], None], repeats: int = 3) -> float:
    return _rate_and_cpu(n_images, run, repeats)[0]


def _rate_and_cpu(n_images: int, run: Callable[[], None], repeats: int = 3,
                  warm_up: bool = True) -> tuple[float, float]:
    """(median images/s, this process's CPU microseconds per image over the timed runs)."""
    if warm_up:
        run()  # caches, kernels, processes
    rates = []
    cpu_started = time.process_time()
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        rates.append(n_images / (time.perf_counter() - began))
    return statistics.median(rates), 1e6 * (time.process_time() - cpu_started) / (repeats * n_images)


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def tar_read(urls: Sequence[str]) -> Floor:
    """Images/s of reading the tars into samples (local disk here, page cache warm)."""
    from berg_scale.io.shard_reader import read_shard

    samples = [sample for url in urls for sample in read_shard(url)]
    size = sum(len(sample.image or b"") for sample in samples)
    rate, cpu = _rate_and_cpu(len(samples), lambda: [read_shard(url) for url in urls])
    return Floor("tar read in the worker", rate,
                 f"{size * rate / len(samples) / 2**20:.0f} MiB/s of image bytes; worker CPU {cpu:.0f} µs/image")


def pool_tar_read(urls: Sequence[str], batch_size: int, max_pixels: int) -> Floor:
    """Tars read, and headers checked, by one decode process, as a worker with a pool
    receives them (the blob of each chunk mapped and cut into views, as nvJPEG gets them)."""
    from berg_scale.engine.chunk_reading import chunks_read_in_pool
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions

    pool = DecodePool(1, DecodeOptions(256))
    try:
        def run() -> int:
            n_images = 0
            for url in urls:
                for chunk in chunks_read_in_pool(pool, url, None, batch_size, max_pixels):
                    chunk.payload_list()
                    n_images += len(chunk.rows)
            return n_images

        rate, cpu = _rate_and_cpu(run(), run, warm_up=False)  # the counting run warmed up
    finally:
        pool.close()
    return Floor("tar read + header check in one pool process", rate, f"worker CPU {cpu:.0f} µs/image")


def cpu_threads(chunks: Sequence[list[bytes]], size: int, threads: int) -> Floor:
    """Pillow in threads of one process (the in-process decode, without a pool)."""
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu

    with ThreadPoolExecutor(threads) as executor:
        rate = _median_rate(sum(map(len, chunks)), lambda: [decode_batch_cpu(c, size, executor=executor)
                                                            for c in chunks])
    return Floor(f"CPU decode, {threads} thread(s) in one process", rate)


def cpu_pool(chunks: Sequence[list[bytes]], size: int, workers: int) -> Floor:
    """The decode pool alone: `workers` processes, chunks handed out as a worker does."""
    from berg_scale.engine.decode_pool import DecodePool
    from berg_scale.io.image_decode import DecodeOptions

    pool = DecodePool(workers, DecodeOptions(size))
    try:
        rate = _median_rate(sum(map(len, chunks)),
                            lambda: [None for _ in pool.decoded((i, list(c)) for i, c in enumerate(chunks))])
    finally:
        pool.close()
    return Floor(f"CPU decode pool, {workers} process(es)", rate)


def nvjpeg(chunks: Sequence[list[bytes]], size: int, device: Any) -> Floor:
    """Batched nvJPEG decode + GPU resize, headers probed on the CPU, as the worker does."""
    import torch

    from berg_scale.io.batch_decode_gpu import decode_jpeg_batch_gpu

    if not torch.cuda.is_available():
        return Floor("nvJPEG decode", None, "no CUDA device")

    def run() -> None:
        for chunk in chunks:
            decode_jpeg_batch_gpu(chunk, device, size)
        _sync(device)

    return Floor("nvJPEG decode (batched)", _median_rate(sum(map(len, chunks)), run))


def host_to_device(batch_size: int, size: int, device: Any) -> Floor:
    """uint8 (B, 3, size, size) through pinned memory to the GPU: the CPU-decode path's copy."""
    import torch

    if not str(device).startswith("cuda"):
        return Floor("host -> GPU copy", None, "no CUDA device")
    staging = torch.empty((batch_size, 3, size, size), dtype=torch.uint8, pin_memory=True)
    repeats = 20

    def run() -> None:
        for _ in range(repeats):
            staging.to(device, non_blocking=True)
        _sync(device)

    rate = _median_rate(batch_size * repeats, run)
    return Floor("host -> GPU copy (pinned uint8)", rate, f"{rate * 3 * size * size / 1e9:.1f} GB/s")


def backbone(model: Any, batch_size: int, device: Any) -> Floor:
    """The ViT backbone alone, in the set's precision, on prepared pixels already on the device."""
    import torch

    group = next((g for g in model.groups if hasattr(g, "backbone")), None)
    if group is None:
        return Floor("ViT backbone alone", None, "no ViT read-out in this set")
    pixels = torch.randn((batch_size, 3, 224, 224), device=device)

    def run() -> None:
        with torch.no_grad(), group._precision():
            group.backbone.warm_up(pixels)  # the uncounted pass: same kernels
        _sync(device)

    return Floor(f"ViT backbone alone ({model.precision})", _median_rate(batch_size, run))


def limiting(floors: Sequence[Floor]) -> Floor | None:
    measured = [f for f in floors if f.images_per_s is not None]
    return min(measured, key=lambda f: f.images_per_s or 0.0) if measured else None


def floor_table(floors: Sequence[Floor]) -> list[str]:
    rows = ["| stage alone | img/s | note |", "| --- | --- | --- |"]
    for floor in floors:
        rate = f"{floor.images_per_s:.0f}" if floor.images_per_s is not None else "not measured"
        rows.append(f"| {floor.stage} | {rate} | {floor.note} |")
    return rows
