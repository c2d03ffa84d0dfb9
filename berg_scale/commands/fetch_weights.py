"""Download exactly the BERG weight and metadata files a run needs into a local BERG root.

Reads BERG's public bucket anonymously by default; files already present are skipped and
interrupted downloads resume. Name readouts with --models/--subjects/--rois, or give a
run config with --config to fetch what that run reads. --backbone also downloads
torchvision's ViT-B/32 checkpoint (which BERG's bucket does not hold), checked against
the sha256 prefix in its file name as torchvision checks it.

BERG's weights come with BERG's terms (CC BY-NC 4.0, cite the paper); every run of this
command says so.
"""

from __future__ import annotations

import argparse
import os

from berg_scale.errors import BergScaleError
from berg_scale.io.endpoints import ENDPOINT_HELP

BERG_TERMS = (
    "BERG's models and weights are licensed CC BY-NC 4.0 (non-commercial use, with attribution): "
    "cite the BERG paper (Gifford, Bersch, Janini, Roig & Cichy, \"Catalyzing in silico neuroscience "
    "with a toolkit of accurate encoding models of the brain\"); see CITATION.cff"
)

BACKBONE_HELP = """\
ViT-B/32 backbone (needed by the fsaverage and EEG models; it is not in BERG's bucket):
  expected at: {path}  ({state})
  on a machine with internet access, either
    python -c "import torchvision; torchvision.models.vit_b_32(weights='DEFAULT')"
  (fills the cache above), or
    curl -L -o {name} {url}
  then copy the file to {path} on every machine that runs the models (or set
  TORCH_HOME, or pass `backbone: /path/{name}` in the run config)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL_ID", help="BERG model ids")
    parser.add_argument(
        "--subjects", nargs="+", metavar="N", help="subject numbers (1 or sub-01), or 'all' (the default)"
    )
    parser.add_argument("--rois", nargs="+", metavar="ROI", help="ROIs (needed for fmri-nsd-fwrf)")
    parser.add_argument("--config", metavar="YAML", help="fetch what this generation config reads")
    parser.add_argument("--to", dest="dest", metavar="DIR", help="local BERG root (needed unless only --backbone)")
    parser.add_argument(
        "--bucket",
        default=None,
        metavar="URL",
        help="source BERG root: s3://bucket[/prefix] or a local path "
        "(default s3://brain-encoding-response-generator)",
    )
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)
    parser.add_argument("--region", default=None, help="bucket region (default us-west-2)")
    parser.add_argument(
        "--anon",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="anonymous access (default: on for BERG's public bucket, off otherwise)",
    )
    parser.add_argument("--hashes", metavar="FILE", help="expected sha256 (sha256sum format or JSON)")
    parser.add_argument("--dry-run", action="store_true", help="list files and sizes, fetch nothing")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-metadata", action="store_true", help="skip metadata files")
    which.add_argument(
        "--metadata-only", action="store_true", help="only metadata (enough for `berg-scale plan`)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--backbone", action="store_true",
        help="also download torchvision's ViT-B/32 checkpoint (the fsaverage and EEG models' backbone)",
    )
    parser.add_argument("--backbone-url", metavar="URL", help="where to download it from (default: torchvision's URL)")
    parser.add_argument(
        "--backbone-to", metavar="PATH",
        help="where to put it (default: torch.hub's checkpoint folder, where the models look for it)",
    )


def backbone_instructions(path: str | None = None, url: str | None = None) -> str:
    """How to put the backbone in place by hand, for the path and URL this run asked for."""
    from berg_scale.models.families import VIT_B_32

    path = path or str(VIT_B_32.default_path())
    url = url or VIT_B_32.url
    state = "present" if os.path.isfile(path) else "missing"
    return BACKBONE_HELP.format(path=path, state=state, name=url.rsplit("/", 1)[-1], url=url)


def _requests(args: argparse.Namespace) -> list:
    from berg_scale.weights.selection import expand_requests

    requests: list = []
    if args.config:
        from berg_scale.config import load_config

        requests.extend(load_config(args.config).readout_specs())
    if args.models:
        subjects = None
        if args.subjects and args.subjects != ["all"]:
            from berg_scale.subject_ids import EXPECTED, parse_subject

            try:
                subjects = [parse_subject(s) for s in args.subjects]
            except ValueError:
                raise BergScaleError(f"--subjects takes {EXPECTED} (or 'all'), got {args.subjects}") from None
        requests.extend(expand_requests(args.models, subjects, args.rois))
    if not requests and not args.backbone:
        raise BergScaleError("name what to fetch: --models MODEL_ID [...] or --config RUN.yaml (or --backbone)")
    if requests and not args.dest:
        raise BergScaleError("say where the BERG root goes: --to DIR")
    return requests


def _fetch_berg(args: argparse.Namespace, requests: list) -> None:
    from berg_scale.io.storage import StorageOptions
    from berg_scale.io.storage_errors import storage_errors
    from berg_scale.weights.fetch import fetch_weights, load_hashes
    from berg_scale.weights.selection import DEFAULT_BUCKET, DEFAULT_REGION

    bucket = args.bucket or DEFAULT_BUCKET
    public = bucket.rstrip("/") == DEFAULT_BUCKET
    anon = args.anon if args.anon is not None else (public and not args.endpoint_url)
    storage = StorageOptions(
        endpoint_url=args.endpoint_url,
        region=args.region or (DEFAULT_REGION if public else None),
        anon=anon,
    )
    hashes = load_hashes(args.hashes) if args.hashes else None
    with storage_errors(bucket, storage, what="read"):
        report = fetch_weights(
            requests,
            args.dest,
            storage,
            bucket=bucket,
            hashes=hashes,
            dry_run=args.dry_run,
            progress=not args.no_progress,
            include_metadata=not args.no_metadata,
            include_weights=not args.metadata_only,
        )
    if args.dry_run:
        print(report.table())
    print(report.summary())


def _fetch_backbone(args: argparse.Namespace) -> int:
    import sys

    from berg_scale.models.families import VIT_B_32
    from berg_scale.weights.backbone import fetch_backbone, hash_prefix_of

    url = args.backbone_url or VIT_B_32.url
    path = args.backbone_to or str(VIT_B_32.default_path())
    if args.dry_run:
        hash_prefix_of(url)  # refuses a URL it could not verify before anything is fetched
        state = "present" if os.path.isfile(path) else "missing"
        print(f"backbone: {path} ({state}); would download {url} if missing (dry run)")
        return 0
    try:
        result = fetch_backbone(path, url, progress=not args.no_progress)
    except BergScaleError as exc:
        if not str(exc).startswith("cannot download"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        print(backbone_instructions(path, url), file=sys.stderr)
        return 1
    print(f"backbone: {result.path} ({result.state}, sha256 checked against {hash_prefix_of(url)})")
    if args.backbone_to:
        print(f"pass `backbone: {result.path}` in the run config (or copy it to {VIT_B_32.default_path().parent})")
    return 0


def run(args: argparse.Namespace) -> int:
    requests = _requests(args)
    print(BERG_TERMS)
    if requests:
        _fetch_berg(args, requests)
    return _fetch_backbone(args) if args.backbone else 0
