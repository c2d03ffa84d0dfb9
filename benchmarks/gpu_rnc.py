"""Multivariate RNC on a GPU: time per GA generation, baseline-null throughput, memory,
and agreement of the GPU scores with a float64 CPU computation.

One script, ready to run on a machine with a CUDA GPU; without one it says so and exits
with status 2 (no CPU fallback: the CPU figures come from bench_rnc.py).

    python benchmarks/gpu_rnc.py                         # NSD size: 73,000 images, D = 7,000
    python benchmarks/gpu_rnc.py --images 1000000 --storage bfloat16
    python benchmarks/gpu_rnc.py --markdown benchmarks/RESULTS-rnc-gpu.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _patterns(subjects, n, voxels, device, storage, seed):
    import torch

    from berg_scale.rnc.patterns import PatternSet

    gen = torch.Generator(device=device).manual_seed(seed)
    p = PatternSet.allocate(subjects, n, [voxels] * len(subjects), device, storage)
    for s in subjects:
        for start in range(0, n, 65_536):
            rows = min(65_536, n - start)
            p.fill(s, start, torch.randn(rows, voxels, device=device, generator=gen))
    return p


def _reference_scores(p1, p2, batches, subjects) -> np.ndarray:
    """float64 CPU computation of the same scores (per-subject Grams, mean, Pearson)."""
    k = batches.shape[1]
    rows, cols = np.tril_indices(k, -1)
    out = []
    for batch in batches:
        tri = []
        for p in (p1, p2):
            gram = np.zeros((k, k))
            for s in subjects:
                x = p.block(s)[batch].double().cpu().numpy()
                gram += x @ x.T / len(subjects)
            tri.append(gram[rows, cols])
        out.append(np.corrcoef(tri[0], tri[1])[0, 1])
    return np.array(out)


def run(args) -> dict:
    import torch

    from berg_scale.rnc.multivariate import GAParams, PairScorer, genetic_search, multivariate_null
    from berg_scale.rnc.sampling import sample_subsets

    smoke = args.smoke_on_cpu and not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    sync = (lambda: None) if smoke else (lambda: torch.cuda.synchronize(device))
    results = {"device": "CPU (smoke test, not a benchmark)" if smoke else torch.cuda.get_device_name(device), "torch": torch.__version__, "images": args.images,
               "voxels_per_subject": args.voxels, "train_subjects": args.subjects - 1, "cases": []}
    subjects = list(range(1, args.subjects + 1))
    train = subjects[:-1]
    check = sample_subsets(np.random.default_rng(0), args.images, 50, 32)
    first_scores = None
    for storage in args.storage:
        if not smoke:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        p1 = _patterns(subjects, args.images, args.voxels, device, storage, 1)
        p2 = _patterns(subjects, args.images, args.voxels, device, storage, 2)
        scorer = PairScorer(p1, p2)
        score = lambda b: scorer.score(b, train)  # noqa: E731
        genetic_search(score, args.images, "align", GAParams(generations=2))  # warm-up
        sync()
        t = time.perf_counter()
        ga = genetic_search(score, args.images, "align", GAParams(generations=args.generations))
        sync()
        per_generation = (time.perf_counter() - t) / args.generations
        folds = [(tuple(s for s in subjects if s != h), h) for h in subjects] + [(tuple(subjects), None)]
        t = time.perf_counter()
        multivariate_null(p1, p2, folds, args.null_batches, 50, seed=3, chunk=8192)
        sync()
        null_rate = args.null_batches / (time.perf_counter() - t)
        scores = scorer.score(check, train)
        # compute error: the same stored patterns scored in float64 on the CPU
        error = float(np.nanmax(np.abs(scores - _reference_scores(p1, p2, check, train))))
        # storage error: the same random patterns stored in the first listed dtype
        first_scores = scores if first_scores is None else first_scores
        storage_error = float(np.nanmax(np.abs(scores - first_scores)))
        case = {
            "storage": storage,
            "seconds_per_generation": per_generation,
            "run_2000_generations_minutes": per_generation * 2000 / 60,
            "null_batches_per_second_all_9_folds": null_rate,
            "null_1M_minutes": 1e6 / null_rate / 60,
            "max_abs_error_vs_float64": error,
            "max_abs_difference_vs_first_storage": storage_error,
            "peak_gpu_memory_gib": 0.0 if smoke else torch.cuda.max_memory_allocated(device) / 1024**3,
            "best_score_after_run": float(ga.best_scores[-1]),
        }
        results["cases"].append(case)
        print(json.dumps(case), flush=True)
        del p1, p2, scorer
    return results


def markdown(results: dict) -> str:
    lines = [
        f"# Multivariate RNC on GPU ({results['device']})",
        "",
        f"{results['images']:,} images, {results['train_subjects']} train subjects x {results['voxels_per_subject']:,} "
        f"voxels = D {results['train_subjects'] * results['voxels_per_subject']:,} per ROI, two ROIs; torch "
        f"{results['torch']}. Command: `python benchmarks/gpu_rnc.py`.",
        "",
        "| Storage | s / generation (2,400 batches) | 2,000 generations | 1M-batch null, 9 folds | "
        "compute error (vs float64, same stored patterns) | storage error (vs first row's storage) | peak GPU memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        lines.append(
            f"| {c['storage']} | {c['seconds_per_generation']:.3f} | {c['run_2000_generations_minutes']:.1f} min | "
            f"{c['null_1M_minutes']:.1f} min | {c['max_abs_error_vs_float64']:.1e} | "
            f"{c['max_abs_difference_vs_first_storage']:.1e} | {c['peak_gpu_memory_gib']:.1f} GiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=73_000)
    parser.add_argument("--voxels", type=int, default=1000, help="per subject (7 train subjects x 1,000 = D 7,000)")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--null-batches", type=int, default=100_000)
    parser.add_argument("--storage", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--smoke-on-cpu", action="store_true",
                        help="check the script itself on the CPU with whatever sizes are given (not a benchmark)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_rnc: torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.smoke_on_cpu:
        print("gpu_rnc: no CUDA device is visible; run this on a GPU machine "
              "(CPU figures: python benchmarks/bench_rnc.py)", file=sys.stderr)
        return 2
    results = run(args)
    text = markdown(results)
    print(json.dumps(results))
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
