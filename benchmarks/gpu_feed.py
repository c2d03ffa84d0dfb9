"""Model-only vs end-to-end images/s on one GPU, with the decode pool and nvJPEG decode.

    python benchmarks/gpu_feed.py                 # one H100/H200 with 16 vCPUs: under 8 minutes
    python benchmarks/gpu_feed.py --smoke         # tiny, on the CPU: checks that the script works
    bash benchmarks/gpu_run.sh RESULTS_DIR        # the same, on a GPU machine without package access

For two model sets on a synthetic BERG root (random weights, the real file formats):

  (i)  ViT-B/32 + fsaverage ROI means of 8 subjects (one backbone pass, every subject's
       projection and regression);
  (ii) fwRF, the 8 RNC ROIs of subject 1 (V1, V2, V3, hV4, EBA, FFA-1, PPA, RSC; one CNN
       and read-out per ROI),

and for fp32 and bf16, it measures the model alone (`ModelSet.forward` on decoded batches
already on the device) and one engine worker end to end (`EncoderWorker.process`: tar
read-ahead, decode, model, Parquet, commit marker) with CPU decode through the decode
pool (`decode_workers` processes) and with GPU decode (nvJPEG, batched; the tars read and
the headers checked by `shards_in_flight` pool processes, as the engine's GPU-decode
worker does, so the worker's own process only decodes and runs the model). 'drift' is the
largest absolute difference of any response from the fp32 + CPU (PIL) decode run of the
same model set, in units of that column's standard deviation over images. For (i) in
bf16 it also measures the model alone with the backbone compiled (`resources.compile`),
and on CUDA also compiled with CUDA graphs (torch.compile's reduce-overhead mode), when
the run has used under `--compile-budget-s` seconds so far. Each stage is also measured
alone (`gpu_floors.py`), and the slowest on the bf16 ViT path is named. The worker runs
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    parser.add_argument("--out", default=None,
                        help="results file, rewritten after each row (default benchmarks/RESULTS-gpu.md; none with --smoke)")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 4
    defaults = {"shards": 2, "images_per_shard": 24, "batch_size": 8} if args.smoke else \
        {"shards": 8, "images_per_shard": 512, "batch_size": 256}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None and not args.smoke:
        args.out = str(HERE / "RESULTS-gpu.md")
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
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_feed: no CUDA device visible; run on a GPU machine, or --smoke to check the script on CPU",
              file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    from berg_scale.engine.model_factory import ModelSetFactory
    from berg_scale.io.batch_decode_cpu import decode_batch_cpu
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.io.shard_reader import read_shard
    from berg_scale.synthetic.berg_root import backbone_file

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args, torch.cuda.get_device_name(0) if cuda else None, torch.__version__)
    root, shards_dir, sets = _setup(args, work)
    report.vit_title = sets[0][0]
    shards = list_shards(str(shards_dir))
    n_images = len(shards) * args.images_per_shard
    payloads = [[s.image for s in read_shard(shard.url)] for shard in shards[:2]]
    chunks = [part[i : i + args.batch_size] for part in payloads for i in range(0, len(part), args.batch_size)]
    decoded = decode_batch_cpu(payloads[0], 256).images
    print(f"setup {report.elapsed():.1f} s", file=sys.stderr, flush=True)
    report.pool_problem = _start_ray(args.decode_workers)
    try:
        report.floors.update(_decode_floors(args, [s.url for s in shards[:2]], chunks, device, report.pool_problem))
        report.write()
        for title, specs in sets:
            reference = None
            for precision in ("fp32", "bf16"):
                factory = ModelSetFactory(str(root), specs, precision=precision, batch_size=args.batch_size,
                                          backbone_path=str(backbone_file(root)))
                for decode in ("cpu", "gpu"):
                    label = f"| {title} | {precision} | {decode}"
                    try:
                        run = _measure(args, report, factory, shards, decoded, decode, device,
                                       work / f"out_{len(report.rows)}", n_images, (title, precision))
                    except Exception as exc:  # noqa: BLE001 - keep the other rows of a one-shot run
                        report.add(f"{label} | failed: {_one_line(exc)} | | | | |")
                        continue
                    finally:
                        if cuda:
                            torch.cuda.empty_cache()
                    if (precision, decode) == ("fp32", "cpu"):
                        reference = run.table  # the exact path: what drift is measured from
                    model_rate = report.model_rates[(title, precision)]
                    drift = (f"{_max_relative_difference(reference, run.table):.1e}" if reference is not None
                             else "no fp32 + CPU row")
                    report.add(f"{label} ({run.via}) | {model_rate:.0f} | {run.rate:.0f} | "
                               f"{run.rate / model_rate:.2f} | {drift} | {run.stages} |")
                    report.end_to_end[(title, precision, decode)] = run.rate
                if precision == "bf16" and title == sets[0][0]:  # (i), the ViT set
                    try:
                        compiled = _compiled_model_only(args, factory, decoded, device,
                                                        report.model_rates.get((title, precision)), title,
                                                        report.elapsed)
                    except Exception as exc:  # noqa: BLE001
                        compiled = [f"| {title} | bf16, compiled backbone | failed: {_one_line(exc)} | | | | |"]
                    for row in compiled:
                        report.add(row)
    finally:
        _stop_ray()
    print(report.write(final=True))
    return 0


class Report:
    """Everything measured so far, written out after each row: a run cut short keeps it."""

    def __init__(self, args: argparse.Namespace, gpu: str | None, torch_version: str) -> None:
        self.args = args
        self.began = time.perf_counter()
        self.gpu = gpu
        self.torch_version = torch_version
        self.rows: list[str] = []
        self.floors: dict = {}  # what was measured alone ("read", "pool", "nvjpeg", ...) -> Floor
        self.model_rates: dict[tuple[str, str], float] = {}
        self.end_to_end: dict[tuple[str, str, str], float] = {}
        self.pool_problem: str | None = None
        self.vit_title: str | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def add(self, row: str) -> None:
        self.rows.append(row)
        print(row, file=sys.stderr, flush=True)
        self.write()

    def write(self, final: bool = False) -> str:
        from gpu_floors import floor_table

        from berg_scale.config import ResourcesConfig, default_of

        args = self.args
        name = self.gpu or "CPU (smoke run, not a measurement)"
        decode = (f"CPU decode by {args.decode_workers} decode processes" if not self.pool_problem else
                  f"CPU decode by {args.decode_workers} thread(s) in the worker (no decode pool: {self.pool_problem})")
        n_images = args.shards * args.images_per_shard
        lines = [
            f"### One GPU worker: model only vs end to end ({name}, torch {self.torch_version})",
            "",
            (f"{n_images} synthetic JPEGs (500 x 375 and 375 x 500 -> 256) in {args.shards} shards, batch "
            f"{args.batch_size}, {os.cpu_count()} CPUs, {decode}. Timed after one warm-up shard; end to end "
            f"keeps {default_of(ResourcesConfig, 'shards_in_flight')} shards in flight, as a worker actor does. "
            "drift: largest |difference| of any response from fp32 + CPU (PIL) decode, in standard deviations "
            f"of the column over images. Wall time so far {self.elapsed():.0f} s"
            + ("." if final else " (the run had not finished when this was written).")),
            "",
            "| model set | precision | decode | model only img/s | end to end img/s | ratio | drift | stages (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *self.rows,
            "",
            "#### Each stage alone (same images)",
            "",
            *floor_table([*self.floors.values(), *self._model_floors()]),
            "",
            *self._verdict(),
        ]
        text = "\n".join(lines)
        if args.out:
            Path(args.out).write_text("# GPU feed results\n\n" + text + "\n")
        return text

    def _model_floors(self) -> list:
        from gpu_floors import Floor

        return [Floor(f"model alone: {title}, {precision}", rate)
                for (title, precision), rate in self.model_rates.items()]

    def _verdict(self) -> list[str]:
        """The ViT set in bf16: its best end to end against the lowest floor on its path."""
        from gpu_floors import limiting

        title = self.vit_title
        if title is None or (title, "bf16") not in self.model_rates:
            return []
        from gpu_floors import Floor

        lines = []
        model = Floor(f"model alone: {title}, bf16", self.model_rates[(title, "bf16")])
        cpu_decoder = "threads" if self.pool_problem else "pool"  # what the worker decoded with
        reader = "read" if self.pool_problem else "pool read"  # where the worker's tars were read
        for decode, stages in (("gpu", (reader, "nvjpeg")), ("cpu", (reader, cpu_decoder, "h2d"))):
            rate = self.end_to_end.get((title, "bf16", decode))
            if rate is None:
                continue
            low = limiting([*(self.floors[s] for s in stages if s in self.floors), model])
            if low is None:
                continue
            lines.append(f"- {title}, bf16, {decode} decode: end to end {rate:.0f} img/s "
                         f"({'meets' if rate >= 10_000 else 'below'} 10,000); the lowest stage on its path is "
                         f"{low.stage} at {low.images_per_s:.0f} img/s, and end to end reaches "
                         f"{rate / (low.images_per_s or 1):.2f} of it.")
        return ["#### What limits end to end", "", *lines, ""] if lines else []


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}".replace("|", "/")


def _start_ray(decode_workers: int) -> str | None:
    """Start a local Ray for the decode pool; on failure, say why (the run goes on without it)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=decode_workers + 1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - a machine without Ray still measures the rest
        print(f"gpu_feed: no decode pool ({_one_line(exc)})", file=sys.stderr)
        return _one_line(exc)
    return None


