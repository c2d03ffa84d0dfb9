"""RNC speed and memory on this machine (CPU): univariate at 10^7 images, the 1M-batch
baseline, one multivariate generation at D = 7,000.

Each case runs in a fresh process so that its peak resident memory (ru_maxrss) is its own.
Responses are random (speed does not depend on their values); the univariate case can also
start from Parquet shards in the engine layout (--from-parquet), which adds reading.

    python benchmarks/bench_rnc.py                      # all cases, published defaults
    python benchmarks/bench_rnc.py --case baseline      # one case
    python benchmarks/bench_rnc.py --markdown benchmarks/RESULTS-rnc.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

CASES = ("baseline", "univariate", "univariate-parquet", "generation")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def case_baseline(args) -> dict:
    """1,000,000 random batches of 25 from 10^7 images: one vector, and 8 subjects x 2 ROIs at once."""
    from berg_scale.rnc.univariate import baseline_null

    rng = np.random.default_rng(0)
    one = rng.standard_normal((args.images, 1, 1), dtype=np.float32)
    t = time.perf_counter()
    baseline_null(one, args.batches, 25, seed=20200220)
    single = time.perf_counter() - t
    del one
    many = rng.standard_normal((args.images, 8, 2), dtype=np.float32)
    t = time.perf_counter()
    baseline_null(many, args.batches, 25, seed=20200220)
    all_columns = time.perf_counter() - t
    return {"images": args.images, "batches": args.batches, "seconds_one_roi": single,
            "seconds_8_subjects_x_2_rois": all_columns, "peak_rss_bytes": _peak_rss()}


def case_univariate(args, values=None, read_seconds=None) -> dict:
    """The full published procedure for one pair: 1M baseline, 9 folds x 4 conditions, 1e5 permutations
    and 1e5 bootstrap resamples, on N images x 8 subjects x 2 ROIs."""
    from berg_scale.rnc.univariate import UnivariateParams, run_univariate

    if values is None:
        values = np.random.default_rng(1).standard_normal((args.images, 8, 2), dtype=np.float32)
    params = UnivariateParams(baseline_batches=args.batches)
    marks = {}
    last = [time.perf_counter()]

    def log(message: str) -> None:
        now = time.perf_counter()
        marks[message.split(":")[0]] = now - last[0]
        last[0] = now

    t = time.perf_counter()
    run_univariate(values, list(range(1, 9)), ["V1", "hV4"], [("V1", "hV4")], params, log=log)
    total = time.perf_counter() - t
    out = {"images": int(values.shape[0]), "seconds": total, "peak_rss_bytes": _peak_rss(),
           "input_bytes": int(values.nbytes)}
    if read_seconds is not None:
        out["read_seconds"] = read_seconds
    return out


def case_univariate_parquet(args) -> dict:
    """Write N images x 16 `:mean` columns as engine-layout shards, then time reading + RNC."""
    from berg_scale.rnc.responses import ResponseStore, mean_column
    from berg_scale.rnc.synthetic import write_synthetic_output

    work = args.workdir or tempfile.mkdtemp(prefix="bench_rnc_")
    root = os.path.join(work, "responses-output")
    if not os.path.exists(os.path.join(root, "readouts.json")):
        rng = np.random.default_rng(2)
        columns = {mean_column("fmri-nsd-fwrf", s, r): rng.standard_normal(args.images, dtype=np.float32)
                   for s in range(1, 9) for r in ("V1", "hV4")}
        write_synthetic_output(root, columns, n_shards=max(1, args.images // 100_000))
        del columns
    t = time.perf_counter()
    data = ResponseStore(root).read_univariate("fmri-nsd-fwrf", list(range(1, 9)), ["V1", "hV4"])
    read = time.perf_counter() - t
    return case_univariate(args, data.values, read)


def case_generation(args) -> dict:
    """One GA generation: 2,400 candidates (200 cached parents + 2,200 scored) of 50 images,
    D = 7 train subjects x 1,000 voxels = 7,000 per ROI, two ROIs."""
    import torch

    from berg_scale.rnc.multivariate import GAParams, PairScorer, genetic_search
    from berg_scale.rnc.patterns import PatternSet

    torch.manual_seed(0)
    subjects = list(range(1, 8))
    sets = []
    for _ in range(2):
        p = PatternSet.allocate(subjects, args.pattern_images, [1000] * 7, "cpu", args.storage)
        for s in subjects:
            p.fill(s, 0, torch.randn(args.pattern_images, 1000))
        sets.append(p)
    scorer = PairScorer(sets[0], sets[1])
    genetic_search(lambda b: scorer.score(b, subjects), args.pattern_images, "align", GAParams(generations=1))
    t = time.perf_counter()
    result = genetic_search(lambda b: scorer.score(b, subjects), args.pattern_images, "align",
                            GAParams(generations=args.generations))
    per_generation = (time.perf_counter() - t) / (args.generations + 200 / 2200)  # initial population scored too
    return {"images": args.pattern_images, "dims_per_roi": 7000, "storage": args.storage,
            "threads": torch.get_num_threads(), "seconds_per_generation": per_generation,
            "best_score": float(result.best_scores[-1]), "peak_rss_bytes": _peak_rss()}


def _run_case(name: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--case", name, "--json", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(results: dict, args) -> str:
    gib = 1024**3
    lines = [
        "# RNC benchmarks (CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; load average at the end {os.getloadavg()[0]:.1f} "
        "(other work shares these cores). Command: `python benchmarks/bench_rnc.py`. "
        "Random responses (speed does not depend on their values).",
        "",
        "| Case | Size | Time | Peak memory |",
        "|---|---|---|---|",
    ]
    if "baseline" in results:
        r = results["baseline"]
        lines.append(f"| Univariate baseline null, one ROI | {r['batches']:,} batches of 25 from {r['images']:,} images "
                     f"| {r['seconds_one_roi']:.2f} s | {r['peak_rss_bytes'] / gib:.2f} GiB |")
        lines.append(f"| Univariate baseline null, 8 subjects x 2 ROIs in one pass (serves all 9 folds) "
                     f"| same batches | {r['seconds_8_subjects_x_2_rois']:.2f} s | (same process) |")
    if "univariate" in results:
        r = results["univariate"]
        lines.append(f"| Univariate RNC, one pair, full procedure (1M baseline, 9 folds x 4 conditions, "
                     f"1e5 permutations, 1e5 bootstrap) | {r['images']:,} images x 8 subjects x 2 ROIs "
                     f"(in memory, {r['input_bytes'] / gib:.2f} GiB) | {r['seconds']:.1f} s | {r['peak_rss_bytes'] / gib:.2f} GiB |")
    if "univariate-parquet" in results:
        r = results["univariate-parquet"]
        lines.append(f"| Same, starting from Parquet shards (reads the 16 `:mean` columns only) | {r['images']:,} images "
                     f"| read {r['read_seconds']:.1f} s + RNC {r['seconds']:.1f} s | {r['peak_rss_bytes'] / gib:.2f} GiB |")
    if "generation" in results:
        r = results["generation"]
        lines.append(f"| Multivariate, one GA generation (2,400 batches of 50; 2,200 scored), D = 7,000 per ROI, "
                     f"{r['storage']} storage, {r['threads']} threads | {r['images']:,} images | "
                     f"{r['seconds_per_generation']:.2f} s | {r['peak_rss_bytes'] / gib:.2f} GiB |")
        lines.append("")
        lines.append(f"At this speed a 2,000-generation run takes about {r['seconds_per_generation'] * 2000 / 3600:.1f} h "
                     "on this CPU; `benchmarks/gpu_rnc.py` measures the same generation on a GPU.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--images", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--pattern-images", type=int, default=20_000)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--storage", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--workdir", help="where --case univariate-parquet writes its shards (kept for reuse)")
    parser.add_argument("--markdown", help="write a results table to this file")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.case or ["baseline", "univariate", "generation"]
    if args.json:  # child process: one case
        print(json.dumps({"baseline": case_baseline, "univariate": case_univariate,
                          "univariate-parquet": case_univariate_parquet, "generation": case_generation}[cases[0]](args)))
        return
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--case") and a not in CASES]
    passthrough = [a for i, a in enumerate(passthrough) if not (i > 0 and passthrough[i - 1] == "--markdown")
                   and a != "--markdown"]
    results = {}
    for name in cases:
        results[name] = _run_case(name, passthrough)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    text = _markdown(results, args)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
