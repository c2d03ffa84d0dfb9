"""Run multivariate RNC on many images in a fresh process and report its peak memory.

Used by test_memory.py (and handy by hand). The peak is the kernel's high-water mark
of this process's own address space (VmHWM), which starts afresh at exec; ru_maxrss
would instead inherit the parent's peak across fork+exec and measure the test runner.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from berg_scale.rnc.multivariate import GAParams, PairScorer, genetic_search, multivariate_null
from berg_scale.rnc.patterns import PatternSet


def peak_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--voxels", type=int, default=1000, help="per subject; D = subjects x voxels")
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--storage", default="float16")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--null-batches", type=int, default=2400)
    args = parser.parse_args()
    torch.manual_seed(0)
    subjects = list(range(1, args.subjects + 1))
    started = time.time()
    sets = []
    for _ in range(2):
        patterns = PatternSet.allocate(subjects, args.images, [args.voxels] * len(subjects), "cpu", args.storage)
        for s in subjects:
            for start in range(0, args.images, 8192):
                rows = min(8192, args.images - start)
                patterns.fill(s, start, torch.randn(rows, args.voxels))
        sets.append(patterns)
    built = time.time()
    scorer = PairScorer(sets[0], sets[1])
    result = genetic_search(lambda b: scorer.score(b, subjects), args.images, "align",
                            GAParams(generations=args.generations))
    searched = time.time()
    folds = [(tuple(subjects), None)]
    null = multivariate_null(sets[0], sets[1], folds, args.null_batches, 50, seed=1)
    done = time.time()
    pattern_bytes = sum(b.numel() * b.element_size() for p in sets for b in p.blocks)
    print(json.dumps({
        "peak_rss_bytes": peak_rss_bytes(),
        "pattern_bytes": pattern_bytes,
        "best_scores": result.best_scores.tolist(),
        "null_finite": int(np.isfinite(null.train[None]).sum()),
        "build_s": round(built - started, 2),
        "search_s": round(searched - built, 2),
        "null_s": round(done - searched, 2),
    }))


if __name__ == "__main__":
    main()
