"""Model-only vs end-to-end images/s on one GPU, with the decode pool and nvJPEG decode.

    python benchmarks/gpu_feed.py                 # one H100/H200 with 16 vCPUs: under 8 minutes
    python benchmarks/gpu_feed.py --smoke         # tiny, on the CPU: checks that the script works

For two model sets on a synthetic BERG root (random weights, the real file formats):

  (i)  ViT-B/32 + fsaverage ROI means of 8 subjects (one backbone pass, every subject's
       projection and regression);
  (ii) fwRF, the 8 RNC ROIs of subject 1 (V1, V2, V3, hV4, EBA, FFA-1, PPA, RSC; one CNN
       and read-out per ROI),

and for fp32 and bf16, it measures the model alone (`ModelSet.forward` on decoded batches
already on the device) and one engine worker end to end (`EncoderWorker.process`: tar
read-ahead, decode, model, Parquet, commit marker) with CPU decode through the decode
pool (`decode_workers` processes) and with GPU decode (nvJPEG, batched). 'drift' is the
largest absolute difference of any response from the fp32 + CPU (PIL) decode run of the
same model set, in units of that column's standard deviation over images. For (i) in
bf16 it also measures the model alone with the backbone compiled (`resources.compile`),
when the run has used under `--compile-budget-s` seconds so far. The worker runs
in this process on cuda:0, as one Ray actor would; the decode processes are Ray actors on
this machine. Writes benchmarks/RESULTS-gpu.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from berg_scale.offline_env import apply_offline_environment  # noqa: E402

sys.path.insert(0, str(HERE))
from gpu_engine import _max_relative_difference  # noqa: E402  (same drift measure)
from gpu_engine import _read_means as _read_values  # noqa: E402  (every response column by key)

apply_offline_environment()

FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"
RNC_ROIS = ("V1", "V2", "V3", "hV4", "EBA", "FFA-1", "PPA", "RSC")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed (checks the script)")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--images-per-shard", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="decode processes (default: CPUs - 2)")
    parser.add_argument("--compile-budget-s", type=float, default=300.0,
                        help="measure the compiled backbone only if the run is younger than this")
    parser.add_argument("--work", default=str(HERE / "_work" / "gpu_feed"))
    parser.add_argument("--out", default=str(HERE / "RESULTS-gpu.md"))
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 4
    defaults = {"shards": 2, "images_per_shard": 24, "batch_size": 8} if args.smoke else \
        {"shards": 8, "images_per_shard": 512, "batch_size": 256}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.decode_workers is None:
        args.decode_workers = 1 if args.smoke else max(1, cpus - 2)
    return args


def _setup(args: argparse.Namespace, work: Path) -> tuple[Path, Path, list]:
    from berg_scale.synthetic.berg_root import make_synthetic_root
    from berg_scale.synthetic.shards import write_synthetic_shards

    subjects = (1, 2) if args.smoke else tuple(range(1, 9))
    rois = RNC_ROIS[:2] if args.smoke else RNC_ROIS
    root = work / f"berg_root_{len(subjects)}x{len(rois)}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_root(root, models=[FSAVERAGE, FWRF], subjects=(1,), rois=rois, fsaverage_subjects=subjects,
                            fsaverage_rois=("V1v", "hV4"), fwrf_voxels=64, seed=0)
        (root / ".complete").touch()
    shards = work / f"shards_{args.shards}x{args.images_per_shard}"
    if not (shards / ".complete").exists():
        shutil.rmtree(shards, ignore_errors=True)
        write_synthetic_shards(str(shards), args.shards, args.images_per_shard, sizes=((500, 375), (375, 500)),
                               formats=("jpg",), seed=1)
        (shards / ".complete").touch()
    from berg_scale.models import ReadoutSpec

    sets = [
        ("ViT-B/32 + fsaverage hV4 means, %d subjects" % len(subjects),
         tuple(ReadoutSpec(FSAVERAGE, s, {"roi": "hV4"}, outputs=("mean",)) for s in subjects)),
        ("fwRF, %d RNC ROIs" % len(rois),
         tuple(ReadoutSpec(FWRF, 1, {"roi": roi}, outputs=("responses", "mean")) for roi in rois)),
    ]
    return root, shards, sets


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    import ray
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_feed: no CUDA device visible; run on a GPU machine, or --smoke to check the script on CPU",
              file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    from berg_scale.config import ResourcesConfig, default_of
    from berg_scale.engine.model_factory import ModelSetFactory
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.io.shard_reader import read_shard
    from berg_scale.synthetic.berg_root import backbone_file

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    began_all = time.perf_counter()
    root, shards_dir, sets = _setup(args, work)
    shards = list_shards(str(shards_dir))
    n_images = len(shards) * args.images_per_shard
    decoded = decode_batch_cpu([s.image for s in read_shard(shards[0].url)], 256).images
    print(f"setup {time.perf_counter() - began_all:.1f} s", file=sys.stderr, flush=True)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=args.decode_workers + 1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for title, specs in sets:
            reference = None
            for precision in ("fp32", "bf16"):
                factory = ModelSetFactory(str(root), specs, precision=precision, batch_size=args.batch_size,
                                          backbone_path=str(backbone_file(root)))
                model_rate = None
                for decode in ("cpu", "gpu"):
                    output = work / f"out_{len(rows)}"
                    shutil.rmtree(output, ignore_errors=True)
                    settings = ShardSettings(
                        output=str(output), image_size=256, batch_size=args.batch_size, decode=decode,
                        decode_threads=2, decode_workers=args.decode_workers if decode == "cpu" else 0,
                        device=device)
                    worker = EncoderWorker(0, factory, settings)
                    try:
                        if model_rate is None:
                            model_rate = _model_only(worker.model, decoded, args.batch_size, device)
                        worker.process(shards[0], 1)  # warm-up: cuDNN plans, nvJPEG, pool processes
                        shutil.rmtree(output, ignore_errors=True)
                        rate, seconds, decoded_on = _end_to_end(worker, shards, n_images, cuda)
                    finally:
                        if worker.pool is not None:
                            worker.pool.close()
                    table = _read_values(output)
                    reference = reference or table
                    drift = _max_relative_difference(reference, table)
                    where = ", ".join(f"{k}: {v}" for k, v in sorted(decoded_on.items()))
                    via = f"pool of {args.decode_workers}" if decode == "cpu" else "nvJPEG" if cuda else "CPU fallback"
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
                    rows.append(f"| {title} | {precision} | {decode} ({via}; {where}) | {model_rate:.0f} | {rate:.0f} | "
                                f"{rate / model_rate:.2f} | {drift:.1e} | {stages} |")
                    print(rows[-1], file=sys.stderr, flush=True)
                    del worker
                    if cuda:
                        torch.cuda.empty_cache()
                if precision == "bf16" and title == sets[0][0]:  # (i), the ViT set
                    row = _compiled_model_only(args, factory, decoded, device, model_rate, title,
                                               time.perf_counter() - began_all)
                    if row:
                        rows.append(row)
                        print(row, file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    name = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run, not a measurement)"
    lines = [
        f"### One GPU worker: model only vs end to end ({name}, torch {torch.__version__})",
        "",
        f"{n_images} synthetic JPEGs (500 x 375 and 375 x 500 -> 256) in {len(shards)} shards, batch "
        f"{args.batch_size}, {os.cpu_count()} CPUs, CPU decode by {args.decode_workers} decode processes. Timed after "
        f"one warm-up shard; end to end keeps {default_of(ResourcesConfig, 'shards_in_flight')} shards in "
        f"flight, as a worker actor does. drift: largest |difference| of any response from fp32 + CPU (PIL) decode, in "
        f"standard deviations of the column over images. Total wall time {time.perf_counter() - began_all:.0f} s.",
        "",
        "| model set | precision | decode | model only img/s | end to end img/s | ratio | drift | worker stage seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out and not args.smoke:
        Path(args.out).write_text("# GPU feed results\n\n" + text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _model_only(model, decoded, batch_size: int, device: str) -> float:
    """Images/s of ModelSet.forward on batches already on the device (results to host)."""
    images = decoded.to(device)
    model.forward(images[:batch_size])
    _sync(device)
    rates = []
    for _ in range(3):
        began = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model.forward(images[start : start + batch_size])
        _sync(device)
        rates.append(len(images) / (time.perf_counter() - began))
    return statistics.median(rates)


def _compiled_model_only(args, factory, decoded, device: str, eager_rate: float, title: str,
                         elapsed: float) -> str | None:
    """The model alone with the backbone compiled (compiling happens while it loads)."""
    import dataclasses

    if elapsed > args.compile_budget_s:
        print(f"compiled backbone skipped: {elapsed:.0f} s used > --compile-budget-s", file=sys.stderr)
        return None
    began = time.perf_counter()
    model = dataclasses.replace(factory, compile=True).build(device)
    compile_s = time.perf_counter() - began
    rate = _model_only(model, decoded, args.batch_size, device)
    del model
    return (f"| {title} | bf16, compiled backbone (compile {compile_s:.0f} s) | none (model only) | {rate:.0f} | | "
            f"{rate / eager_rate:.2f} of eager | | |")


def _end_to_end(worker, shards, n_images: int, cuda: bool) -> tuple[float, dict[str, float], dict[str, int]]:
    """All shards through the worker with the default shards in flight, as its Ray actor
    runs them: one `process` call per held shard, each in its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    from berg_scale.config import ResourcesConfig, default_of

    _sync("cuda" if cuda else "cpu")
    began = time.perf_counter()
    seconds = {"read": 0.0, "decode": 0.0, "model": 0.0, "write": 0.0}
    decoded_on: dict[str, int] = {}
    with ThreadPoolExecutor(default_of(ResourcesConfig, "shards_in_flight")) as calls:
        results = list(calls.map(lambda shard: worker.process(shard, 1), shards))
    for shard, result in zip(shards, results):
        if result.status != "done":
            raise SystemExit(f"gpu_feed: shard {shard.name} {result.status}: {result.error}")
        for stage in seconds:
            seconds[stage] += result.marker["seconds"][stage]
        for where, count in result.marker["decoded_on"].items():
            decoded_on[where] = decoded_on.get(where, 0) + count
    return n_images / (time.perf_counter() - began), seconds, decoded_on


if __name__ == "__main__":
    sys.exit(main())