def _stop_ray() -> None:
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001 - never started
        pass


def _decode_floors(args, urls, chunks, device: str, pool_problem: str | None) -> dict:
    """The stages before the model, each alone, by the name the verdict looks them up by."""
    import gpu_floors

    from berg_scale.io.image_decode import DecodeOptions

    measures = {
        "read": lambda: gpu_floors.tar_read(urls),
        "pool read": lambda: (gpu_floors.Floor("tar read in a pool process", None, pool_problem) if pool_problem
                              else gpu_floors.pool_tar_read(urls, args.batch_size, DecodeOptions(256).max_pixels)),
        "threads": lambda: gpu_floors.cpu_threads(chunks, 256, args.decode_workers),
        "pool": lambda: (gpu_floors.Floor("CPU decode pool", None, pool_problem) if pool_problem else
                         gpu_floors.cpu_pool(chunks, 256, args.decode_workers)),
        "nvjpeg": lambda: gpu_floors.nvjpeg(chunks, 256, device),
        "h2d": lambda: gpu_floors.host_to_device(args.batch_size, 256, device),
    }
    floors = {}
    for name, measure in measures.items():
        try:
            floors[name] = measure()
        except Exception as exc:  # noqa: BLE001
            floors[name] = gpu_floors.Floor(name, None, f"failed: {_one_line(exc)}")
        print(f"floor: {floors[name]}", file=sys.stderr, flush=True)
    return floors


