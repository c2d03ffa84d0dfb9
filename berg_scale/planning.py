"""Sizing a generation run before paying for it: images, output bytes, GPU- or CPU-hours, wall time.

Output size is predicted column by column from the readouts, in the units the engine
writes (see `berg_scale.io.response_writer`): each response column is a fixed-size list
of float32/float16 values, each `:mean` column one float, plus the identity columns
(key, shard, index, status, error). The prediction is the values' bytes: the Arrow
(uncompressed) size a reader holds in memory, less validity bitmaps (pyarrow adds one bit
per value to float32 columns read back from Parquet, 3 %, and none to float16 ones).
Parquet with zstd stores float responses at about that size too (within ~10 %, measured
in the tests), because noisy mantissas hardly compress, so the figure doubles as a disk
estimate.

Widths come from each model's family (`berg_scale.models.families`): in order of
preference from the BERG metadata (exact per subject), from the model card (EEG shapes,
whole-hemisphere fsaverage), or from the subject-1 voxel counts documented for fwRF
(approximate for other subjects). A column whose width none of these know is reported as
unknown, never guessed, unless `assume_width` is given. A BERG root in object storage is
read for its metadata too (metadata files are small).

Compute is per worker (one GPU, or one CPU worker with `cpus_per_worker` threads). Its
rate is measured on this machine by `berg-scale plan --calibrate` (see
`berg_scale.engine.calibrate`), or given, or a nominal placeholder, and the plan says
which of the three it is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import is_remote
from berg_scale.models.families import family_for

# Arrow layout per row: a string costs a 4-byte offset plus its characters.
OFFSET_BYTES = 4
_VALUE_BYTES = {"float32": 4, "float16": 2}
_PLAN_HINT = re.compile(r"^#\s*plan:\s*(.+)$", re.MULTILINE)
_HINT_KEYS = ("gpus", "workers", "images", "images_per_second_per_gpu", "images_per_second_per_worker")
# Placeholders for a plan nobody measured; `plan --calibrate` replaces them.
NOMINAL_IMAGES_PER_SECOND = {"gpu": 100.0, "cpu": 5.0}


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
    device: str = "gpu"  # gpu | cpu: what one worker computes on
    rate_measured: bool = False
    calibration: dict[str, Any] | None = None
    cpus_per_worker: float = 1.0

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
    def worker_hours(self) -> float:
        """GPU-hours for a GPU plan, CPU-worker-hours for a CPU plan."""
        return self.gpu_hours

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / max(self.gpus, 1e-9)

    def _compute_line(self) -> str:
        if self.device == "gpu":
            unit, per, on = "GPU-hours", "per GPU", f"{self.gpus:g} GPU{'' if self.gpus == 1 else 's'}"
        else:
            unit = "CPU-worker-hours"
            per = f"per CPU worker ({self.cpus_per_worker:g} CPUs each)"
            on = f"{self.gpus:g} CPU worker{'' if self.gpus == 1 else 's'}"
        nominal = "" if self.rate_measured else "; nominal rate, not measured"
        return (
            f"compute: {self.worker_hours:,.2f} {unit} at {self.images_per_second_per_gpu:,.1f} "
            f"images/s {per} ({self.rate_source}{nominal}); wall time {_duration(self.wall_hours)} "
            f"on {on} ({self.gpus_source})"
        )

    def render(self, max_columns: int = 40) -> str:
        from berg_scale.weights.fetch import human_bytes

        lines = [f"input: {len(self.shards)} shard{'' if len(self.shards) == 1 else 's'}, {self.images:,} images "
                 f"({self.images_source})"]
        lines.append(f"{'column':<56} {'width':>9} {'dtype':>8} {'bytes/image':>12}  width from")
        # Columns of unknown width are always shown: they are what the totals leave out.
        unknown = [c for c in self.columns if c.width is None]
        known = [c for c in self.columns if c.width is not None]
        shown = unknown[:max_columns] + known[: max(0, max_columns - len(unknown))]
        for column in [c for c in self.columns if any(c is s for s in shown)]:
            width = f"{column.width:,}" if column.width is not None else "unknown"
            size = f"{column.bytes_per_image:,.0f}" if column.width is not None else "?"
            lines.append(f"{column.name:<56} {width:>9} {column.dtype:>8} {size:>12}  {column.source}")
        if len(self.columns) > len(shown):
            rest = [c for c in self.columns if not any(c is s for s in shown)]
            missing = sum(c.width is None for c in rest)
            more = f", {missing} of unknown width" if missing else ""
            lines.append(f"... and {len(rest)} more columns ({sum(c.bytes_per_image or 0 for c in rest):,.0f} "
                         f"bytes/image{more})")
        lines.append(f"{'key, shard, index, status, error':<56} {'':>9} {'':>8} {self.id_bytes_per_image:>12,.0f}")
        bound = " (lower bound: some widths unknown)" if self.unknown_columns else ""
        lines.append(
            f"per image: {human_bytes(self.bytes_per_image)}; output total: "
            f"{human_bytes(self.total_bytes)}{bound} (Arrow/uncompressed; zstd Parquet of float "
            "responses is about the same)"
        )
        lines.append(self._compute_line())
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
            if key not in _HINT_KEYS:
                raise BergScaleError(f"{config_path}: unknown plan hint {key!r} in '# plan:' line")
            try:
                hints[key] = float(value.replace("_", "").replace(",", ""))
            except ValueError:
                raise BergScaleError(f"{config_path}: plan hint {item!r} needs a number") from None
    return hints


# --------------------------------------------------------------------------- widths


class _Metadata:
    """Reads BERG metadata files from a root when it has them; remembers absences."""

    def __init__(self, root: str | None, storage: Any = None, notes: list[str] | None = None) -> None:
        self.store = None
        self.notes = notes if notes is not None else []
        self._cache: dict[str, Any] = {}
        if root:
            from berg_scale.models.store import WeightStore

            if is_remote(root):
                from berg_scale.engine.preflight import fast_fail_options

                # A plan must not hang for minutes on an endpoint that is down.
                storage = fast_fail_options(storage.for_url(root) if storage else None)
            self.store = WeightStore(root, storage)

    def get(self, relative: str) -> Any | None:
        if self.store is None:
            return None
        if relative not in self._cache:
            try:
                self.store.require(relative, "metadata")
            except FileNotFoundError:
                self._cache[relative] = None
            except Exception as exc:  # noqa: BLE001 - an unreachable root costs exactness, not the plan
                if not is_remote(self.store.root):
                    raise
                self._unreachable(exc)
                return None
            else:
                self._cache[relative] = self.store.load(relative, "metadata")
        return self._cache[relative]

    def _unreachable(self, exc: BaseException) -> None:
        from berg_scale.io.storage_errors import translate_storage_error

        assert self.store is not None
        translated = translate_storage_error(exc, self.store.root, self.store.storage, what="read")
        reason = str(translated) if translated is not None else f"{type(exc).__name__}: {exc}"
        self.notes.append(f"metadata of {self.store.root} not read ({reason}); widths come from the model cards")
        self.store = None


def estimate_columns(
    specs: Sequence[Any], berg_root: str | None = None, storage: Any = None,
    assume_width: int | None = None, notes: list[str] | None = None,
) -> list[ColumnEstimate]:
    """One estimate per output column the engine will write for `specs`, in order
    (a remote root that cannot be read adds a line to `notes` and is left out)."""
    meta = _Metadata(berg_root, storage, notes)
    columns: list[ColumnEstimate] = []
    for spec in specs:
        resolved = spec.resolve()
        known = family_for(spec.model_id).output_width(spec, resolved, meta.get)
        width, source = known.values, known.source
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


def _rate(value: float | None, hints: dict[str, float], device: str, calibration: Any) -> tuple[float, str, bool]:
    """(images/s per worker, where it came from, whether it was measured here)."""
    if value is not None:
        if value <= 0:
            raise BergScaleError("--images-per-second must be positive")
        return float(value), "--images-per-second", False
    if calibration is not None:
        return calibration.images_per_second, calibration.describe(), True
    for key in ("images_per_second_per_worker", "images_per_second_per_gpu"):
        if key in hints:
            if hints[key] <= 0:
                raise BergScaleError(f"the config's '# plan:' line needs a positive {key}")
            return hints[key], "config's plan line", False
    return (
        NOMINAL_IMAGES_PER_SECOND[device],
        "placeholder; `berg-scale plan --calibrate` measures it here, or pass --images-per-second",
        False,
    )


def _workers(value: float | None, hints: dict[str, float], resources: Any, device: str) -> tuple[float, str]:
    """How many workers (GPUs, or CPU workers) the run gets."""
    if value is not None:
        if value <= 0:
            raise BergScaleError("--workers/--gpus must be positive")
        return float(value), "--workers" if device == "cpu" else "--gpus"
    for key in (("gpus", "workers") if device == "gpu" else ("workers", "gpus")):
        if key in hints:
            return hints[key], "config's plan line"
    if isinstance(resources.workers, int):
        if device == "gpu":
            return resources.workers * resources.gpus_per_worker or 1.0, "resources.workers x gpus_per_worker"
        return float(resources.workers), "resources.workers"
    return 1.0, f"default; pass --{'gpus' if device == 'gpu' else 'workers'}"


def target_device(resources: Any) -> str:
    """'cpu' when the config runs its workers without GPUs, else 'gpu'."""
    return "cpu" if resources.device == "cpu" or resources.gpus_per_worker == 0 else "gpu"


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
    device: str | None = None,
    calibration: Any | None = None,
    read_metadata: bool = True,
) -> Plan:
    """Estimate a run; explicit arguments beat a calibration, which beats `# plan:` hints
    in the config, which beat nominal defaults.

    `images_per_second_per_gpu` and `gpus` are per worker and worker counts: GPUs for a
    GPU plan, CPU workers for a CPU plan (`device`, by default the config's, or the
    device `calibration` measured on).
    """
    hints = plan_hints(config_path) if config_path else {}
    notes: list[str] = []
    inputs = _inputs(config, images, hints, list_local, notes)

    root = berg_root or config.berg_root
    storage = config.storage_options() if is_remote(root) else None
    if not read_metadata:
        notes.append("metadata not read (--cards-only): widths from the model cards")
        root = None
    elif not is_remote(root) and not os.path.isdir(root):
        notes.append(
            f"metadata not read (berg_root {root} is not a folder); pass --berg-root DIR after "
            "`berg-scale fetch-weights --config CONFIG --metadata-only --to DIR` for exact widths"
        )
        root = None
    columns = estimate_columns(config.readout_specs(), root, storage, assume_width, notes)
    if any(c.width is None for c in columns):
        notes.append("unknown widths are left out of the totals; --assume-width N fills them")

    wanted = device or target_device(config.resources)
    if wanted not in ("gpu", "cpu"):
        raise BergScaleError(f"device must be 'gpu' or 'cpu', got {wanted!r}")
    if calibration is not None and calibration.kind != wanted:
        notes.append(
            f"the config runs on {wanted.upper()} workers but this machine calibrated on "
            f"{calibration.kind.upper()}: the plan is for {calibration.kind.upper()} workers like this "
            "machine's; calibrate on the target hardware for the other"
        )
        wanted = calibration.kind
    rate, rate_source, measured = _rate(images_per_second_per_gpu, hints, wanted, calibration)
    if not measured:
        notes.append("compute rates are nominal, not measured on this hardware: `plan --calibrate` "
                     "runs the models on a few images here and uses the measured rate")
    n_workers, workers_source = _workers(gpus, hints, config.resources, wanted)
    notes.append(decode_sizing(config.resources))
    notes.append(model_step(config.resources))
    return Plan(
        images=int(inputs.images),
        images_source=inputs.source,
        shards=inputs.shards,
        columns=columns,
        id_bytes_per_image=id_bytes_per_image(inputs.key_chars, inputs.shard_chars),
        gpus=n_workers,
        gpus_source=workers_source,
        images_per_second_per_gpu=rate,
        rate_source=rate_source,
        notes=notes,
        device=wanted,
        rate_measured=measured,
        calibration=calibration.to_dict() if calibration is not None else None,
        cpus_per_worker=float(config.resources.cpus_per_worker),
    )


def decode_sizing(resources: Any) -> str:
    """How each worker will decode (resources.decode_workers), in one line for `plan`."""
    per = resources
    if per.decode_workers == "auto":
        how = (f"decode_workers auto: on a GPU worker, its node's CPUs per GPU x {per.gpus_per_worker:g} - "
               f"cpus_per_worker {per.cpus_per_worker:g} decode processes "
               f"({_pool_size(8, per):g} on an 8-vCPU node per GPU, {_pool_size(16, per):g} on a 16-vCPU one); "
               f"a CPU worker decodes in its {per.decode_threads} threads")
    elif per.decode_workers == 0:
        how = f"decode_workers 0: each worker decodes in its own {per.decode_threads} threads"
    else:
        how = (f"decode_workers {per.decode_workers}: decode processes per worker outside it, needing "
               f"{per.decode_workers + per.cpus_per_worker:g} CPUs per worker on its node")
    if per.decode in ("gpu", "auto"):
        how += (f"; decode {per.decode}: JPEGs decode with nvJPEG inside a CUDA worker instead (responses drift "
                f"from Pillow's)")
        if per.decode_workers != 0:
            how += (f", and there at most shards_in_flight ({per.shards_in_flight}) decode processes start, "
                    f"to read the tars and check the headers")
    elif per.decode_workers != 0:
        how += "; decode processes also read the tars, so the worker's own process does no per-image reading"
    return how


def model_step(resources: Any) -> str:
    """What runs the model on each worker, in one line for `plan` (it moves the rate)."""
    precision = {
        "fp32": "precision fp32 (exact)",
        "bf16": "precision bf16 (backbone and ViT PCA projection in bf16, regressions fp32)",
        "fp16": "precision fp16 (backbone and ViT PCA projection in fp16, regressions fp32)",
    }[resources.precision]
    from berg_scale.config import resolve_exact_resize

    exact = resolve_exact_resize(resources.precision, resources.exact_resize)
    resample = ("images resampled on the CPU as BERG does (exact_resize)" if exact
                else "images resampled on the device (exact_resize off)")
    compiled = ("compile on: the ViT backbone compiles while the models load (a minute or two per worker)"
                if resources.compile else "compile off")
    if resources.shards_in_flight > 1:
        overlap = (f"shards_in_flight {resources.shards_in_flight}: the next shards read and decode while "
                   "one runs the model")
    else:
        overlap = "shards_in_flight 1: one shard at a time per worker"
    return f"model step: {precision}, {resample}; {compiled}; {overlap}"


__all__ = [
    "ColumnEstimate",
    "decode_sizing",
    "model_step",
    "Plan",
    "count_shard_samples",
    "estimate_columns",
    "id_bytes_per_image",
    "make_plan",
    "plan_hints",
]


def _pool_size(node_cpus_per_gpu: int, resources: Any) -> int:
    from berg_scale.engine.decode_pool import resolve_decode_workers

    return resolve_decode_workers("auto", uses_gpus=True, cpus_per_worker=resources.cpus_per_worker,
                                  gpus_per_worker=resources.gpus_per_worker, node_cpus_per_gpu=node_cpus_per_gpu)
