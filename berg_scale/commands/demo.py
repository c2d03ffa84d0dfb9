"""Run the whole pipeline on this machine: synthetic BERG weights, synthetic images,
generation on a local Ray, then a small RNC study over the responses and the BERG paper's
two in silico experiments (a tripartite map and EEG decoding) on round-robin labels.

The weights are RANDOM (a synthetic BERG root in the exact file format), so the numbers
mean nothing about the brain; the demo shows the machinery and the output layout. For
real responses, download BERG (`berg-scale fetch-weights`) and point `berg_root` in a
run config at it (see configs/demo.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

DEMO_SUBJECTS = (1, 2)
DEMO_FWRF_ROIS = ("V1", "hV4")
DEMO_EEG_CHANNELS = ["O1", "Oz", "O2", "PO3", "POz", "PO4", "Pz", "Cz"]
DEMO_DEFECTS = {"truncated_jpeg": 1}  # one error row, to show how failures are reported


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="./berg-scale-demo", help="folder for everything the demo writes")
    parser.add_argument("--shards", type=int, default=10, help="number of synthetic image shards")
    parser.add_argument("--images-per-shard", type=int, default=10)
    parser.add_argument("--no-rnc", action="store_true", help="skip the RNC step")
    parser.add_argument("--no-experiments", action="store_true",
                        help="skip the in silico experiments step (tripartite map, EEG decoding)")


def demo_config(out: str) -> dict[str, Any]:
    """The generation config the demo runs (configs/demo.yaml is the same, relative to its folder configs/)."""
    return {
        "input": {"shards": os.path.join(out, "shards"), "image_size": 256, "crop": "center"},
        "berg_root": os.path.join(out, "berg_root"),
        "backbone": os.path.join(out, "berg_root", "vit_b_32-d86f8d99.pth"),
        "readouts": [
            {"model": "fmri-nsd_fsaverage-vit_b_32", "subjects": [1], "rois": ["V1v", "hV4"],
             "outputs": ["responses", "mean"]},
            {"model": "eeg-things_eeg_2-vit_b_32", "subjects": [1],
             "selections": [{"channels": DEMO_EEG_CHANNELS}], "dtype": "float16"},
            {"model": "fmri-nsd-fwrf", "subjects": list(DEMO_SUBJECTS), "rois": list(DEMO_FWRF_ROIS),
             "outputs": ["responses", "mean"]},
        ],
        "output": os.path.join(out, "generated"),
        "resources": {"workers": "auto", "cpus_per_worker": 1, "batch_size": 16, "decode_threads": 2},
        "retries": {"max_attempts": 2},
    }


def make_demo_inputs(out: str, n_shards: int, images_per_shard: int, log) -> None:
    """Synthetic BERG root (fsaverage k=3, EEG with float16 components and 8 channels,
    fwRF V1/hV4) and procedural image shards; reused when already present."""
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = os.path.join(out, "berg_root")
    stamp = os.path.join(root, ".berg-scale-demo-complete")
    if not os.path.exists(stamp):
        log(f"writing a synthetic BERG root with RANDOM weights to {root} (about 600 MB, once)")
        make_synthetic_root(
            root,
            subjects=DEMO_SUBJECTS,
            rois=DEMO_FWRF_ROIS,
            fsaverage_subjects=(1,),
            fsaverage_rois=("V1v", "hV4"),
            fsaverage_roi_patches=True,
            eeg_subjects=(1,),
            eeg_channels=DEMO_EEG_CHANNELS,
            eeg_components_dtype="float16",
            fwrf_voxels=12,
            seed=0,
        )
        open(stamp, "w").close()
    make_demo_shards(out, n_shards, images_per_shard, log)


def make_demo_shards(out: str, n_shards: int, images_per_shard: int, log) -> None:
    """Procedural image shards under `out/shards`, remade when their sizes differ."""
    from berg_scale.synthetic.shards import write_synthetic_shards

    shards = os.path.join(out, "shards")
    sizes_stamp = os.path.join(out, ".demo-shards.json")
    wanted = {"shards": n_shards, "images_per_shard": images_per_shard}
    try:
        with open(sizes_stamp) as handle:
            made = json.load(handle)
    except (OSError, ValueError):
        made = None
    if made != wanted or not os.path.isdir(shards) or len(os.listdir(shards)) != n_shards:
        log(f"writing {n_shards} synthetic shards x {images_per_shard} images to {shards}")
        if made is not None and os.path.isdir(shards):
            shutil.rmtree(shards)  # shards this demo wrote (its stamp says so), of other sizes
        write_synthetic_shards(shards, n_shards, images_per_shard, sizes=((320, 240), (240, 320), (300, 300)),
                               formats=("jpg", "png", "webp"), defects=DEMO_DEFECTS, seed=0)
        with open(sizes_stamp, "w") as handle:
            json.dump(wanted, handle)


def check_demo_sizes(n_shards: int, images_per_shard: int, rnc: bool) -> None:
    """Refuse, before anything is written, sizes the demo's later steps cannot use: a demo
    that generates for minutes and then fails in its RNC step helps nobody."""
    from berg_scale.errors import ConfigError

    if n_shards < 1 or images_per_shard < 1:
        raise ConfigError(f"demo needs --shards and --images-per-shard of at least 1, got {n_shards} and "
                          f"{images_per_shard}")
    if not rnc:
        return
    from berg_scale.rnc.multivariate import GAParams
    from berg_scale.rnc.multivariate_study import images_needed

    good = n_shards * images_per_shard - sum(DEMO_DEFECTS.values())
    needed = images_needed(GAParams())
    if good < needed:
        per_shard = -(-(needed + sum(DEMO_DEFECTS.values())) // n_shards)
        raise ConfigError(
            f"demo: {n_shards} shard(s) x {images_per_shard} images give {good} readable images, but the "
            f"demo's RNC step needs {needed} (multivariate batches of {GAParams().batch_size} and their "
            f"mutations): use --images-per-shard {per_shard} or more with --shards {n_shards}, or skip "
            f"RNC with --no-rnc"
        )


def run_rnc_step(output: str, out: str, shards: str, log) -> dict | None:
    """The RNC step over the generated fwRF responses (univariate and multivariate)."""
    try:
        from berg_scale.rnc import run_demo_rnc
    except ImportError:
        log("RNC is not available in this installation; skipping the RNC step")
        return None
    return run_demo_rnc(
        output,
        os.path.join(out, "rnc"),
        rois=DEMO_FWRF_ROIS,
        subjects=DEMO_SUBJECTS,
        generations=10,
        images_url=shards,
        log=log,
    )


DEMO_CATEGORIES = ("animals", "small objects", "big objects")
DEMO_ANIMACY = ("animate", "inanimate")


def write_demo_labels(output: str, path: str) -> int:
    """A label table for the demo images, assigned round-robin: the images are procedural
    and the weights random, so the labels only exercise the experiments' machinery."""
    import csv

    from berg_scale.io.results import open_responses

    ids = open_responses(output).to_table(columns=["shard", "key"])
    rows = sorted(zip(ids.column("shard").to_pylist(), ids.column("key").to_pylist()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["shard", "key", "category", "animacy"])
        for index, (shard, key) in enumerate(rows):
            writer.writerow([shard, key, DEMO_CATEGORIES[index % 3], DEMO_ANIMACY[index % 2]])
    return len(rows)


def run_experiments_step(output: str, out: str, log) -> dict[str, str]:
    """A small tripartite map (fsaverage V1v/hV4) and EEG decoding over the demo's responses;
    returns experiment -> folder of its tables and figures."""
    from berg_scale.experiments import eeg_decoding, tripartite

    folder = os.path.join(out, "experiments")
    labels = os.path.join(folder, "labels.csv")
    n = write_demo_labels(output, labels)
    log(f"wrote round-robin demo labels for {n} images to {labels}")
    steps = {
        "tripartite": (tripartite, ["--responses", output, "--labels", labels, "--label-column", "category",
                                    "--rois", "V1v", "hV4", "--permutations", "200",
                                    "--out", os.path.join(folder, "tripartite")]),
        "eeg-decoding": (eeg_decoding, ["--responses", output, "--labels", labels, "--label-column", "animacy",
                                        "--max-pairs", "300", "--bootstrap", "100",
                                        "--out", os.path.join(folder, "eeg-decoding")]),
    }
    written = {}
    for name, (module, argv) in steps.items():
        log(f"running `berg-scale experiment {name}` " + " ".join(argv))
        parser = argparse.ArgumentParser(prog=f"berg-scale experiment {name}")
        module.configure(parser)
        module.run(parser.parse_args(argv))
        written[name] = argv[-1]
    return written


def run(args: argparse.Namespace) -> int:
    import sys

    from berg_scale.config import load_config
    from berg_scale.engine.run import run_generation
    from berg_scale.offline_env import apply_offline_environment

    def log(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    apply_offline_environment()
    started = time.monotonic()
    check_demo_sizes(args.shards, args.images_per_shard, rnc=not args.no_rnc)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log("NOTE: the demo uses RANDOM weights in BERG's file format; its responses are not brain data.")
    make_demo_inputs(out, args.shards, args.images_per_shard, log)

    raw = demo_config(out)
    config_path = os.path.join(out, "generate.yaml")
    import yaml

    with open(config_path, "w") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    config = load_config(config_path)
    log(f"generating responses (config: {config_path})")
    result = run_generation(config, overwrite=True, show_progress=sys.stderr.isatty(), log=log)
    print(result.summary())

    rnc_summary = None
    if not args.no_rnc:
        log("running a small RNC study (V1 vs hV4, fwRF, subjects 1 and 2)")
        rnc_summary = run_rnc_step(config.output, out, config.input.shard_patterns()[0], log)
    experiments: dict[str, str] = {}
    if not args.no_experiments:
        log("running the in silico experiments (tripartite map, EEG decoding) on the demo responses")
        experiments = run_experiments_step(config.output, out, log)

    print()
    print(f"demo finished in {time.monotonic() - started:.0f} s; everything is under {out}")
    print(f"  responses:  {config.output}/responses/*.parquet  (commit markers in _done/, manifest run.json,")
    print("              column coordinates in readouts.json)")
    print(f"  inspect:    berg-scale status {config.output}")
    print("  in Python:  import berg_scale; berg_scale.open_responses(" + repr(config.output) + ").to_table()")
    if rnc_summary is not None:
        print(f"  RNC:        {os.path.join(out, 'rnc')}")
    if experiments:
        print(f"  experiments: {os.path.join(out, 'experiments')}  (tables, summary.json; figures also as SVG)")
        figures = [os.path.join(folder, f) for folder in experiments.values()
                   for f in sorted(os.listdir(folder)) if f.endswith(".png")]
        for index, figure in enumerate(figures):
            print(f"  {'figures:' if index == 0 else '':<12}{figure}")
    print("The weights were RANDOM. For real responses: `berg-scale fetch-weights` (downloads BERG),")
    print("then edit configs/demo.yaml (berg_root, input.shards, output) and run")
    print("`berg-scale generate configs/demo.yaml`.")
    return result.exit_code