@dataclass
class EndToEnd:
    rate: float
    stages: str
    via: str
    table: dict


def _measure(args, report: Report, factory, shards, decoded, decode: str, device: str, output: Path,
             n_images: int, key: tuple[str, str]) -> EndToEnd:
    """One worker end to end over all shards; the model alone too, the first time for this key."""
    import gpu_floors

    from berg_scale.config import ResourcesConfig, default_of
    from berg_scale.engine.shard_pipeline import ShardSettings
    from berg_scale.engine.worker import EncoderWorker

    shutil.rmtree(output, ignore_errors=True)
    pool = decode == "cpu" and not report.pool_problem
    readers = decode == "gpu" and not report.pool_problem  # the engine's pool on a GPU-decode worker
    shards_in_flight = default_of(ResourcesConfig, "shards_in_flight")
    settings = ShardSettings(
        output=str(output), image_size=256, batch_size=args.batch_size, decode=decode,
        decode_threads=2 if pool or decode == "gpu" else args.decode_workers,
        decode_workers=args.decode_workers if pool else shards_in_flight if readers else 0,
        shards_in_flight=shards_in_flight, device=device)
    worker = EncoderWorker(0, factory, settings)
    try:
        if key not in report.model_rates:
            report.model_rates[key] = _model_only(worker.model, decoded, args.batch_size, device)
            floor = gpu_floors.backbone(worker.model, args.batch_size, device)
            if floor.images_per_s is not None:
                report.floors[f"backbone {key[1]}"] = floor
        worker.process(shards[0], 1)  # warm-up: cuDNN plans, nvJPEG, pool processes
        shutil.rmtree(output, ignore_errors=True)
        rate, seconds, decoded_on = _end_to_end(worker, shards, n_images, device.startswith("cuda"))
    finally:
        if worker.pool is not None:
            worker.pool.close()
    where = ", ".join(f"{k}: {v}" for k, v in sorted(decoded_on.items()))
    if decode == "cpu":
        via = f"pool of {args.decode_workers}" if pool else f"{args.decode_workers} thread(s)"
    else:
        via = "nvJPEG" if device.startswith("cuda") else "CPU fallback"
        if worker.pool is not None:
            via += f", tars read by {worker.pool.count} pool processes"
    stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    return EndToEnd(rate, stages, f"{via}; {where}", _read_values(output))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _model_only(model, decoded, batch_size: int, device: str) -> float:
    """Images/s of the model on batches already on the device, results to the host, each
    batch launched before the previous one's results are collected (as the engine does)."""
    images = decoded.to(device)

    def run() -> None:
        previous = None
        for start in range(0, len(images), batch_size):
            launched = model.forward_async(images[start : start + batch_size])
            if previous is not None:
                previous.result()
            previous = launched
        if previous is not None:
            previous.result()

    run()
    _sync(device)
    rates = []
    for _ in range(3):
        began = time.perf_counter()
        run()
        _sync(device)
        rates.append(len(images) / (time.perf_counter() - began))
    return statistics.median(rates)


