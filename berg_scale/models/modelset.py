"""`ModelSet`: every requested readout on one device, computed in one pass per batch.

Readouts are grouped by the computation they share (all ViT-B/32 readouts form one
group, all fwRF readouts another); each batch is preprocessed once per recipe and fed
to every group. Results come back as NumPy arrays, one per output column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from berg_scale import __version__
from berg_scale.config import ResourcesConfig, default_of, resolve_exact_resize
from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions
from berg_scale.models.base import BuildContext, OutputColumn, ReadoutGroup
from berg_scale.models.pending_outputs import PendingOutputs, to_host
from berg_scale.models.preprocess import (
    check_images,
    get_recipe,
    presized,
    recipe_resize_size,
    resize_on_cpu,
)
from berg_scale.models.registry import get_implementation
from berg_scale.models.spec import ReadoutSpec
from berg_scale.models.families import backbones_of
from berg_scale.models.store import WeightStore, backbone_hash_key, sha256_of_url

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION: str = default_of(ResourcesConfig, "precision")
DEFAULT_BATCH_SIZE: int = default_of(ResourcesConfig, "batch_size")

__all__ = ["ModelSet", "OutputColumn", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> first CUDA device if present, else CPU; other torch devices (`mps`,
    `cpu:0`, `xpu`) are accepted when torch reports their backend usable."""
    if isinstance(device, torch.device):
        text = str(device)
    else:
        text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise BergScaleError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise BergScaleError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise BergScaleError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise BergScaleError(
            f"invalid device {device!r}; use auto, cpu, cuda, cuda:N or another torch device (mps, xpu)"
        ) from None
    if not _backend_available(dev):
        raise BergScaleError(f"device {device!r} requested but torch has no usable {dev.type} backend here")
    return dev


def _backend_available(dev: torch.device) -> bool:
    """Whether torch reports the device's backend usable (unknown kinds are trusted)."""
    if dev.type == "cpu":
        return True
    if dev.type == "mps":
        return bool(torch.backends.mps.is_available())
    check = getattr(getattr(torch, dev.type, None), "is_available", None)
    return bool(check()) if callable(check) else True


