"""`fmri-nsd-fwrf`: one GNet + fwRF checkpoint per subject and ROI (two for split ROIs).

Every fwRF readout shares the 227 x 227 preprocessing; encoders are per checkpoint.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from berg_scale.errors import BergScaleError
from berg_scale.models import families
from berg_scale.models.base import (
    BuildContext,
    EncodingModel,
    OutputColumn,
    ReadoutGroup,
    mean_column,
)
from berg_scale.models.gnet import GNetEncoder, FwrfReadout
from berg_scale.models.registry import get_card, register_model
from berg_scale.models.spec import ReadoutError, ReadoutSpec
from berg_scale.models.weights_check import WeightFormatError, get_array, get_key, require_finite_state

FWRF_ID = "fmri-nsd-fwrf"


@dataclass
class _Part:
    """One checkpoint: its encoder and voxel read-out."""

    encoder: GNetEncoder
    readout: FwrfReadout


@dataclass
class _FwrfReadoutEntry:
    spec: ReadoutSpec
    name: str
    parts: list[_Part]
    mean_index: torch.Tensor | None


def _load_part(ctx: BuildContext, rel: str, subject: int, first: bool) -> _Part:
    source = ctx.store.url(rel)
    checkpoint = ctx.store.load(rel, f"{FWRF_ID} subject {subject} checkpoint")
    if not isinstance(checkpoint, dict):
        raise WeightFormatError(f"{source}: expected a checkpoint dict, found {type(checkpoint).__name__}")
    if first:
        # BERG requires stim_mean as a float32 NumPy array in the first file.
        get_array(checkpoint, ("stim_mean",), source, shape=(1, 3, 1, 1))
    enc_state = get_key(checkpoint, ("best_params", "enc"), source)
    fwrfs = get_key(checkpoint, ("best_params", "fwrfs"), source)
    if not isinstance(fwrfs, dict) or subject not in fwrfs:
        have = sorted(fwrfs) if isinstance(fwrfs, dict) else type(fwrfs).__name__
        raise WeightFormatError(f"{source}: best_params/fwrfs has no entry for subject {subject} (found {have})")
    voxel_state = fwrfs[subject]
    for state, what in ((enc_state, "best_params/enc"), (voxel_state, f"best_params/fwrfs/{subject}")):
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightFormatError(f"{source}: {what} must be a dict of tensors")
    bias = voxel_state.get("b")
    if not isinstance(bias, torch.Tensor) or bias.ndim != 1 or bias.shape[0] < 1:
        raise WeightFormatError(f"{source}: best_params/fwrfs/{subject}/b must be a non-empty 1-D tensor")
    encoder, readout = GNetEncoder(), FwrfReadout(int(bias.shape[0]))
    for module, state, what in ((encoder, enc_state, "encoder"), (readout, voxel_state, "fwRF read-out")):
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:400]
            raise WeightFormatError(f"{source}: {what} does not match the GNet/fwRF layout: {detail}") from None
    for module in (encoder, readout):
        module.eval().to(ctx.device)
        require_finite_state(module, source, type(module).__name__)
    if any((encoder.state_dict()[k] <= 0).any() for k in encoder.state_dict() if k.endswith("running_var")):
        raise WeightFormatError(f"{source}: BatchNorm running_var must be positive")
    return _Part(encoder, readout)


def _warn_if_split_means_differ(files: list[str], parts: list[_Part], ctx: BuildContext) -> None:
    """Split ROIs: each checkpoint's encoder subtracts its own `mu`; BERG's may not.

    BERG builds both encoders around one shared `stim_mean` array, so on the CPU loading
    the second checkpoint overwrites the first one's `mu` and both splits subtract the
    last file's value (on CUDA each keeps its own). berg-scale always uses each file's
    own `mu`; where the files disagree, BERG's CPU numbers for the first split differ.
    """
    first = parts[0].encoder.mu.detach()
    for rel, part in zip(files[1:], parts[1:]):
        if not torch.equal(first, part.encoder.mu.detach()):
            warnings.warn(
                f"{ctx.store.url(files[0])} and {ctx.store.url(rel)} hold different encoder mu "
                f"({first.flatten().tolist()} vs {part.encoder.mu.detach().flatten().tolist()}); "
                "berg-scale subtracts each file's own mu, while BERG on the CPU subtracts the "
                "last file's from both splits, so BERG's first-split voxels differ (docs/models.md)",
                UserWarning,
                stacklevel=2,
            )


@register_model(get_card(FWRF_ID))
class FwrfModel(EncodingModel):
    model_id: ClassVar[str] = FWRF_ID
    group_key: ClassVar[str] = "fwrf"

    @classmethod
    def build_group(cls, specs: list[ReadoutSpec], ctx: BuildContext) -> ReadoutGroup:
        return FwrfGroup(specs, ctx)


class FwrfGroup(ReadoutGroup):
    recipe = families.FWRF.recipe

    def __init__(self, specs: list[ReadoutSpec], ctx: BuildContext) -> None:
        self.ctx = ctx
        self.columns: list[OutputColumn] = []
        self.weight_files: list[str] = []
        self.entries: list[_FwrfReadoutEntry] = []
        parts_by_file: dict[str, _Part] = {}
        for spec in specs:
            sel = spec.resolve()
            files = families.weight_files(spec.model_id, spec.subject, sel.roi)
            parts = []
            for position, rel in enumerate(files):
                if rel not in parts_by_file:
                    parts_by_file[rel] = _load_part(ctx, rel, spec.subject, first=position == 0)
                    self.weight_files.append(rel)
                parts.append(parts_by_file[rel])
            if len(parts) > 1:
                _warn_if_split_means_differ(files, parts, ctx)
            n_voxels = sum(int(p.readout.b.shape[0]) for p in parts)
            coords: dict[str, np.ndarray] = {"voxel": np.arange(n_voxels)}
            meta_rel = families.metadata_file(spec.model_id, spec.subject, sel.roi)
            meta_source = ctx.store.url(meta_rel)
            meta = self._metadata(meta_rel, spec)
            ncsnr = self._ncsnr(meta, meta_rel, n_voxels)
            if ncsnr is not None:
                coords["ncsnr"] = ncsnr
            attrs: dict[str, Any] = {}
            volume = volume_coordinates(meta, ctx.store.url(meta_rel), n_voxels)
            if volume is not None:
                coords["volume_index"], attrs = volume
            name = spec.column_base
            if "responses" in spec.outputs:
                self.columns.append(OutputColumn(name, (n_voxels,), spec.dtype, families.FWRF.dims, coords, spec,
                                                 "responses", attrs))
            mean_index = None
            if "mean" in spec.outputs:
                if ncsnr is None:
                    raise BergScaleError(
                        f"{name}:mean needs fmri/ncsnr from {meta_source}, which is missing; copy "
                        "BERG's metadata file into the root or request outputs=('responses',)"
                    )
                keep = np.flatnonzero(ncsnr > spec.ncsnr_threshold)
                if keep.size == 0:
                    raise ReadoutError(f"{name}: no voxel has ncsnr > {spec.ncsnr_threshold}; lower ncsnr_threshold")
                mean_index = torch.from_numpy(keep).to(ctx.device)
                self.columns.append(mean_column(spec, name, ncsnr))
            self.entries.append(_FwrfReadoutEntry(spec, name, parts, mean_index))

    def _metadata(self, meta_rel: str, spec: ReadoutSpec) -> Any:
        store = self.ctx.store
        try:
            store.require(meta_rel, "metadata")
        except FileNotFoundError:
            return None
        return store.load(meta_rel, f"{FWRF_ID} subject {spec.subject} metadata")

    def _ncsnr(self, meta: Any, meta_rel: str, n_voxels: int) -> np.ndarray | None:
        store = self.ctx.store
        fmri = meta.get("fmri") if isinstance(meta, dict) else None
        if not isinstance(fmri, dict) or "ncsnr" not in fmri:
            return None
        ncsnr = get_array(meta, ("fmri", "ncsnr"), store.url(meta_rel), ndim=1, finite=False)
        if ncsnr.shape[0] != n_voxels:
            raise WeightFormatError(
                f"{store.url(meta_rel)}: fmri/ncsnr has {ncsnr.shape[0]} values but the checkpoints "
                f"predict {n_voxels} voxels"
            )
        return ncsnr.astype(np.float32)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = self.ctx.autocast_dtype
        cache: dict[int, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries:
            pieces = []
            for part in entry.parts:
                key = id(part)
                if key not in cache:
                    if dtype is None:
                        maps = part.encoder(pixels)
                    else:
                        with torch.autocast(self.ctx.device.type, dtype=dtype):
                            maps = part.encoder(pixels)
                    cache[key] = part.readout(tuple(m.float() for m in maps))
                pieces.append(cache[key])
            y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            if "responses" in entry.spec.outputs:
                out[entry.name] = y
            if entry.mean_index is not None:
                out[f"{entry.name}:mean"] = y.index_select(1, entry.mean_index).mean(dim=1)
        return out


def volume_coordinates(meta: Any, source: str, n_voxels: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(volume indices (n_voxels, 3), attrs with volume shape and affine) from the metadata.

    Voxel j of an fwRF ROI is the j-th True element of `roi_mask_volume` in C order, so
    `np.argwhere` gives its (i, j, k) index; the NIfTI affine maps indices to scanner mm.
    None when the metadata has no mask (the columns then carry positions only).
    """
    fmri = meta.get("fmri") if isinstance(meta, dict) else None
    if not isinstance(fmri, dict) or "roi_mask_volume" not in fmri:
        return None
    mask = fmri["roi_mask_volume"]
    if not isinstance(mask, np.ndarray) or mask.ndim != 3:
        raise WeightFormatError(f"{source}: fmri/roi_mask_volume must be a 3-D array")
    indices = np.argwhere(mask.astype(bool)).astype(np.int64)
    if indices.shape[0] != n_voxels:
        raise WeightFormatError(
            f"{source}: fmri/roi_mask_volume marks {indices.shape[0]} voxels but the checkpoints "
            f"predict {n_voxels}"
        )
    attrs: dict[str, Any] = {"volume_shape": [int(n) for n in mask.shape]}
    if "fmri_affine" in fmri:
        affine = get_array(meta, ("fmri", "fmri_affine"), source, shape=(4, 4))
        attrs["affine"] = affine.astype(np.float64).tolist()
    return indices, attrs
