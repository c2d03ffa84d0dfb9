"""Ray Job entry point for an RNC study.

    ray job submit --working-dir . -- python jobs/rnc.py configs/rnc_v1_hv4.yaml

Univariate selection runs per shard in Ray tasks when the config sets
`univariate.distributed: true`; the multivariate search uses the GPU of the driver
process when one is visible (submit with `--entrypoint-num-gpus 1`).
"""

from __future__ import annotations

import argparse
import os
import sys

# With `--working-dir .` the package travels as source next to this script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from berg_scale.errors import BergScaleError

    parser = argparse.ArgumentParser(prog="jobs/rnc.py", description=__doc__)
    parser.add_argument("config", metavar="STUDY.yaml")
    args = parser.parse_args(argv)
    try:
        from berg_scale.rnc.config import load_config
        from berg_scale.rnc.study import run_study

        config = load_config(args.config)
        summary = run_study(config, allow_auto_ray=True)
    except BergScaleError as exc:
        print(f"rnc: error: {exc}", file=sys.stderr)
        return 2
    print(f"rnc: done in {summary['elapsed_s']} s; results in {config.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
