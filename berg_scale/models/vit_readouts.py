"""fsaverage fMRI and THINGS EEG readouts on shared ViT-B/32 features.

Per image BERG computes `p = ((x - m) / s - pm) @ C.T` (StandardScaler then PCA) and a
linear regression on `p`. We fold the scaler into the projection once at load time:

    p = (x - r) @ (C / s).T  -  ((m - r) / s + pm) @ C.T

with `r` one shared float32 centre (the first subject's scaler mean). Subtracting a
centre close to every subject's mean keeps the float32 product free of cancellation,
and because the centre is shared, all subjects' folded projections stack into a single
matrix: one product on the device projects every subject at once. The fold itself is
computed in float64 and stored as float32.

In bf16/fp16 the stacked projection is stored in that precision (half the memory) and
runs as one reduced-precision product with float32 accumulation, so it uses the tensor
cores like the backbone does; in fp32 it would otherwise cost more than the bf16 backbone
for eight subjects. The regressions stay float32 (they are small for ROI readouts, and
whole-brain outputs are bound by their size, not by arithmetic).
"""

from __future__ import annotations

import contextlib
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
from berg_scale.models.preprocess import VIT_CROP
from berg_scale.models.registry import get_card, register_model
from berg_scale.models.spec import ReadoutError, ReadoutSpec, ResolvedSelection
from berg_scale.models.vit import (
    N_FEATURES,
    VitFeatures,
    load_vit_b_32,
    resolve_backbone_path,
)
from berg_scale.models.weights_check import WeightFormatError, get_array, get_key

FOLD_CHUNK = 16384  # feature columns per float64 folding step (bounds temporary memory)
PROJECTION_CHUNK = 4800  # features per float32 partial product (see VitGroup.project)
FSAVERAGE_ID = "fmri-nsd_fsaverage-vit_b_32"
EEG_ID = "eeg-things_eeg_2-vit_b_32"


@dataclass
class _Projection:
    """A subject's folded PCA: rows [start, start + k) of the stacked projection."""

    start: int
    k: int


@dataclass
class _Regression:
    """One readout: linear map from its subject's PCA scores to its outputs."""

    spec: ReadoutSpec
    name: str
    projection: _Projection
    coef: torch.Tensor  # (n_out, k)
    intercept: torch.Tensor  # (n_out,)
    out_shape: tuple[int, ...]
    mean_index: torch.Tensor | None  # outputs averaged for the ":mean" column


