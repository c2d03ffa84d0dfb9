"""Centred, unit-norm voxel patterns: the form in which RSMs are never materialised.

For one subject, corr(i, j) across voxels equals z_i . z_j with
z = (y - mean(y)) / ||y - mean(y)||. The averaged RSM of several subjects is then the
mean of per-subject Gram matrices, so a batch's 50 x 50 sub-RSM costs one small GEMM
per subject and no N x N matrix ever exists. Memory is N x D per ROI; bf16 or fp16
storage halves it (products are accumulated in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks the first CUDA device when present and the CPU otherwise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def unit_patterns(y: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (float32); constant rows become zeros."""
    y = y.to(torch.float32)
    y = y - y.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    return torch.where(norm > 0, y / norm.clamp_min(1e-30), torch.zeros_like(y))


@dataclass
class PatternSet:
    """Unit patterns of one ROI, one (N, V_s) block per subject, on one device."""

    subjects: tuple[int, ...]
    blocks: list[torch.Tensor]

    @property
    def n_images(self) -> int:
        return int(self.blocks[0].shape[0])

    @property
    def device(self) -> torch.device:
        return self.blocks[0].device

    @property
    def dims(self) -> int:
        return int(sum(b.shape[1] for b in self.blocks))

    def block(self, subject: int) -> torch.Tensor:
        return self.blocks[self.subjects.index(subject)]

    @classmethod
    def allocate(
        cls,
        subjects: Sequence[int],
        n_images: int,
        dims: Sequence[int],
        device: str | torch.device = "auto",
        storage: str = "float32",
    ) -> "PatternSet":
        """Empty storage to be filled chunk by chunk (`fill`), so raw responses of all
        N images never need to be held at once."""
        device = resolve_device(device) if isinstance(device, str) else device
        dtype = STORAGE_DTYPES[storage]
        return cls(tuple(subjects), [torch.empty((n_images, d), dtype=dtype, device=device) for d in dims])

    def fill(self, subject: int, start: int, raw: np.ndarray | torch.Tensor) -> None:
        """Normalise raw voxel responses of images start.. and store them."""
        block = self.block(subject)
        piece = torch.as_tensor(raw).to(block.device)
        block[start : start + piece.shape[0]] = unit_patterns(piece).to(block.dtype)

    @classmethod
    def from_arrays(
        cls,
        subjects: Sequence[int],
        arrays: Sequence[np.ndarray],
        device: str | torch.device = "auto",
        storage: str = "float32",
        chunk: int = 16_384,
    ) -> "PatternSet":
        """Normalise raw voxel responses chunk by chunk into preallocated storage."""
        device = resolve_device(device) if isinstance(device, str) else device
        dtype = STORAGE_DTYPES[storage]
        blocks = []
        for array in arrays:
            out = torch.empty(array.shape, dtype=dtype, device=device)
            for start in range(0, array.shape[0], chunk):
                piece = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk])).to(device)
                out[start : start + chunk] = unit_patterns(piece).to(dtype)
            blocks.append(out)
        if len({b.shape[0] for b in blocks}) != 1:
            raise ValueError("every subject's patterns must cover the same images")
        return cls(tuple(subjects), blocks)
