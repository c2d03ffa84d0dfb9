"""ModelSet on a CUDA device: fp32 vs bf16 images/s, bf16 error, and fp32 GPU vs CPU.

    python benchmarks/gpu_models.py [--images 500] [--root DIR] [--out FILE.md]

Builds a synthetic BERG root with the published shapes (8 fsaverage subjects with 250
PCA components, 2 EEG subjects, fwRF V1 with 1,350 voxels) unless --root is given.
Exits with status 2 and a one-line message when no CUDA device is present.
Error metric: max |x - reference| / max |reference| per output column (worst column shown).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

FSAV = "fmri-nsd_fsaverage-vit_b_32"
EEG = "eeg-things_eeg_2-vit_b_32"
FWRF = "fmri-nsd-fwrf"


def _worst(a: dict, b: dict) -> tuple[float, str]:
    import numpy as np

    worst, name = 0.0, ""
    for key, ref in b.items():
        ref64 = ref.astype(np.float64)
        err = float(np.max(np.abs(a[key].astype(np.float64) - ref64)) / max(np.max(np.abs(ref64)), 1e-30))
        if err >= worst:
            worst, name = err, key
    return worst, name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--root", help="existing synthetic root (default: build one in a temp dir)")
    parser.add_argument("--out", help="write the markdown table here as well")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_models.py: no CUDA device available; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2

    import numpy as np

    from berg_scale.models import ModelSet, ReadoutSpec
    from berg_scale.offline_env import apply_offline_environment
    from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root

    apply_offline_environment()
    tmp = None
    if args.root:
        root = Path(args.root)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="berg-gpu-")
        root = Path(tmp.name)
        t0 = time.perf_counter()
        make_synthetic_root(root, models=(FSAV, EEG, FWRF), subjects=(1,), rois=("V1",),
                            fsaverage_subjects=range(1, 9), fsaverage_components=250,
                            eeg_subjects=(1, 2), fwrf_voxels={"V1": 1350}, seed=0)
        print(f"synthetic root built in {time.perf_counter() - t0:.0f} s", flush=True)
    backbone = str(backbone_file(root))
    readouts = {
        "8 fsaverage + 2 EEG subjects (shared ViT)": [ReadoutSpec(FSAV, s) for s in range(1, 9)]
        + [ReadoutSpec(EEG, s) for s in (1, 2)],
        "1 fsaverage subject": [ReadoutSpec(FSAV, 1)],
        "1 fwRF ROI (V1)": [ReadoutSpec(FWRF, 1, {"roi": "V1"})],
    }
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.images, 3, 425, 425), dtype=np.uint8))
    check = images[:8]
    lines = [
        f"# Models on {torch.cuda.get_device_name(0)}",
        "",
        f"{args.images} images of 425 x 425, batches of 100; images/s after one warm-up batch.",
        "",
        "| readouts | fp32 images/s | bf16 images/s | bf16 vs fp32 (worst column) | fp32 GPU vs fp32 CPU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, specs in readouts.items():
        rates, outputs = {}, {}
        for precision in ("fp32", "bf16"):
            ms = ModelSet(str(root), specs, device="cuda", precision=precision, backbone_path=backbone)
            ms.forward(images[:100])
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for start in range(0, args.images, 100):
                ms.forward_tensors(images[start : start + 100])
            torch.cuda.synchronize()
            rates[precision] = args.images / (time.perf_counter() - t0)
            outputs[precision] = ms.forward(check)
            del ms
            torch.cuda.empty_cache()
        cpu = ModelSet(str(root), specs, device="cpu", precision="fp32", backbone_path=backbone).forward(check)
        bf16_err, bf16_col = _worst(outputs["bf16"], outputs["fp32"])
        gpu_err, _ = _worst(outputs["fp32"], cpu)
        lines.append(f"| {label} | {rates['fp32']:.0f} | {rates['bf16']:.0f} | {bf16_err:.2e} ({bf16_col}) | {gpu_err:.2e} |")
        print(lines[-1], flush=True)
    lines.append(f"\nPeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
