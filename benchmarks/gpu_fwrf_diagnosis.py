"""Where does the fwRF model's fp32 GPU-vs-CPU difference come from?

Runs the same fwRF readout on CPU and CUDA for (a) 425 px images through ModelSet (fp32:
the 227 px resize runs on the CPU, as in BERG), (b) 425 px images resized on the GPU
first (what the fp32 path did before it resampled on the CPU), (c) images already 227 px
(no resize: only the network differs), each with and without cuDNN's deterministic
algorithms. Prints max |gpu - cpu| / max |cpu| per case. Exits with status 2 without a
CUDA device.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch


def smooth(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 6, 6)))
    up = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return np.clip(np.round(up.numpy() + rng.normal(0, 10, up.shape)), 0, 255).astype(np.uint8)


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_fwrf_diagnosis.py: no CUDA device available", file=sys.stderr)
        return 2
    from berg_scale.models import ModelSet, ReadoutSpec
    from berg_scale.synthetic.berg_root import make_synthetic_root

    root = tempfile.mkdtemp(prefix="fwrf-diag-")
    make_synthetic_root(root, models=["fmri-nsd-fwrf"], subjects=(1,), rois=("V1",), fwrf_voxels=1350, seed=0)
    spec = [ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})]
    cpu = ModelSet(root, spec, device="cpu")
    gpu = ModelSet(root, spec, device="cuda")
    column = cpu.columns[0].name
    from berg_scale.models.preprocess import resize_uint8

    large, small = smooth(64, 425, 1), smooth(64, 227, 2)
    resized_on_gpu = resize_uint8(torch.from_numpy(large).cuda(), [227, 227]).cpu()
    cases = (("425 px input, ModelSet fp32 (resize on the CPU)", large, torch.from_numpy(large)),
             ("425 px input resized on the GPU", large, resized_on_gpu),
             ("227 px input (no resize)", small, torch.from_numpy(small)))
    for label, reference_images, gpu_images in cases:
        ref = cpu.forward(torch.from_numpy(reference_images))[column]
        for deterministic in (False, True):
            torch.backends.cudnn.deterministic = deterministic
            torch.backends.cudnn.benchmark = False
            out = gpu.forward(gpu_images)[column]
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            print(f"{label}, cudnn.deterministic={deterministic}: max rel error {err:.2e}", flush=True)
    # The 227 px resize alone: how many pixels differ between devices after rounding?
    images = torch.from_numpy(smooth(64, 425, 1))
    on_cpu = resize_uint8(images, [227, 227]).to(torch.int16)
    on_gpu = resize_uint8(images.cuda(), [227, 227]).cpu().to(torch.int16)
    diff = (on_cpu - on_gpu).abs()
    print(f"227 px resize, GPU vs CPU: {int((diff > 0).sum())} of {diff.numel()} values differ, "
          f"max {int(diff.max())} grey level(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
