"""Throughput and peak memory of ModelSet on CPU (synthetic weights, real shapes).

Cases:
  (a) one fsaverage subject, all 2 x 163,842 vertices
  (b) 8 fsaverage subjects in one ModelSet (backbone shared), and the same 8 subjects
      as 8 sequential single-subject passes
  (c) one fwRF ROI (V1, 1,350 voxels as for NSD subject 1)
  (d) 8 fsaverage subjects' hV4 means only (the screening case: small regressions, so
      the backbone and the stacked PCA projection are the work)
each in fp32 and bf16; for the ViT cases also the seconds of the stacked projection alone
(its share of the model step is what bf16 sharing has to beat). Every case runs in its own process so its peak RSS is its own.

    python benchmarks/bench_models.py [--images 16] [--components 100] [--repeats 2] [--write]

--write stores the table in benchmarks/RESULTS-models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "models"
FSAV = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"


def _root(components: int) -> Path:
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = WORK / f"root-k{components}"
    stamp = root / ".complete"
    if not stamp.exists():
        make_synthetic_root(root, models=(FSAV, FWRF), subjects=(1,), rois=("V1",),
                            fsaverage_subjects=range(1, 9), fsaverage_components=components,
                            fwrf_voxels={"V1": 1350}, seed=0)
        stamp.write_text("ok")
    return root


def _images(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3, 425, 425), dtype=np.uint8)  # NSD stimulus size


def _peak_rss_gb() -> float:
    """High-water mark of this process (VmHWM; ru_maxrss would include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_case(case: str, precision: str, n_images: int, components: int, repeats: int = 2) -> dict:
    import torch

    from berg_scale.models import ModelSet, ReadoutSpec
    from berg_scale.synthetic.berg_root import backbone_file

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    root = _root(components)
    images = torch.from_numpy(_images(n_images))
    kwargs = dict(device="cpu", precision=precision, batch_size=min(n_images, 100),
                  backbone_path=str(backbone_file(root)))
    if case == "a":
        sets = [[ReadoutSpec(FSAV, 1)]]
    elif case == "b-shared":
        sets = [[ReadoutSpec(FSAV, s) for s in range(1, 9)]]
    elif case == "b-sequential":
        sets = [[ReadoutSpec(FSAV, s)] for s in range(1, 9)]
    elif case == "c":
        sets = [[ReadoutSpec(FWRF, 1, {"roi": "V1"})]]
    elif case == "d":
        sets = [[ReadoutSpec(FSAV, s, {"roi": "hV4"}, outputs=("mean",)) for s in range(1, 9)]]
    else:
        raise SystemExit(f"unknown case {case}")
    t0 = time.perf_counter()
    models = [ModelSet(str(root), specs, **kwargs) for specs in sets]
    load_s = time.perf_counter() - t0
    for ms in models:
        ms.forward(images)  # warm-up at the timed batch size (oneDNN builds kernels per shape)
    elapsed = float("inf")
    for _ in range(repeats):  # best of N: the machine is shared, the minimum is the signal
        t0 = time.perf_counter()
        for ms in models:
            ms.forward(images)
        elapsed = min(elapsed, time.perf_counter() - t0)
    project_s = _projection_seconds(models, n_images, repeats)
    return {
        "case": case,
        "precision": precision,
        "images": n_images,
        "images_per_s": n_images / elapsed,
        "seconds": elapsed,
        "load_s": load_s,
        "project_s": project_s,
        "peak_rss_gb": _peak_rss_gb(),
    }


def _projection_seconds(models: list, n_images: int, repeats: int) -> float | None:
    """Best time of the ViT groups' stacked projections on features of the timed batch."""
    import torch

    from berg_scale.models.vit import N_FEATURES

    groups = [g for ms in models for g in ms.groups if hasattr(g, "project")]
    if not groups:
        return None
    features = torch.randn(n_images, N_FEATURES) + groups[0].centre
    best = float("inf")
    with torch.no_grad():
        for group in groups:
            group.project(features)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for group in groups:
                group.project(features)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--components", type=int, default=100, help="PCA components of the fsaverage models")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--cases", nargs="+", default=["a", "b-shared", "b-sequential", "c", "d"])
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per case (best is kept)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from berg_scale.offline_env import apply_offline_environment

    apply_offline_environment()
    if args.case:
        print(json.dumps(run_case(args.case, args.precision, args.images, args.components, args.repeats)))
        return 0
    _root(args.components)  # build once, outside the timed children
    rows = []
    for precision in args.precisions:
        for case in args.cases:
            cmd = [sys.executable, __file__, "--case", case, "--precision", precision,
                   "--images", str(args.images), "--components", str(args.components),
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = [
        "# Models benchmark (CPU)",
        "",
        f"`python benchmarks/bench_models.py --images {args.images} --components {args.components}` on "
        f"{platform.machine()} with {os.environ.get('BENCH_THREADS', '2')} torch threads (a shared 2-core "
        "machine), synthetic weights with the real shapes: fsaverage 2 x 163,842 vertices and "
        f"k = {args.components} PCA components (published models: 250), fwRF V1 with 1,350 voxels; "
        f"425 x 425 uint8 input images; best of {args.repeats} timed passes after a warm-up. Peak RSS "
        "is the whole process (torch, weights, buffers).",
        "",
        "| case | precision | images/s | s for the images | of which projection s | model load s | peak RSS GB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"a": "(a) 1 fsaverage subject", "b-shared": "(b) 8 fsaverage subjects, shared backbone",
             "b-sequential": "(b') 8 subjects as 8 sequential passes", "c": "(c) 1 fwRF ROI (V1)",
             "d": "(d) 8 fsaverage subjects, hV4 means only"}
    for row in rows:
        project = "" if row.get("project_s") is None else f"{row['project_s']:.2f}"
        lines.append(f"| {names[row['case']]} | {row['precision']} | {row['images_per_s']:.2f} | "
                     f"{row['seconds']:.1f} | {project} | {row['load_s']:.1f} | {row['peak_rss_gb']:.2f} |")
    lines.append("")
    for precision in args.precisions:
        shared = [r for r in rows if r["case"] == "b-shared" and r["precision"] == precision]
        seq = [r for r in rows if r["case"] == "b-sequential" and r["precision"] == precision]
        if shared and seq:
            lines.append(f"- {precision}: sharing the backbone makes 8 subjects "
                         f"{shared[0]['images_per_s'] / seq[0]['images_per_s']:.1f}x faster than 8 sequential passes.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        (HERE / "RESULTS-models.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