def _compiled_model_only(args, factory, decoded, device: str, eager_rate: float | None, title: str,
                         elapsed: Callable[[], float]) -> list[str]:
    """The model alone with the backbone compiled (compiling happens while it loads) and,
    on CUDA, compiled with CUDA graphs too (torch.compile's reduce-overhead mode)."""
    import dataclasses

    import torch

    rows = []
    for name in ("compiled backbone", "compiled backbone + CUDA graphs"):
        graphs = name.endswith("graphs")
        if graphs and not device.startswith("cuda"):
            continue
        if elapsed() > args.compile_budget_s:  # each mode compiles for a minute or more
            print(f"{name} skipped: {elapsed():.0f} s used > --compile-budget-s", file=sys.stderr)
            continue
        began = time.perf_counter()
        try:
            if graphs:  # not an engine setting: compiled here as the engine compiles, plus graphs
                model = factory.build(device)
                sizes = [args.batch_size, args.batch_size - 1]
                with torch.no_grad():
                    for group in model.groups:
                        if hasattr(group, "backbone"):
                            group.backbone.compile_blocks(mode="reduce-overhead")
                            group.warm_up(sizes)
            else:
                model = dataclasses.replace(factory, compile=True).build(device)
            compile_s = time.perf_counter() - began
            rate = _model_only(model, decoded, args.batch_size, device)
            del model
        except Exception as exc:  # noqa: BLE001 - the other rows still count
            rows.append(f"| {title} | bf16, {name} | failed: {_one_line(exc)} | | | | |")
            continue
        versus = f"{rate / eager_rate:.2f} of eager" if eager_rate else ""
        rows.append(f"| {title} | bf16, {name} (compile {compile_s:.0f} s) | none (model only) | {rate:.0f} | | "
                    f"{versus} | | |")
    return rows


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
