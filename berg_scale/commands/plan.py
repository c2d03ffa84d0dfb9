"""Estimate a generation run before starting it: input images, output size, GPU-hours, wall time.

Widths come from BERG metadata when a local root is at hand (--berg-root, or a local
berg_root in the config), otherwise from the model cards. A config may carry its sizing
assumptions in a comment line `# plan: gpus=8 images=1000000 images_per_second_per_gpu=400`;
the options below override it.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="generation run config (YAML)")
    parser.add_argument("--images", type=int, metavar="N", help="number of input images (skips listing remote shards)")
    parser.add_argument(
        "--images-per-second-per-gpu", type=float, metavar="X", help="measured or expected throughput"
    )
    parser.add_argument("--gpus", type=float, metavar="N", help="GPUs the run will use")
    parser.add_argument("--berg-root", metavar="DIR", help="BERG root to read metadata from (exact widths)")
    parser.add_argument("--assume-width", type=int, metavar="N", help="width for columns no source knows")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, as for generate")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def _refuse_study_config(path: str) -> None:
    """An RNC study config fails generation validation on every key; say what it is instead."""
    import yaml

    from berg_scale.errors import BergScaleError

    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return  # load_config reports these with its own wording
    if isinstance(raw, dict) and "responses" in raw and "readouts" not in raw:
        raise BergScaleError(
            f"{path} is an RNC study config; plan sizes generation runs: give the config "
            "of the run that writes its responses"
        )


def run(args: argparse.Namespace) -> int:
    import json

    from berg_scale.config import load_config
    from berg_scale.errors import BergScaleError, StorageError
    from berg_scale.io.storage_errors import storage_errors, underlying_storage_error
    from berg_scale.planning import make_plan

    if args.images is not None and args.images < 0:
        raise BergScaleError("--images must be >= 0")
    _refuse_study_config(args.config)
    config = load_config(args.config, overrides=args.overrides)
    # Planning reads the input shards and possibly a remote berg_root with the config's storage.
    storage = config.storage_options()
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
            )
    except BergScaleError as exc:
        detailed = underlying_storage_error(exc, options=storage, what="read")
        if detailed is None:
            raise
        hint = "; or pass --images N to plan without reading the input shards" if "--images" in str(exc) else ""
        raise StorageError(f"{detailed}{hint}") from exc
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
            "notes": plan.notes,
        }, indent=2))
    else:
        print(plan.render())
    return 0
