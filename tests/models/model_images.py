"""Test images for the model tests (a module of its own: every test folder has a conftest)."""

from __future__ import annotations

import numpy as np
import torch


def smooth_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Structured uint8 RGB images (blurry blobs plus noise), more natural than pure noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 5, 6)))
    up = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noisy = up.numpy() + rng.normal(0, 12, (n, 3, height, width))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
