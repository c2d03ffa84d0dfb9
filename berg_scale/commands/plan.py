"""Estimate a generation run before starting it: input images, output size, GPU- or CPU-hours, wall time.

Widths come from the BERG metadata of the config's berg_root (a local folder or object
storage; --berg-root names another), otherwise from the model cards. The compute rate is
measured on this machine with --calibrate (the configured models on a few of the input's
images), or given, or nominal, and the estimate says which. A config may carry its sizing
assumptions in a comment line `# plan: gpus=8 images=1000000 images_per_second_per_gpu=400`;
the options below override it.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="generation run config (YAML)")
    parser.add_argument("--images", type=int, metavar="N", help="number of input images (skips listing remote shards)")
    parser.add_argument(
        "--images-per-second", "--images-per-second-per-gpu", dest="images_per_second_per_gpu", type=float,
        metavar="X", help="throughput of one worker (one GPU, or one CPU worker), measured elsewhere",
    )
    parser.add_argument("--gpus", "--workers", dest="gpus", type=float, metavar="N",
                        help="workers the run will use (GPUs for a GPU run, CPU workers for a CPU run)")
    parser.add_argument("--device", choices=("gpu", "cpu"),
                        help="plan for GPU or CPU workers (default: what the config's resources ask for)")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure images/s by running the configured models on a few images on this machine")
    parser.add_argument("--calibrate-images", type=int, metavar="N",
                        help="images to time with --calibrate (default: two batches, at least 16)")
    parser.add_argument("--berg-root", metavar="DIR", help="BERG root to read metadata from (exact widths)")
    parser.add_argument("--cards-only", action="store_true",
                        help="read no BERG metadata: widths from the model cards (no storage access)")
    parser.add_argument("--assume-width", type=int, metavar="N", help="width for columns no source knows")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, as for generate")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def _refuse_study_config(path: str) -> None:
    """An RNC study config fails generation validation on every key; say what it is instead."""
    from berg_scale.errors import BergScaleError
    from berg_scale.yaml_load import load_yaml

    try:
        with open(path, encoding="utf-8") as handle:
            raw = load_yaml(handle.read(), path)
    except (OSError, BergScaleError):
        return  # load_config reports these with its own wording
    if isinstance(raw, dict) and "responses" in raw and "readouts" not in raw:
        raise BergScaleError(
            f"{path} is an RNC study config; plan sizes generation runs: give the config "
            "of the run that writes its responses"
        )


def _has_nvidia_gpu() -> bool:
    """Cheap (no torch import): the NVIDIA driver's control device exists."""
    import os

    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def run(args: argparse.Namespace) -> int:
    import json

    from berg_scale.config import load_config
    from berg_scale.errors import BergScaleError, StorageError
    from berg_scale.io.storage_errors import storage_errors, underlying_storage_error
    from berg_scale.planning import make_plan

    if args.images is not None and args.images < 0:
        raise BergScaleError("--images must be >= 0")
    if args.calibrate_images is not None and args.calibrate_images < 1:
        raise BergScaleError("--calibrate-images must be >= 1")
    _refuse_study_config(args.config)
    config = load_config(args.config, overrides=args.overrides)
    # Planning reads the input shards and possibly a remote berg_root with the config's storage.
    storage = config.storage_options()
    calibration = None
    if args.calibrate:
        import sys

        from berg_scale.engine.calibrate import calibrate

        calibration = calibrate(config, images=args.calibrate_images,
                                device="cpu" if args.device == "cpu" else None,
                                log=lambda message: print(message, file=sys.stderr))
    try:
        with storage_errors(None, storage, what="read"):
            plan = make_plan(
                config,
                config_path=args.config,
                images=args.images,
                images_per_second_per_gpu=args.images_per_second_per_gpu,
                gpus=args.gpus,
                berg_root=args.berg_root,
                assume_width=args.assume_width,
                device=args.device,
                calibration=calibration,
                read_metadata=not args.cards_only,
            )
    except BergScaleError as exc:
        detailed = underlying_storage_error(exc, options=storage, what="read")
        if detailed is None:
            raise
        hint = "; or pass --images N to plan without reading the input shards" if "--images" in str(exc) else ""
        raise StorageError(f"{detailed}{hint}") from exc
    if plan.device == "gpu" and args.device is None and config.resources.device == "auto" \
            and calibration is None and not _has_nvidia_gpu():
        plan.notes.append(
            "this machine has no NVIDIA GPU: the plan is for GPU workers, while `generate` here "
            "would run on the CPU; pass --device cpu (or --calibrate) to plan a run on this machine"
        )
    if args.json:
        print(json.dumps({
            "images": plan.images,
            "shards": len(plan.shards),
            "columns": [
                {"name": c.name, "kind": c.kind, "width": c.width, "dtype": c.dtype,
                 "bytes_per_image": c.bytes_per_image, "source": c.source}
                for c in plan.columns
            ],
            "bytes_per_image": plan.bytes_per_image,
            "total_bytes": plan.total_bytes,
            "gpu_hours": plan.gpu_hours,
            "wall_hours": plan.wall_hours,
            "gpus": plan.gpus,
            "images_per_second_per_gpu": plan.images_per_second_per_gpu,
            "device": plan.device,
            "workers": plan.gpus,
            "worker_hours": plan.worker_hours,
            "images_per_second_per_worker": plan.images_per_second_per_gpu,
            "rate_source": plan.rate_source,
            "rate_measured": plan.rate_measured,
            "calibration": plan.calibration,
            "notes": plan.notes,
        }, indent=2))
    else:
        print(plan.render())
    return 0
