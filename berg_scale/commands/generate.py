"""Generate responses for sharded images from a run config.

Resumes by default: shards with a commit marker in the output are skipped. A changed
config, changed weights or changed inputs against an existing output are refused unless
--overwrite is given. One run writes an output at a time (the output's lease); a lease
left by a run that stopped on another host is taken over with --take-over.
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
    parser.add_argument("--take-over", action="store_true",
                        help="take over the output's lease when the run holding it stopped renewing it "
                             "(a live run's lease is never taken)")
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
        take_over=args.take_over,
        ray_address=args.ray_address,
        show_progress=False if args.no_progress else None,
    )
    print(result.summary())
    return result.exit_code
