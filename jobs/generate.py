"""Ray Job entry point for a generation run.

    ray job submit --working-dir . -- python jobs/generate.py configs/<run>.yaml [--set k=v] [--overwrite] [--take-over]

Inside a Ray Job, RAY_ADDRESS points at the cluster; run directly on a head node, it
attaches to the running cluster; elsewhere it starts a local Ray.
"""

from __future__ import annotations

import argparse
import os
import sys

# With `--working-dir .` the package travels as source next to this script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from berg_scale.errors import BergScaleError

    parser = argparse.ArgumentParser(prog="jobs/generate.py", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--take-over", action="store_true")
    args = parser.parse_args(argv)
    try:
        from berg_scale.config import load_config
        from berg_scale.engine.run import run_generation

        config = load_config(args.config, overrides=args.overrides)
        result = run_generation(config, overwrite=args.overwrite, take_over=args.take_over,
                                allow_auto_address=True, show_progress=False)
    except BergScaleError as exc:
        print(f"generate: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
