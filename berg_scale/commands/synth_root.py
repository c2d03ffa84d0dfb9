"""Write a synthetic BERG root: BERG's exact file format with random weights.

Useful to try berg-scale (and BERG itself) without downloading the real weights. Only
the requested models, subjects and ROIs get files; a random ViT-B/32 backbone is saved
as vit_b_32-d86f8d99.pth in the root (pass it as backbone_path, or copy it to
$TORCH_HOME/hub/checkpoints/).
"""

from __future__ import annotations

import argparse

from berg_scale.subject_ids import subject_argument

MODELS = ("fmri-nsd-fwrf", "fmri-nsd_fsaverage-vit_b_32", "eeg-things_eeg_2-vit_b_32")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="DIR", help="folder to write (created if missing)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL",
                        help=f"models to write (default: all of {', '.join(MODELS)})")
    parser.add_argument("--subjects", nargs="+", type=subject_argument, default=[1], metavar="N", help="subjects (default: 1)")
    parser.add_argument("--rois", nargs="+", default=["V1"], metavar="ROI", help="fwRF ROIs (default: V1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--fwrf-voxels", type=int, default=8, metavar="N", help="voxels per fwRF ROI (default: 8)")
    parser.add_argument("--fsaverage-components", type=int, default=3, metavar="K",
                        help="PCA components of fsaverage models (default: 3)")
    parser.add_argument("--eeg-float16", action="store_true",
                        help="store EEG PCA components as float16 (230 MB instead of 460 MB per subject)")
    parser.add_argument("--no-backbone", action="store_true", help="do not write the random ViT-B/32 backbone")


def run(args: argparse.Namespace) -> int:
    from berg_scale.errors import BergScaleError
    from berg_scale.io.storage import is_remote
    from berg_scale.io.storage_errors import storage_errors
    from berg_scale.models.registry import get_card
    from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root

    if is_remote(args.root):
        raise BergScaleError(
            f"synth-root writes a local folder, got {args.root!r}: write it locally, then copy "
            "it to object storage (e.g. aws s3 sync)"
        )
    if args.fwrf_voxels < 1 or args.fsaverage_components < 1:
        raise BergScaleError("--fwrf-voxels and --fsaverage-components must be at least 1")
    for model_id in args.models:
        card = get_card(model_id)
        bad = [s for s in args.subjects if s not in card.subjects]
        if bad:
            raise BergScaleError(f"{model_id} has subjects {list(card.subjects)}; not {bad}")
    with storage_errors(args.root, what="write"):
        root = make_synthetic_root(
            args.root,
            models=args.models,
            subjects=args.subjects,
            rois=args.rois,
            seed=args.seed,
            fwrf_voxels=args.fwrf_voxels,
            fsaverage_components=args.fsaverage_components,
            eeg_components_dtype="float16" if args.eeg_float16 else "float32",
            write_backbone=not args.no_backbone,
        )
    print(f"synthetic BERG root written to {root}")
    if not args.no_backbone:
        print(f"ViT-B/32 backbone (random weights): {backbone_file(root)}")
    return 0
