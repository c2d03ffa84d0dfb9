"""Generate responses for sharded images from a run config.

Resumes by default: shards with a commit marker in the output are skipped. A changed
config or model against an existing output is refused unless --overwrite is given.
Exits 1 when any shard was quarantined (see `berg-scale status OUTPUT`).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set resources.batch_size=64 (repeatable; YAML values)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="discard what an earlier run wrote to the output and start over")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to use (default: RAY_ADDRESS, else a private local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")


def run(args: argparse.Namespace) -> int:
    from berg_scale.config import load_config
    from berg_scale.engine.run import run_generation

    config = load_config(args.config, overrides=args.overrides)
    result = run_generation(
        config,
        overwrite=args.overwrite,
        ray_address=args.ray_address,
        show_progress=False if args.no_progress else None,
    )
    print(result.summary())
    return result.exit_code
