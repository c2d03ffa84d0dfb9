"""Sizing a generation run before paying for it: images, output bytes, GPU-hours, wall time.

Output size is predicted column by column from the readouts, in the units the engine
writes (see `berg_scale.io.response_writer`): each response column is a fixed-size list
of float32/float16 values, each `:mean` column one float, plus the identity columns
(key, shard, index, status, error). The prediction is the values' bytes: the Arrow
(uncompressed) size a reader holds in memory, less validity bitmaps (pyarrow adds one bit
per value to float32 columns read back from Parquet, 3 %, and none to float16 ones).
Parquet with zstd stores float responses at about that size too (within ~10 %, measured
in the tests), because noisy mantissas hardly compress, so the figure doubles as a disk
estimate.

Widths come, in order of preference, from the BERG metadata (exact per subject), from
the model card (EEG shapes, whole-hemisphere fsaverage), or from the subject-1 voxel
counts documented for fwRF (approximate for other subjects). A column whose width none
of these know is reported as unknown, never guessed, unless `assume_width` is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import is_remote
from berg_scale.models import layout

FSAVERAGE_ID = "fmri-nsd_fsaverage-vit_b_32"
EEG_ID = "eeg-things_eeg_2-vit_b_32"
FWRF_ID = layout.FWRF_ID
PUBLISHED_EEG_REPETITIONS = 4
# Subject-1 voxel counts of the published fwRF models (docs/berg-format.md, section 8.1).
FWRF_SUBJECT1_VOXELS = {
    "V1": 1350, "V2": 1433, "V3": 1187, "hV4": 687, "EBA": 2971, "FBA-2": 430, "OFA": 355,
    "FFA-1": 484, "FFA-2": 310, "PPA": 1033, "RSC": 566, "OPA": 1611, "OWFA": 464,
    "VWFA-1": 773, "VWFA-2": 505, "mfs-words": 165, "early": 5917, "midventral": 986,
    "midlateral": 834, "midparietal": 950, "parietal": 3548, "lateral": 7799, "ventral": 7604,
}
# Arrow layout per row: a string costs a 4-byte offset plus its characters.
OFFSET_BYTES = 4
_VALUE_BYTES = {"float32": 4, "float16": 2}
_PLAN_HINT = re.compile(r"^#\s*plan:\s*(.+)$", re.MULTILINE)


@dataclass
class ColumnEstimate:
    """One output column: its width per image and where that width came from."""

    name: str
    kind: str  # responses | mean
    width: int | None
    dtype: str
    source: str

    @property
    def bytes_per_image(self) -> float | None:
        if self.width is None:
            return None
        return self.width * _VALUE_BYTES[self.dtype]


@dataclass
class Plan:
    """The estimate for one config; `render` gives the table `berg-scale plan` prints."""

    images: int
    images_source: str
    shards: list[str]
    columns: list[ColumnEstimate]
    id_bytes_per_image: float
    gpus: float
    gpus_source: str
    images_per_second_per_gpu: float
    rate_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def unknown_columns(self) -> list[ColumnEstimate]:
        return [c for c in self.columns if c.width is None]

    @property
    def response_bytes_per_image(self) -> float:
        return sum(c.bytes_per_image or 0.0 for c in self.columns)

    @property
    def bytes_per_image(self) -> float:
        return self.response_bytes_per_image + self.id_bytes_per_image

    @property
    def total_bytes(self) -> float:
        return self.bytes_per_image * self.images

    @property
    def gpu_hours(self) -> float:
        return self.images / self.images_per_second_per_gpu / 3600.0

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / max(self.gpus, 1e-9)

    def render(self, max_columns: int = 40) -> str:
        from berg_scale.weights.fetch import human_bytes

        lines = [f"input: {len(self.shards)} shards, {self.images:,} images ({self.images_source})"]
        lines.append(f"{'column':<56} {'width':>9} {'dtype':>8} {'bytes/image':>12}  width from")
        for column in self.columns[:max_columns]:
            width = f"{column.width:,}" if column.width is not None else "unknown"
            size = f"{column.bytes_per_image:,.0f}" if column.width is not None else "?"
            lines.append(f"{column.name:<56} {width:>9} {column.dtype:>8} {size:>12}  {column.source}")
        if len(self.columns) > max_columns:
            rest = self.columns[max_columns:]
            lines.append(f"... and {len(rest)} more columns ({sum(c.bytes_per_image or 0 for c in rest):,.0f} bytes/image)")
        lines.append(f"{'key, shard, index, status, error':<56} {'':>9} {'':>8} {self.id_bytes_per_image:>12,.0f}")
        bound = " (lower bound: some widths unknown)" if self.unknown_columns else ""
        lines.append(
            f"per image: {human_bytes(self.bytes_per_image)}; output total: "
            f"{human_bytes(self.total_bytes)}{bound} (Arrow/uncompressed; zstd Parquet of float "
            "responses is about the same)"
        )
        lines.append(
            f"compute: {self.gpu_hours:,.2f} GPU-hours at {self.images_per_second_per_gpu:,.0f} "
            f"images/s per GPU ({self.rate_source}); wall time {_duration(self.wall_hours)} "
            f"on {self.gpus:g} GPUs ({self.gpus_source})"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def plan_hints(config_path: str) -> dict[str, float]:
    """`# plan: gpus=8 images=1000000 images_per_second_per_gpu=400` lines of a config.

    Configs carry their own sizing assumptions next to the comments that explain them,
    so the printed plan and the comments cannot drift apart.
    """
    try:
        with open(config_path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return {}
    hints: dict[str, float] = {}
    for match in _PLAN_HINT.finditer(text):
        for item in match.group(1).split():
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in ("gpus", "images", "images_per_second_per_gpu"):
                raise BergScaleError(f"{config_path}: unknown plan hint {key!r} in '# plan:' line")
            try:
                hints[key] = float(value.replace("_", "").replace(",", ""))
            except ValueError:
                raise BergScaleError(f"{config_path}: plan hint {item!r} needs a number") from None
    return hints


# --------------------------------------------------------------------------- widths


class _Metadata:
    """Reads BERG metadata files from a root when it has them; remembers absences."""

    def __init__(self, root: str | None, storage: Any = None) -> None:
        self.store = None
        self._cache: dict[str, Any] = {}
        if root:
            from berg_scale.models.store import WeightStore

            self.store = WeightStore(root, storage)

    def get(self, relative: str) -> Any | None:
        if self.store is None:
            return None
        if relative not in self._cache:
            try:
                self.store.require(relative, "metadata")
            except FileNotFoundError:
                self._cache[relative] = None
            else:
                self._cache[relative] = self.store.load(relative, "metadata")
        return self._cache[relative]


def _nested(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fwrf_width(spec: Any, roi: str, meta: _Metadata) -> tuple[int | None, str]:
    data = meta.get(layout.metadata_file(FWRF_ID, spec.subject, roi))
    ncsnr = _nested(data, "fmri", "ncsnr")
    if ncsnr is not None:
        return int(np.asarray(ncsnr).shape[0]), "metadata"
    mask = _nested(data, "fmri", "roi_mask_volume")
    if mask is not None:
        return int(np.count_nonzero(mask)), "metadata"
    if roi in FWRF_SUBJECT1_VOXELS:
        label = "documented count" if spec.subject == 1 else "subject-1 count (approx.)"
        return FWRF_SUBJECT1_VOXELS[roi], label
    return None, "needs metadata"


def _fsaverage_width(spec: Any, resolved: Any, meta: _Metadata) -> tuple[int | None, str]:
    card = resolved.card
    per_hemi = int(card.vertices_per_hemisphere or 0)
    limit = int(card.fsaverage5_vertices or 0) if spec.downsample == "fsaverage5" else None
    if resolved.roi is None:
        total = 0
        for chosen in (resolved.lh_vertices, resolved.rh_vertices):
            idx = np.arange(per_hemi) if chosen is None else np.asarray(chosen)
            total += int(np.count_nonzero(idx < limit)) if limit is not None else int(idx.size)
        return total, "model card"
    data = meta.get(layout.metadata_file(FSAVERAGE_ID, spec.subject))
    total = 0
    for hemi in ("lh", "rh"):
        idx = _nested(data, "fmri", f"{hemi}_fsaverage_rois", resolved.roi)
        if idx is None:
            return None, "needs metadata"
        idx = np.asarray(idx)
        total += int(np.count_nonzero(idx < limit)) if limit is not None else int(idx.size)
    return total, "metadata"


def _eeg_width(spec: Any, resolved: Any, meta: _Metadata) -> tuple[int | None, str]:
    card = resolved.card
    data = meta.get(layout.metadata_file(EEG_ID, spec.subject))
    names = _nested(data, "eeg", "ch_names")
    times = _nested(data, "eeg", "times")
    n_ch = len(names) if isinstance(names, list) else len(card.channels)
    n_t = int(np.asarray(times).shape[0]) if times is not None else int(card.n_timepoints or 0)
    if resolved.channels is not None:
        n_ch = len(resolved.channels)
    if resolved.timepoints is not None:
        n_t = int(np.asarray(resolved.timepoints).size)
    # The repetition count lives only in the (large) weight file; the published models have 4.
    source = "metadata + 4 repetitions" if data is not None else "model card (4 repetitions)"
    return PUBLISHED_EEG_REPETITIONS * n_ch * n_t, source


def estimate_columns(
    specs: Sequence[Any], berg_root: str | None = None, storage: Any = None,
    assume_width: int | None = None,
) -> list[ColumnEstimate]:
    """One estimate per output column the engine will write for `specs`, in order."""
    meta = _Metadata(berg_root, storage)
    columns: list[ColumnEstimate] = []
    for spec in specs:
        resolved = spec.resolve()
        if spec.model_id == FWRF_ID:
            width, source = _fwrf_width(spec, resolved.roi, meta)
        elif spec.model_id == FSAVERAGE_ID:
            width, source = _fsaverage_width(spec, resolved, meta)
        elif spec.model_id == EEG_ID:
            width, source = _eeg_width(spec, resolved, meta)
        else:
            width, source = None, "unknown model family"
        if width is None and assume_width is not None:
            width, source = assume_width, "assumed (--assume-width)"
        name = spec.column_base
        if "responses" in spec.outputs:
            columns.append(ColumnEstimate(name, "responses", width, spec.dtype, source))
        if "mean" in spec.outputs:
            columns.append(ColumnEstimate(f"{name}:mean", "mean", 1, spec.dtype, "one value"))
    return columns


def id_bytes_per_image(key_chars: float, shard_chars: float) -> float:
    """key + shard (strings), index (int32), status ("ok"), error (null string)."""
    return (
        OFFSET_BYTES + key_chars
        + OFFSET_BYTES + shard_chars
        + 4
        + OFFSET_BYTES + 2
        + OFFSET_BYTES
    )


# --------------------------------------------------------------------------- inputs


def count_shard_samples(url: str, storage: Any = None) -> tuple[int, float]:
    """Rows one shard will give (the engine's own reader, so merging, hard links and gzip
    shards count exactly as in a run) and their mean key length."""
    from berg_scale.io.shard_reader import ShardReadError, iter_shard_samples

    count, key_chars = 0, 0
    try:
        for sample in iter_shard_samples(url, storage):
            count += 1
            key_chars += len(sample.key)
    except (ShardReadError, OSError) as exc:
        raise BergScaleError(
            f"cannot count the images of {url} ({type(exc).__name__}: {exc}); pass --images N instead"
        ) from None
    return count, (key_chars / count if count else 0.0)


@dataclass
class _Inputs:
    images: int
    source: str
    shards: list[str]
    key_chars: float = 12.0
    shard_chars: float = 6.0


def _inputs(config: Any, images: int | None, hints: dict[str, float], list_local: bool,
            notes: list[str]) -> _Inputs:
    """How many images, and the key/shard name lengths the identity columns will hold."""
    source = "--images"
    if images is None and "images" in hints:
        images, source = int(hints["images"]), "'# plan:' line of the config"
    patterns = config.input.shard_patterns()
    # Remote shards are listed only when the image count must come from them: planning a
    # million-image run should not need access to its bucket.
    if images is not None and not (list_local and not any(is_remote(p) for p in patterns)):
        notes.append(f"input shards not listed; the image count comes from the {source}")
        return _Inputs(images, source, [])
    from berg_scale.io.shard_listing import list_shards

    storage = config.storage_options()
    try:
        listed = list_shards(patterns, storage)
    except BergScaleError as exc:
        if images is None:
            raise BergScaleError(
                f"cannot list the input shards ({exc}); pass --images N to plan without them"
            ) from None
        notes.append(f"input shards not listed ({exc})")
        return _Inputs(images, source, [])
    urls = [shard.url for shard in listed]
    per_shard, key_chars = count_shard_samples(urls[0], storage)
    if images is None:
        images, source = per_shard * len(urls), f"{per_shard:,} in the first shard x {len(urls)} shards"
    shard_chars = sum(len(shard.name) for shard in listed) / len(listed)
    return _Inputs(images, source, urls, key_chars, shard_chars)


def _rate(value: float | None, hints: dict[str, float]) -> tuple[float, str]:
    if value is not None:
        source = "--images-per-second-per-gpu"
    elif "images_per_second_per_gpu" in hints:
        value, source = hints["images_per_second_per_gpu"], "config's plan line"
    else:
        value, source = 100.0, "placeholder: measure with benchmarks/ and pass --images-per-second-per-gpu"
    if value <= 0:
        raise BergScaleError("--images-per-second-per-gpu must be positive")
    return float(value), source


def _gpus(value: float | None, hints: dict[str, float], resources: Any) -> tuple[float, str]:
    if value is not None:
        return float(value), "--gpus"
    if "gpus" in hints:
        return hints["gpus"], "config's plan line"
    if isinstance(resources.workers, int):
        return resources.workers * resources.gpus_per_worker or 1.0, "resources.workers x gpus_per_worker"
    return 1.0, "default; pass --gpus"


def make_plan(
    config: Any,
    *,
    config_path: str | None = None,
    images: int | None = None,
    images_per_second_per_gpu: float | None = None,
    gpus: float | None = None,
    berg_root: str | None = None,
    assume_width: int | None = None,
    list_local: bool = True,
) -> Plan:
    """Estimate a run; explicit arguments beat `# plan:` hints in the config, which beat defaults."""
    hints = plan_hints(config_path) if config_path else {}
    notes: list[str] = []
    inputs = _inputs(config, images, hints, list_local, notes)

    root = berg_root
    if root is None and not is_remote(config.berg_root) and os.path.isdir(config.berg_root):
        root = config.berg_root
    if root is None:
        notes.append(
            f"metadata not read (berg_root {config.berg_root} is not a local folder); pass "
            "--berg-root DIR after `berg-scale fetch-weights --config CONFIG --metadata-only "
            "--to DIR` for exact widths"
        )
    storage = config.storage_options() if root and is_remote(root) else None
    columns = estimate_columns(config.readout_specs(), root, storage, assume_width)
    if any(c.width is None for c in columns):
        notes.append("unknown widths are left out of the totals; --assume-width N fills them")

    rate, rate_source = _rate(images_per_second_per_gpu, hints)
    n_gpus, gpus_source = _gpus(gpus, hints, config.resources)
    notes.append(decode_sizing(config.resources))
    return Plan(
        images=int(inputs.images),
        images_source=inputs.source,
        shards=inputs.shards,
        columns=columns,
        id_bytes_per_image=id_bytes_per_image(inputs.key_chars, inputs.shard_chars),
        gpus=n_gpus,
        gpus_source=gpus_source,
        images_per_second_per_gpu=rate,
        rate_source=rate_source,
        notes=notes,
    )


def decode_sizing(resources: Any) -> str:
    """How each worker will decode (resources.decode_workers), in one line for `plan`."""
    per = resources
    if per.decode_workers == "auto":
        how = (f"decode_workers auto: on a GPU worker, its node's CPUs per GPU x {per.gpus_per_worker:g} - "
               f"cpus_per_worker {per.cpus_per_worker:g} decode processes (15 on a 16-vCPU node per GPU); "
               f"a CPU worker decodes in its {per.decode_threads} threads")
    elif per.decode_workers == 0:
        how = f"decode_workers 0: each worker decodes in its own {per.decode_threads} threads"
    else:
        how = (f"decode_workers {per.decode_workers}: decode processes per worker outside it, needing "
               f"{per.decode_workers + per.cpus_per_worker:g} CPUs per worker on its node")
    if per.decode == "gpu":
        how += "; decode gpu: JPEGs decode with nvJPEG inside a CUDA worker instead"
    return how


__all__ = [
    "ColumnEstimate",
    "decode_sizing",
    "Plan",
    "count_shard_samples",
    "estimate_columns",
    "id_bytes_per_image",
    "make_plan",
    "plan_hints",
]
