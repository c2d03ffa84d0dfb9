"""Worker throughput on a CUDA machine: CPU vs GPU JPEG decode, fp32 vs bf16.

    python benchmarks/gpu_engine.py [--shards 4] [--images-per-shard 256] [--out results.md]

Runs the engine's per-worker pipeline (`EncoderWorker.process`: tar read-ahead ->
decode -> ModelSet -> Parquet -> commit marker) in this process on `cuda:0`, i.e. exactly
what one Ray actor does on its GPU, without needing Ray installed. Readouts: fsaverage
(k = 3, ViT-B/32 backbone) and fwRF V1 on a synthetic BERG root with random weights;
JPEG shards of 500 x 375 images. Also measures ModelSet.forward alone on decoded batches
(the model-only rate) for each precision. Exits with status 2 and one line when no
CUDA device is present.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--images-per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--decode-threads", type=int, default=max(2, (os.cpu_count() or 4) - 2))
    parser.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "gpu_engine"))
    parser.add_argument("--out", default=None, help="write the markdown table here as well")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_engine: no CUDA device visible; run this on a GPU machine", file=sys.stderr)
        return 2

    from berg_scale.engine.model_factory import ModelSetFactory
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker
    from berg_scale.io.decode import decode_batch_cpu
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.io.shard_reader import read_shard
    from berg_scale.models import ReadoutSpec
    from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root
    from berg_scale.synthetic.shards import write_synthetic_shards

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = work / "berg_root"
    if not (root / ".complete").exists():
        make_synthetic_root(root, models=["fmri-nsd_fsaverage-vit_b_32", "fmri-nsd-fwrf"], subjects=(1,),
                            rois=("V1",), fsaverage_rois=("V1v", "hV4"), fwrf_voxels=64, seed=0)
        (root / ".complete").touch()
    shards_dir = work / f"shards_{args.shards}x{args.images_per_shard}"
    if not shards_dir.exists():
        write_synthetic_shards(str(shards_dir), args.shards, args.images_per_shard, sizes=((500, 375), (375, 500)),
                               formats=("jpg",), seed=1)
    print(f"setup {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    shards = list_shards(str(shards_dir))
    specs = (
        ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "hV4"}, outputs=("responses", "mean")),
        ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"}, outputs=("responses", "mean")),
    )
    n_images = args.shards * args.images_per_shard
    decoded = decode_batch_cpu([s.image for s in read_shard(shards[0].url)], 256, "center").images
    rows = []
    reference = None
    for precision in ("fp32", "bf16"):
        factory = ModelSetFactory(str(root), specs, precision=precision, batch_size=args.batch_size,
                                  backbone_path=str(backbone_file(root)))
        model_rate = None
        variants = [("cpu", 2), ("gpu", 2)] + ([("cpu", 0), ("gpu", 0)] if precision == "fp32" else [])
        for decode, ahead in variants:
            output = work / f"out_{precision}_{decode}_{ahead}"
            shutil.rmtree(output, ignore_errors=True)
            settings = ShardSettings(output=str(output), image_size=256, batch_size=args.batch_size,
                                     decode=decode, decode_threads=args.decode_threads, device="cuda",
                                     decode_ahead=ahead)
            worker = EncoderWorker(0, factory, settings)
            if model_rate is None:
                model_rate = _model_only(worker.model, decoded, args.batch_size)
            worker.process(shards[0], 1)  # warm-up (cuDNN plans, nvJPEG handles); not timed
            shutil.rmtree(output, ignore_errors=True)
            torch.cuda.synchronize()
            began = time.perf_counter()
            seconds = {"read": 0.0, "decode": 0.0, "model": 0.0, "write": 0.0}
            decoded_on: dict[str, int] = {}
            for shard in shards:
                result = worker.process(shard, 1)
                if result.status != "done":
                    raise SystemExit(f"gpu_engine: shard {shard.name} {result.status}: {result.error}")
                for stage in seconds:
                    seconds[stage] += result.marker["seconds"][stage]
                for where, count in result.marker["decoded_on"].items():
                    decoded_on[where] = decoded_on.get(where, 0) + count
            elapsed = time.perf_counter() - began
            rate = n_images / elapsed
            table = _read_means(output)
            if reference is None:
                reference = table
            drift = _max_relative_difference(reference, table)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
            overlap = "overlapped" if ahead else "inline"
            rows.append(f"| {precision} | {decode} ({_fmt(decoded_on)}), {overlap} | {rate:.0f} | {model_rate:.0f} | "
                        f"{rate / model_rate:.2f} | {stages} | {drift:.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
            del worker
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(0)
    lines = [
        f"### GPU worker throughput ({device}, torch {torch.__version__})",
        "",
        f"One worker on cuda:0, {args.shards} shards x {args.images_per_shard} JPEGs (500 x 375 -> 256), "
        f"batch {args.batch_size}, {args.decode_threads} CPU decode threads; readouts fsaverage hV4 "
        f"(ViT-B/32) + fwRF V1. Timed after one warm-up shard; 'overlapped' decodes the next chunk in a second thread while the model runs, 'inline' decodes and runs the model in turn. 'drift' is the largest absolute "
        f"difference of any response against fp32 with CPU decode, in units of that column's standard "
        f"deviation over images.",
        "",
        "| precision | decode | images/s end to end | images/s model only | ratio | stage seconds | drift |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _model_only(model, decoded, batch_size: int) -> float:
    import torch

    images = decoded.cuda()
    model.forward(images[:batch_size])
    torch.cuda.synchronize()
    rates = []
    for _ in range(3):
        began = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model.forward(images[start : start + batch_size])
        torch.cuda.synchronize()
        rates.append(len(images) / (time.perf_counter() - began))
    return statistics.median(rates)


def _read_means(output: Path) -> dict[str, dict[str, "object"]]:
    """Every response column as key -> vector (error rows left out)."""
    import numpy as np
    import pyarrow.parquet as pq

    values: dict[str, dict[str, object]] = {}
    for path in sorted((output / "responses").glob("*.parquet")):
        table = pq.read_table(path)
        keys = table.column("key").to_pylist()
        for name in table.column_names[5:]:
            for key, value in zip(keys, table.column(name).to_pylist()):
                if value is not None:
                    values.setdefault(name, {})[key] = np.atleast_1d(np.asarray(value, dtype=np.float64))
    return values


def _max_relative_difference(reference, table) -> float:
    """Largest |difference| over all columns, in units of the reference column's std."""
    import numpy as np

    worst = 0.0
    for name, by_key in reference.items():
        keys = [key for key in by_key if key in table.get(name, {})]
        if not keys:
            continue
        ref = np.stack([by_key[key] for key in keys])
        other = np.stack([table[name][key] for key in keys])
        scale = float(ref.std()) or 1.0
        worst = max(worst, float(np.abs(other - ref).max()) / scale)
    return worst


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