def fold_scaler_into_pca(
    components: np.ndarray,
    scale: np.ndarray,
    scaler_mean: np.ndarray,
    pca_mean: np.ndarray,
    centre: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(C / s) as float32 and the offset -((m - r) / s + pm) @ C.T, both from float64 math."""
    k, n = components.shape
    weight = np.empty((k, n), dtype=np.float32)
    offset = np.zeros(k, dtype=np.float64)
    centre64 = centre.astype(np.float64)
    for j in range(0, n, FOLD_CHUNK):
        cols = slice(j, j + FOLD_CHUNK)
        block = components[:, cols].astype(np.float64)
        inv_scale = 1.0 / scale[cols].astype(np.float64)
        weight[:, cols] = block * inv_scale
        shift = (scaler_mean[cols].astype(np.float64) - centre64[cols]) * inv_scale
        offset += block @ (shift + pca_mean[cols].astype(np.float64))
    return weight, (-offset).astype(np.float32)


def _load_pca(weights: dict[str, Any], source: str, k_expected: int | None) -> dict[str, np.ndarray]:
    scale = get_array(weights, ("scaler_param", "scale_"), source, shape=(N_FEATURES,))
    if np.any(scale <= 0):
        raise WeightFormatError(f"{source}: scaler_param/scale_ must be positive")
    mean = get_array(weights, ("scaler_param", "mean_"), source, shape=(N_FEATURES,))
    components = get_array(weights, ("pca_param", "components_"), source, shape=(k_expected, N_FEATURES))
    pca_mean = get_array(weights, ("pca_param", "mean_"), source, shape=(N_FEATURES,))
    for key in ("n_features_in_",):
        if int(get_key(weights, ("scaler_param", key), source)) != N_FEATURES:
            raise WeightFormatError(f"{source}: scaler_param/{key} must be {N_FEATURES}")
    return {"scale": scale, "mean": mean, "components": components, "pca_mean": pca_mean}


def _regression_arrays(
    params: Any, source: str, prefix: tuple[str, ...], k: int
) -> tuple[np.ndarray, np.ndarray]:
    coef = get_array(params, (*prefix, "coef_"), source, ndim=2)
    if coef.shape[1] != k:
        raise WeightFormatError(
            f"{source}: {'/'.join(prefix)}/coef_ has {coef.shape[1]} columns but the PCA has {k} components"
        )
    intercept = get_array(params, (*prefix, "intercept_"), source, shape=(coef.shape[0],))
    return coef, intercept


def _index_array(value: Any, source: str, name: str, n_rows: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or (value.size and value.dtype.kind not in "iu"):
        raise WeightFormatError(f"{source}: {name} must be a 1-D integer index array")
    idx = value.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise WeightFormatError(f"{source}: {name} has indices outside 0..{n_rows - 1}")
    return idx


def eeg_time_attrs(times: np.ndarray, t_idx: np.ndarray, unit: Any) -> dict[str, Any]:
    """Sampling rate (from the metadata's full time axis), first kept sample and the unit.

    `tmin` is the time of the first kept sample in seconds; a time-point selection with
    gaps keeps the full-axis sampling rate, and readers check the spacing themselves.
    """
    attrs: dict[str, Any] = {}
    steps = np.diff(times.astype(np.float64))
    if steps.size and np.all(steps > 0) and np.allclose(steps, steps.mean(), rtol=1e-6, atol=1e-9):
        attrs["sfreq"] = float(np.round(1.0 / steps.mean(), 6))
    if t_idx.size:
        attrs["tmin"] = float(times[t_idx[0]])
    if unit:
        attrs["unit"] = str(unit)
    return attrs


class VitReadoutModel(EncodingModel):
    """Shared group builder of both ViT-B/32 model families."""

    group_key: ClassVar[str] = "vit_b_32"

    @classmethod
    def build_group(cls, specs: list[ReadoutSpec], ctx: BuildContext) -> ReadoutGroup:
        return VitGroup(specs, ctx)


@register_model(get_card(FSAVERAGE_ID))
class FsaverageModel(VitReadoutModel):
    model_id: ClassVar[str] = FSAVERAGE_ID


@register_model(get_card(EEG_ID))
class EegModel(VitReadoutModel):
    model_id: ClassVar[str] = EEG_ID


def shared_backbone(ctx: BuildContext) -> VitFeatures:
    """One backbone per device and file, whoever asks for it."""
    path = resolve_backbone_path(ctx.backbone_path, ctx.store.storage)
    key = f"vit_b_32:{path}"
    if key not in ctx.shared:
        backbone = load_vit_b_32(path, ctx.device, ctx.store.storage)
        if ctx.compile:
            backbone.compile_blocks()
        ctx.shared[key] = backbone
    return ctx.shared[key]


class VitGroup(ReadoutGroup):
    """Backbone once, one stacked projection for all subjects, then each regression."""

    recipe = families.VitReadoutFamily.recipe

    def __init__(self, specs: list[ReadoutSpec], ctx: BuildContext) -> None:
        self.ctx = ctx
        self.columns: list[OutputColumn] = []
        self.weight_files: list[str] = []
        resolved = [(spec, spec.resolve()) for spec in specs]
        self.backbone = shared_backbone(ctx)
        self.projection_dtype = ctx.autocast_dtype or torch.float32
        self.float32_accumulator_out = True  # cuBLAS's mm(out_dtype=float32), while it works
        files = []
        for spec, _ in resolved:
            rel = families.weight_files(spec.model_id, spec.subject)[0]
            if rel not in files:
                files.append(rel)
        self.weight_files = list(files)
        # Identical files (same content) are folded once.
        digest_of = {rel: ctx.store.sha256(rel) for rel in files}
        projections: dict[str, _Projection] = {}
        loaded: dict[str, dict[str, Any]] = {}
        blocks: list[torch.Tensor] = []
        offsets: list[torch.Tensor] = []
        centre: np.ndarray | None = None
        start = 0
        self.regressions: list[_Regression] = []
        for spec, sel in resolved:
            rel = families.weight_files(spec.model_id, spec.subject)[0]
            digest = digest_of[rel]
            card = sel.card
            if rel not in loaded:
                weights = ctx.store.load(rel, f"{spec.model_id} subject {spec.subject} weights")
                if not isinstance(weights, dict):
                    raise WeightFormatError(f"{ctx.store.url(rel)}: expected a dict of parameters")
                loaded[rel] = weights
            weights = loaded[rel]
            source = ctx.store.url(rel)
            if digest not in projections:
                pca = _load_pca(weights, source, card.pca_components)
                if centre is None:
                    centre = pca["mean"].astype(np.float32)
                weight, offset = fold_scaler_into_pca(
                    pca["components"], pca["scale"], pca["mean"], pca["pca_mean"], centre
                )
                k = weight.shape[0]
                blocks.append(torch.from_numpy(weight).to(device=ctx.device, dtype=self.projection_dtype))
                offsets.append(torch.from_numpy(offset).to(ctx.device))
                del weight, pca
                projections[digest] = _Projection(start, k)
                start += k
            if isinstance(weights.get("pca_param"), dict) and "components_" in weights["pca_param"]:
                # The folded copy replaces the components; free the large original.
                weights["pca_param"] = {
                    key: value for key, value in weights["pca_param"].items() if key != "components_"
                }
            projection = projections[digest]
            if spec.model_id == EEG_ID:
                regression, columns = self._eeg_readout(spec, sel, weights, source, projection)
            else:
                regression, columns = self._fsaverage_readout(spec, sel, weights, source, projection)
            self.regressions.append(regression)
            self.columns.extend(columns)
        loaded.clear()
        ctx.shared.pop("metadata", None)  # only needed while building
        assert centre is not None
        self.centre = torch.from_numpy(centre).to(ctx.device)
        self.projection = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
        del blocks
        self.offset = torch.cat(offsets)
        if self.projection_dtype is torch.float16 and not bool(torch.isfinite(self.projection).all()):
            raise BergScaleError(
                "the folded PCA projection exceeds float16's range (a scaler scale_ is tiny); "
                "use precision bf16 or fp32"
            )

    # --- readout construction -------------------------------------------------------

    def _metadata(self, spec: ReadoutSpec) -> tuple[dict[str, Any] | None, str]:
        rel = families.metadata_file(spec.model_id, spec.subject)
        source = self.ctx.store.url(rel)
        cache = self.ctx.shared.setdefault("metadata", {})
        if rel not in cache:
            cache[rel] = self._read_metadata(rel, source, spec)
        return cache[rel], source

    def _read_metadata(self, rel: str, source: str, spec: ReadoutSpec) -> dict[str, Any] | None:
        try:
            self.ctx.store.require(rel, "metadata")
        except FileNotFoundError:
            return None
        data = self.ctx.store.load(rel, f"{spec.model_id} subject {spec.subject} metadata")
        if not isinstance(data, dict):
            raise WeightFormatError(f"{source}: expected a metadata dict")
        return data

    def _fsaverage_readout(
        self,
        spec: ReadoutSpec,
        sel: ResolvedSelection,
        weights: dict[str, Any],
        source: str,
        projection: _Projection,
    ) -> tuple[_Regression, list[OutputColumn]]:
        card = sel.card
        n_vertices = int(card.vertices_per_hemisphere or 0)
        meta, meta_source = self._metadata(spec)
        needs_meta = sel.roi is not None or "mean" in spec.outputs
        if needs_meta and meta is None:
            raise BergScaleError(
                f"{meta_source} is missing; it is needed for ROI selection and ncsnr "
                "(copy BERG's metadata file into the root)"
            )
        coefs, intercepts, hemis, vertices, ncsnrs = [], [], [], [], []
        for hemi in families.FSAVERAGE.hemispheres:
            coef, intercept = _regression_arrays(weights, source, (f"{hemi}_reg_param",), projection.k)
            n_rows = coef.shape[0]
            if sel.roi is not None:
                rois = get_key(meta, ("fmri", f"{hemi}_fsaverage_rois"), meta_source)
                idx = _index_array(
                    get_key(rois, (sel.roi,), meta_source), meta_source, f"{hemi}_fsaverage_rois/{sel.roi}", n_rows
                )
            else:
                chosen = sel.lh_vertices if hemi == "lh" else sel.rh_vertices
                idx = np.arange(n_vertices, dtype=np.int64) if chosen is None else chosen
                if idx.size and idx.max() >= n_rows:
                    raise WeightFormatError(
                        f"{source}: {hemi}_reg_param/coef_ has {n_rows} rows, fewer than the "
                        f"{n_vertices} fsaverage vertices the selection needs"
                    )
            if spec.downsample == "fsaverage5":
                idx = idx[idx < int(card.fsaverage5_vertices or 0)]
            coefs.append(coef[idx])
            intercepts.append(intercept[idx])
            hemis.append(np.full(idx.size, hemi))
            vertices.append(idx)
            if meta is not None and isinstance(meta.get("fmri"), dict) and f"{hemi}_ncsnr" in meta["fmri"]:
                ncsnr = get_array(meta, ("fmri", f"{hemi}_ncsnr"), meta_source, ndim=1, finite=False)
                if ncsnr.shape[0] < n_rows:
                    raise WeightFormatError(f"{meta_source}: fmri/{hemi}_ncsnr is shorter than the model")
                ncsnrs.append(ncsnr[idx].astype(np.float32))
        coords: dict[str, np.ndarray] = {
            "hemisphere": np.concatenate(hemis).astype(str),
            "vertex": np.concatenate(vertices),
        }
        if len(ncsnrs) == 2:
            coords["ncsnr"] = np.concatenate(ncsnrs)
        return self._finish(spec, projection, np.concatenate(coefs), np.concatenate(intercepts),
                            families.FSAVERAGE.dims, coords, meta_source)

    def _eeg_readout(
        self,
        spec: ReadoutSpec,
        sel: ResolvedSelection,
        weights: dict[str, Any],
        source: str,
        projection: _Projection,
    ) -> tuple[_Regression, list[OutputColumn]]:
        meta, meta_source = self._metadata(spec)
        if meta is None:
            raise BergScaleError(
                f"{meta_source} is missing; EEG models need it for channel names and times "
                "(copy BERG's metadata file into the root)"
            )
        ch_names = get_key(meta, ("eeg", "ch_names"), meta_source)
        if not isinstance(ch_names, list) or not all(isinstance(c, str) for c in ch_names):
            raise WeightFormatError(f"{meta_source}: eeg/ch_names must be a list of strings")
        times = get_array(meta, ("eeg", "times"), meta_source, ndim=1)
        n_ch, n_t = len(ch_names), times.shape[0]
        if sel.channels is not None:
            missing = [c for c in sel.channels if c not in ch_names]
            if missing:
                raise ReadoutError(f"channel(s) {missing} are not in this subject's metadata ({meta_source})")
            ch_idx = np.array([ch_names.index(c) for c in sel.channels], dtype=np.int64)
        else:
            ch_idx = np.arange(n_ch)
        t_idx = np.arange(n_t) if sel.timepoints is None else sel.timepoints
        if t_idx.size and t_idx.max() >= n_t:
            raise ReadoutError(f"selected time point {int(t_idx.max())} is beyond the model's {n_t} time points")
        reg = get_key(weights, ("reg_param",), source)
        if not isinstance(reg, dict) or not reg:
            raise WeightFormatError(f"{source}: reg_param must be a non-empty dict of repetitions")
        n_rep = len(reg)
        coefs, intercepts = [], []
        for r in range(1, n_rep + 1):
            coef, intercept = _regression_arrays(reg, source, (f"rep-{r}",), projection.k)
            if coef.shape[0] != n_ch * n_t:
                raise WeightFormatError(
                    f"{source}: reg_param/rep-{r}/coef_ has {coef.shape[0]} rows, expected "
                    f"{n_ch} channels x {n_t} times = {n_ch * n_t}"
                )
            c = coef.reshape(n_ch, n_t, projection.k)[ch_idx][:, t_idx]
            coefs.append(c.reshape(-1, projection.k))
            intercepts.append(intercept.reshape(n_ch, n_t)[ch_idx][:, t_idx].reshape(-1))
        coords = {
            "repetition": np.arange(1, n_rep + 1),
            "channel": np.array([ch_names[i] for i in ch_idx]),
            "time": times[t_idx].astype(np.float64),
        }
        return self._finish(spec, projection, np.concatenate(coefs), np.concatenate(intercepts),
                            families.EEG.dims, coords, meta_source,
                            shape=(n_rep, ch_idx.size, t_idx.size),
                            attrs=eeg_time_attrs(times, t_idx, sel.card.output.get("unit")))

    def _finish(
        self,
        spec: ReadoutSpec,
        projection: _Projection,
        coef: np.ndarray,
        intercept: np.ndarray,
        dims: tuple[str, ...],
        coords: dict[str, np.ndarray],
        meta_source: str,
        shape: tuple[int, ...] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> tuple[_Regression, list[OutputColumn]]:
        name = spec.column_base
        shape = shape or (coef.shape[0],)
        mean_index = None
        columns = []
        if "responses" in spec.outputs:
            columns.append(OutputColumn(name, shape, spec.dtype, dims, coords, spec, "responses", dict(attrs or {})))
        if "mean" in spec.outputs:
            if "ncsnr" not in coords:
                raise BergScaleError(
                    f"{name}:mean needs ncsnr, but {meta_source} has none; request outputs=('responses',)"
                )
            keep = np.flatnonzero(coords["ncsnr"] > spec.ncsnr_threshold)
            if keep.size == 0:
                raise ReadoutError(
                    f"{name}: no vertex/voxel has ncsnr > {spec.ncsnr_threshold}; lower ncsnr_threshold"
                )
            mean_index = torch.from_numpy(keep).to(self.ctx.device)
            columns.append(mean_column(spec, name, coords["ncsnr"]))
        regression = _Regression(
            spec=spec,
            name=name,
            projection=projection,
            coef=torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float32)).to(self.ctx.device),
            intercept=torch.from_numpy(np.ascontiguousarray(intercept, dtype=np.float32)).to(self.ctx.device),
            out_shape=shape,
            mean_index=mean_index,
        )
        return regression, columns

    # --- forward ------------------------------------------------------------------

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """PCA scores of every subject at once: (B, 460800) -> (B, sum of k)."""
        if self.projection_dtype is not torch.float32:
            return self._project_reduced(features)
        return self._project_fp32(features)

    def _project_reduced(self, features: torch.Tensor) -> torch.Tensor:
        """One bf16/fp16 product of the centred features, accumulated in float32.

        Centring happens in float32 before the cast, so the reduced format holds the
        deviations from the centre, not the large raw activations. cuBLAS writes the
        float32 accumulator out directly (`out_dtype`); elsewhere the product's output
        is rounded to the reduced format once before the offset is added.
        """
        centred = (features - self.centre).to(self.projection_dtype)
        scores = None
        if centred.is_cuda and self.float32_accumulator_out:
            try:
                scores = torch.mm(centred, self.projection.T, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # a device or build without the kernel
                self.float32_accumulator_out = False
        if scores is None:
            scores = torch.mm(centred, self.projection.T).float()
        return scores + self.offset

    def _project_fp32(self, features: torch.Tensor) -> torch.Tensor:
        """float32 products over slices, partial sums in float64.

        The 460,800-long dot products run as float32 matrix products over slices of
        PROJECTION_CHUNK features whose partial sums are added in float64; a single
        float32 product would lose about 4e-6 relative accuracy to rounding, slices
        bring that below 1e-6 at the same cost in multiply-adds.
        """
        total = self.offset.to(torch.float64).expand(features.shape[0], -1).clone()
        for start in range(0, features.shape[1], PROJECTION_CHUNK):
            cols = slice(start, start + PROJECTION_CHUNK)
            centred = features[:, cols] - self.centre[cols]
            total += torch.mm(centred, self.projection[:, cols].T)
        return total.to(torch.float32)

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Compile the backbone for these batch sizes, in this group's precision."""
        for size in batch_sizes:
            pixels = torch.zeros((size, 3, VIT_CROP, VIT_CROP), device=self.ctx.device)
            with self._precision():
                self.backbone.warm_up(pixels)

    def _precision(self) -> Any:
        dtype = self.ctx.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._precision():
            features = self.backbone(pixels)
        features = features.float()
        scores = self.project(features)
        del features
        out: dict[str, torch.Tensor] = {}
        for reg in self.regressions:
            p = scores[:, reg.projection.start : reg.projection.start + reg.projection.k]
            y = torch.addmm(reg.intercept, p, reg.coef.T)
            if "responses" in reg.spec.outputs:
                out[reg.name] = y.reshape(y.shape[0], *reg.out_shape)
            if reg.mean_index is not None:
                out[f"{reg.name}:mean"] = y.index_select(1, reg.mean_index).mean(dim=1)
        return out