def _exact_fp32_on_cuda() -> None:
    """fp32 must mean fp32: Ampere+ would otherwise run convolutions in TF32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class ModelSet:
    """Load readouts once; `forward(images)` returns a dict of column -> array."""

    def __init__(
        self,
        berg_root: str,
        readouts: Sequence[ReadoutSpec],
        device: str | torch.device = "auto",
        precision: str = DEFAULT_PRECISION,
        batch_size: int = DEFAULT_BATCH_SIZE,
        backbone_path: str | None = None,
        storage: StorageOptions | None = None,
        exact_resize: bool | None = None,
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise BergScaleError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BergScaleError(f"batch_size must be a positive integer, got {batch_size!r}")
        readouts = list(readouts)
        if not readouts:
            raise BergScaleError("ModelSet needs at least one ReadoutSpec")
        for spec in readouts:
            if not isinstance(spec, ReadoutSpec):
                raise BergScaleError(f"readouts must be ReadoutSpec objects, got {type(spec).__name__}")
            spec.resolve()  # validate everything before any file is read
        names = [spec.column_base for spec in readouts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BergScaleError(f"readouts requested twice: {duplicates}; merge their outputs instead")
        self.readouts = readouts
        self.precision = precision
        # BERG resamples on the CPU; CUDA's kernel rounds a few pixels differently, so the
        # exact path (default for fp32) resamples on the CPU at some cost in GPU throughput.
        self.exact_resize = resolve_exact_resize(precision, exact_resize)
        self.batch_size = batch_size
        self.device = resolve_device(device)
        if self.device.type == "cuda" and precision == "fp32":
            _exact_fp32_on_cuda()
        self.store = WeightStore(berg_root, storage)
        self.storage = storage
        self.backbone_path = str(backbone_path) if backbone_path else None
        self.compile = bool(compile)
        self.context = BuildContext(self.store, self.device, precision, backbone_path, compile=self.compile)
        by_group: dict[tuple[str, Any], list[ReadoutSpec]] = {}
        for spec in readouts:
            implementation = get_implementation(spec.model_id)
            by_group.setdefault((implementation.group_key, implementation.build_group.__func__), []).append(spec)
        self.groups: list[ReadoutGroup] = []
        with torch.no_grad():
            for (_, _), specs in by_group.items():
                implementation = get_implementation(specs[0].model_id)
                self.groups.append(implementation.build_group(specs, self.context))
        order = {spec.column_base: i for i, spec in enumerate(readouts)}
        columns = [c for g in self.groups for c in g.columns]
        self.columns: list[OutputColumn[ReadoutSpec]] = sorted(
            columns, key=lambda c: (order[c.readout.column_base], c.kind != "responses")
        )
        self._hashes: dict[str, str] | None = None
        if self.compile:
            self._warm_up()

    # --- identity -----------------------------------------------------------------

    @property
    def weight_hashes(self) -> dict[str, str]:
        """sha256 of every file the readouts read: weights, metadata, a named backbone.

        The driver hashes the same files; a worker that finds other bytes behind the same
        names stops the run, so no response is made from files the ledger did not see.
        """
        if self._hashes is None:
            files = sorted({rel for g in self.groups for rel in g.weight_files} | set(self.store.loaded))
            hashes = {rel: self.store.sha256(rel) for rel in files}
            if self.backbone_path and backbones_of(spec.model_id for spec in self.readouts):
                hashes[backbone_hash_key(self.backbone_path)] = sha256_of_url(self.backbone_path, self.storage)
            self._hashes = hashes
        return dict(self._hashes)

    def _weight_file_hashes(self) -> dict[str, str]:
        files = {rel for g in self.groups for rel in g.weight_files}
        return {rel: digest for rel, digest in self.weight_hashes.items() if rel in files}

    @property
    def fingerprint(self) -> str:
        """Changes when readouts, weights or precision change (results would differ)."""
        payload = {
            "engine": __version__,
            "precision": self.precision,
            "exact_resize": self.exact_resize,
            **({"compile": True} if self.compile else {}),  # compiled kernels round differently
            "readouts": [json.loads(spec.key) for spec in self.readouts],
            # Weight files only: the ledger guards metadata and the backbone, and a fingerprint
            # that changed with them would refuse to resume outputs that were written before.
            "weights": self._weight_file_hashes(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def column(self, name: str) -> OutputColumn[ReadoutSpec]:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    # --- compute ------------------------------------------------------------------

    def cpu_resize_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The sizes this set's recipes resample (height, width) images to on the CPU.

        A decode process can make those copies ahead of time (`forward(presized=...)`),
        so the model's process no longer resamples. Empty when resizing happens on the
        GPU (not `exact_resize`), where a CPU copy would change the pixels.
        """
        if self.device.type != "cpu" and not self.exact_resize:
            return []
        sizes = [recipe_resize_size(group.recipe, height, width) for group in self.groups]
        return list(dict.fromkeys(size for size in sizes if size is not None))

    def forward(
        self,
        images: torch.Tensor | np.ndarray,
        presized: dict[tuple[int, int], torch.Tensor] | None = None,
    ) -> dict[str, np.ndarray]:
        """uint8 (B, 3, H, W) RGB images -> {column name: array with first axis B}.

        `presized` holds the same images already resized exactly (see `cpu_resize_sizes`).
        """
        return self.forward_async(images, presized).result()

    def forward_async(
        self,
        images: torch.Tensor | np.ndarray,
        presized: dict[tuple[int, int], torch.Tensor] | None = None,
    ) -> PendingOutputs:
        """`forward`, with its results still on their way to the host on a GPU: the
        caller can launch the next batch before `result()` waits for this one."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        check_images(images)
        parts: dict[str, list[torch.Tensor]] = {c.name: [] for c in self.columns}
        for start in range(0, images.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            batch = self.forward_tensors(images[part], {k: v[part] for k, v in (presized or {}).items()})
            for name, value in batch.items():
                parts[name].append(to_host(value))
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return PendingOutputs(parts, ready, images.shape[0], self.columns)

    def forward_tensors(
        self, images: torch.Tensor, presized_images: dict[tuple[int, int], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """One batch, results left on the device (already in each column's dtype)."""
        check_images(images)
        pixels = _to_device(images, self.device)
        prepared: dict[str, torch.Tensor] = {}
        results: dict[str, torch.Tensor] = {}
        with torch.no_grad(), resize_on_cpu(self.exact_resize), presized(presized_images):
            for group in self.groups:
                if group.recipe not in prepared:
                    prepared[group.recipe] = get_recipe(group.recipe)(pixels)
                results.update(group.forward(prepared[group.recipe]))
        dtypes = {c.name: c.dtype for c in self.columns}
        return {name: results[name].to(getattr(torch, dtypes[name])) for name in dtypes}

    def _warm_up(self) -> None:
        """Compile now, at a full and a smaller batch, so that no shard pays for it and a
        missing compiler fails the worker's start-up with a clear message."""
        sizes = [self.batch_size] + ([self.batch_size - 1] if self.batch_size > 2 else [])
        try:
            with torch.no_grad():
                for group in self.groups:
                    warm_up = getattr(group, "warm_up", None)
                    if warm_up is not None:
                        warm_up(sizes)
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise BergScaleError(
                f"resources.compile: torch.compile failed on {self.device} ({first[:300]}); it needs "
                "a C++ compiler on CPU or Triton on CUDA. Set resources.compile: false"
            ) from exc

    @property
    def backbone_passes(self) -> int:
        """How many ViT-B/32 forward passes ran (0 when no ViT readout is loaded)."""
        return sum(getattr(v, "forward_count", 0) for v in self.context.shared.values())


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> GPU through pinned memory, so the copy is asynchronous (non_blocking)."""
    if device.type != "cuda" or images.device.type != "cpu":
        return images.to(device, non_blocking=True)
    staging = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
    staging.copy_(images)
    return staging.to(device, non_blocking=True)
