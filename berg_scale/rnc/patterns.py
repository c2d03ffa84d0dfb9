"""Centred, unit-norm voxel patterns: the form in which RSMs are never materialised.

For one subject, corr(i, j) across voxels equals z_i . z_j with
z = (y - mean(y)) / ||y - mean(y)||. The averaged RSM of several subjects is then the
mean of per-subject Gram matrices, so a batch's 50 x 50 sub-RSM costs one small GEMM
per subject and no N x N matrix ever exists. Memory is N x D per ROI; bf16 or fp16
storage halves it (products are accumulated in float32).

An image whose filtered voxel pattern holds a NaN or an infinity (or whose norm
overflows float32) has no defined correlation with any other: its row is stored as
zeros and recorded, so that the analysis can leave the image out (see `finite`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Rows centred and scaled to unit norm (float32); constant and non-finite rows become zeros."""
    return normalise_patterns(y)[0]


def normalise_patterns(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit rows, whether each row was finite): constant rows become zeros, and so do rows
    with a NaN or infinite value or a norm beyond float32 (flagged False)."""
    y = y.to(torch.float32)
    finite = torch.isfinite(y).all(dim=1)
    y = torch.where(finite[:, None], y, torch.zeros_like(y))
    y = y - y.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    finite &= torch.isfinite(norm[:, 0]) & torch.isfinite(y).all(dim=1)
    unit = torch.where((norm > 0) & finite[:, None], y / norm.clamp_min(1e-30), torch.zeros_like(y))
    return unit, finite


@dataclass
class PatternSet:
    """Unit patterns of one ROI, one (N, V_s) block per subject, on one device."""

    subjects: tuple[int, ...]
    blocks: list[torch.Tensor]
    # subject -> image numbers whose pattern was not finite or overflowed (their rows hold zeros)
    nonfinite: dict[int, list[np.ndarray]] = field(default_factory=dict)

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

    def nonfinite_rows(self, subject: int) -> np.ndarray:
        """Sorted image numbers of `subject` whose voxel pattern was not finite."""
        parts = self.nonfinite.get(subject, [])
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def _store(self, subject: int, start: int, raw: torch.Tensor, out: torch.Tensor) -> None:
        unit, finite = normalise_patterns(raw)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().cpu().numpy().astype(np.int64) + start
            self.nonfinite.setdefault(subject, []).append(rows)
        out[start : start + unit.shape[0]] = unit.to(out.dtype)

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
        self._store(subject, start, torch.as_tensor(raw).to(block.device), block)

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
        if len({np.shape(a)[0] for a in arrays}) != 1:
            raise ValueError("every subject's patterns must cover the same images")
        patterns = cls(tuple(subjects), [torch.empty(np.shape(a), dtype=dtype, device=device) for a in arrays])
        for subject, array, out in zip(patterns.subjects, arrays, patterns.blocks):
            for start in range(0, array.shape[0], chunk):
                piece = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk])).to(device)
                patterns._store(subject, start, piece, out)
        return patterns
