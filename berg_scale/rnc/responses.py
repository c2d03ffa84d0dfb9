"""Read the engine's response output for RNC: committed shards, needed columns, ok rows.

This is the one place that knows the output layout (docs/engine.md, "Output"):
`responses/<shard>.parquet`, `_done/<shard>.json` commit markers and `readouts.json`.
Only shards with a marker are trusted, only the requested columns are read, and
only rows with status "ok" count as images. Images are numbered 0..N-1 in the order
(shard name, row), which makes selections reproducible and lets per-shard work be
merged exactly.

ROI unions: the paper's "FFA" is FFA-1 and FFA-2 joined. The univariate response of
a union is the mean over the concatenated ncsnr-filtered voxels, which equals the
voxel-count-weighted mean of the parts' `:mean` columns; the counts are the number
of voxels with ncsnr above the threshold, taken from `readouts.json` (the voxel column's
ncsnr coordinates, or the `:mean` column's, which `generate` records too so that parts
written as means only still form a union).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from berg_scale.errors import BergScaleError
from berg_scale.io.output_lease import holder_process_gone, read_lease
from berg_scale.io.output_store import (
    OutputStore, done_shards, read_done_markers, read_manifest, read_readouts, response_shards,
)
from berg_scale.io.storage import StorageOptions, absence_note

DEFAULT_UNIONS: dict[str, tuple[str, ...]] = {"FFA": ("FFA-1", "FFA-2")}


class ResponsesError(BergScaleError):
    """The response output is missing, incomplete or inconsistent for an RNC study."""


def response_column(model_id: str, subject: int, roi: str) -> str:
    return f"{model_id}/sub-{subject:02d}/{roi}"


def mean_column(model_id: str, subject: int, roi: str) -> str:
    return f"{response_column(model_id, subject, roi)}:mean"


@dataclass(frozen=True)
class ImageIndex:
    """Where each of the N images lives: shard name and row position (`index` column)."""

    shards: tuple[str, ...]
    offsets: np.ndarray  # int64, len(shards) + 1; images offsets[j]:offsets[j+1] are in shard j
    positions: np.ndarray  # int32 (N,), the `index` column (position inside the input shard)

    @property
    def n_images(self) -> int:
        return int(self.offsets[-1])

    def locate(self, images: np.ndarray) -> tuple[list[str], np.ndarray]:
        images = np.asarray(images, dtype=np.int64)
        shard_ids = np.searchsorted(self.offsets, images, side="right") - 1
        return [self.shards[j] for j in shard_ids], self.positions[images]


@dataclass(frozen=True)
class UnivariateResponses:
    """u[s, r](i): the univariate (ROI-mean) response of every image, subject and ROI."""

    images: ImageIndex
    subjects: tuple[int, ...]
    rois: tuple[str, ...]
    values: np.ndarray  # float32 (N, S, R), C-contiguous

    def roi_index(self, roi: str) -> int:
        return self.rois.index(roi)


@dataclass(frozen=True)
class _Part:
    column: str
    weight: float


class ResponseStore:
    """An engine output folder or bucket prefix, opened for reading."""

    def __init__(self, url: str, storage: StorageOptions | None = None) -> None:
        self.url = url
        self._store = OutputStore(url, storage)
        self.fs, self.root = self._store.fs, self._store.root
        self._readouts: dict | None = None
        self._shards: tuple[str, ...] | None = None
        self._unbacked: tuple[str, ...] = ()
        self._commits: dict[str, dict[str, Any]] | None = None
        self._columns: set[str] | None = None

    # -- layout -------------------------------------------------------------------
    def committed_shards(self) -> tuple[str, ...]:
        """Shard names with a `_done` marker and a response file, sorted.

        The marker is written after the Parquet file, so only marked shards are trusted; a
        marker whose response file is gone vouches for nothing (`generate` redoes such a
        shard), so it is left out here and named by `unfinished_warning`.
        """
        if self._shards is None:
            marked = done_shards(self._store)
            backed = marked & response_shards(self._store) if marked else set()
            self._unbacked = tuple(sorted(marked - backed))
            if not backed:
                raise ResponsesError(self._no_committed_shards())
            self._shards = tuple(sorted(backed))
        return self._shards

    def _no_committed_shards(self) -> str:
        if self._unbacked:
            return (
                f"{self.url!r} has {len(self._unbacked)} commit marker(s) but not one response file "
                f"(responses/{self._unbacked[0]}.parquet is missing): rerun `berg-scale generate` on it to "
                "regenerate them"
            )
        absent = absence_note(self.url, self._store.storage)
        if absent:
            return f"no responses under {self.url!r}{absent}"
        return (
            f"no committed shards under {self.url!r} (no _done/*.json): "
            "point the study at a finished or partly finished generate output"
        )

    def shard_commits(self) -> dict[str, dict[str, Any]]:
        """Shard -> `run_id` and `committed_at` of its commit marker, for every committed shard.

        Shard names come from the input images, so an output generated again from scratch
        (other weights, same images) has the same names; its markers do not. Recorded in a
        study's summary.json, they say which responses the study's images were chosen on.
        """
        if self._commits is None:
            markers = read_done_markers(self._store, self.committed_shards())
            self._commits = {
                name: {"run_id": (markers.get(name) or {}).get("run_id"),
                       "committed_at": (markers.get(name) or {}).get("committed_at")}
                for name in self.committed_shards()
            }
        return self._commits

    def unfinished_warning(self) -> str | None:
        """One line when the output is still being written or only partly committed, else None.

        Reading such an output is allowed (a study of the shards done so far is useful),
        but its results cover only the committed shards, which the line says.
        """
        committed = set(self.committed_shards())
        manifest = read_manifest(self._store) or {}
        listed = {e["name"] if isinstance(e, dict) else str(e) for e in manifest.get("input_shards") or []}
        total = len(listed) if listed else len(committed) + len(self._unbacked)
        done = len(committed & listed) if listed else len(committed)
        reasons = [r for r in (_writer_state(read_lease(self._store), manifest.get("status")),
                               self._unbacked_note()) if r]
        if done >= total and not reasons:
            return None
        why = "".join(f"; {r}" for r in reasons)
        return (f"{self.url} is not finished ({done} of {total} shards committed{why}): results cover the "
                "committed shards only")

    def _unbacked_note(self) -> str:
        if not self._unbacked:
            return ""
        names = ", ".join(self._unbacked[:3]) + (", ..." if len(self._unbacked) > 3 else "")
        return (f"the response file of {len(self._unbacked)} marked shard(s) is missing ({names}; "
                "rerunning `berg-scale generate` regenerates it)")

    def parquet_path(self, shard: str) -> str:
        return self._store.response_path(shard)

    def readouts(self) -> dict:
        """Column name -> entry of `readouts.json` (coords such as voxel ncsnr).

        Accepts the engine's list of entries (each with "name") and a name-keyed mapping.
        """
        if self._readouts is None:
            try:
                data = read_readouts(self._store)
            except ValueError as exc:
                raise ResponsesError(f"readouts.json in {self.url!r} is not valid JSON: {exc}") from exc
            if data is None:
                raise ResponsesError(
                    f"{self.url!r} has no readouts.json: it is written by `generate`; "
                    "rerun or copy it next to responses/"
                )
            columns = data.get("columns") if isinstance(data, dict) else None
            if isinstance(columns, list):  # the engine writes a list of entries with "name"
                columns = {e["name"]: e for e in columns if isinstance(e, dict) and "name" in e}
            if not isinstance(columns, dict):
                raise ResponsesError(f"readouts.json in {self.url!r} lacks a 'columns' list or mapping")
            self._readouts = columns
        return self._readouts

    def dataset(self, shards: Sequence[str] | None = None) -> ds.Dataset:
        shards = self.committed_shards() if shards is None else shards
        return ds.dataset(
            [self.parquet_path(s) for s in shards], filesystem=self.fs, format="parquet"
        )

    # -- voxel selection ----------------------------------------------------------
    def ncsnr(self, column: str) -> np.ndarray:
        entry = self.readouts().get(column) or self.readouts().get(f"{column}:mean")
        coords = (entry or {}).get("coords") or {}
        if "ncsnr" not in coords:
            raise ResponsesError(
                f"readouts.json has no ncsnr coords for {column!r}: the voxel filter "
                "(ncsnr > threshold) needs them"
            )
        return np.asarray(coords["ncsnr"], dtype=np.float64)

    def check_mean_threshold(self, column: str, threshold: float) -> None:
        """A `:mean` column averages voxels with ncsnr above generate's threshold; the study
        must use the same one, or its univariate responses are not the means it describes."""
        entry = self.readouts().get(column) or {}
        used = entry.get("ncsnr_threshold")
        if used is not None and abs(float(used) - float(threshold)) > 1e-9:
            raise ResponsesError(
                f"{column!r} is the mean over voxels with ncsnr > {float(used):g} (generate's ncsnr_threshold), "
                f"but the study uses ncsnr_threshold {float(threshold):g}: set ncsnr_threshold: {float(used):g} "
                f"in the study (--ncsnr-threshold {float(used):g}) or regenerate with {float(threshold):g}"
            )

    def voxel_mask(self, column: str, threshold: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.ncsnr(column) > threshold

    def _existing_columns(self) -> set[str]:
        if self._columns is None:
            self._columns = set(self.dataset(self.committed_shards()[:1]).schema.names)
        return self._columns

    def _roi_parts(
        self, model_id: str, subject: int, roi: str, unions: Mapping[str, Sequence[str]],
        threshold: float, existing: set[str],
    ) -> list[_Part]:
        own = mean_column(model_id, subject, roi)
        if own in existing:
            self.check_mean_threshold(own, threshold)
            return [_Part(own, 1.0)]
        if roi not in unions:
            raise ResponsesError(
                f"column {own!r} is not in the responses: generate it, or define "
                f"{roi!r} as a union of ROIs in the study config (roi_unions)"
            )
        parts = []
        for part in unions[roi]:
            column = mean_column(model_id, subject, part)
            if column not in existing:
                raise ResponsesError(f"union {roi!r} needs column {column!r}, which is missing")
            self.check_mean_threshold(column, threshold)
            count = int(self._union_mask(model_id, subject, roi, part, unions[roi], threshold).sum())
            if count:
                parts.append(_Part(column, float(count)))
        if not parts:
            raise ResponsesError(
                f"no voxel of {roi!r} (subject {subject}) passes ncsnr > {threshold}"
            )
        return parts

    def _union_mask(
        self, model_id: str, subject: int, union: str, part: str, parts: Sequence[str], threshold: float
    ) -> np.ndarray:
        """The part's ncsnr mask, from its voxel column or else from its `:mean` column."""
        try:
            return self.voxel_mask(response_column(model_id, subject, part), threshold)
        except ResponsesError:
            raise ResponsesError(
                f"union {union!r} weights its parts by their voxel counts, but readouts.json records no ncsnr "
                f"for {response_column(model_id, subject, part)!r} or its :mean column (an output written "
                f"before mean columns carried them): regenerate {part} (any outputs), or study the parts "
                f"({', '.join(parts)}) as ROIs of their own"
            ) from None

    # -- what is there ------------------------------------------------------------
    def column_names(self) -> set[str]:
        """Every column of the committed shards' schema."""
        return self._existing_columns()

    def fmri_models(self) -> list[str]:
        """Model ids with per-subject fMRI columns (`<model>/sub-SS/<ROI>[:mean]`)."""
        found = {name.split("/")[0] for name in self._existing_columns()
                 if name.startswith("fmri-") and name.count("/") == 2}
        return sorted(found)

    def subjects(self, model_id: str) -> list[int]:
        """Subjects with at least one column of `model_id` (`<model>/sub-SS/...`), sorted."""
        found = set()
        prefix = f"{model_id}/sub-"
        for name in self._existing_columns():
            if name.startswith(prefix):
                number = name[len(prefix):].split("/")[0]
                if number.isdigit():
                    found.add(int(number))
        return sorted(found)

    def check_subjects(self, model_id: str, subjects: Sequence[int] | None) -> None:
        """Name the chosen subjects the output lacks, and those it has, before any column is read."""
        present = self.subjects(model_id)
        if not present:
            models = ", ".join(self.fmri_models()) or "none"
            raise ResponsesError(
                f"{self.url!r} has no columns of {model_id} (its fMRI models: {models}): choose the model "
                "(--model, or model_id in a study config) among them"
            )
        absent = [s for s in subjects or [] if s not in present]
        if absent:
            which = f"subject{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))}"
            raise ResponsesError(
                f"{which} {'are' if len(absent) > 1 else 'is'} not in {self.url!r} ({model_id} has subjects "
                f"{', '.join(map(str, present))}): choose subjects (--subjects) among them, or leave subjects out "
                "to use every subject there"
            )

    def subjects_with(
        self, model_id: str, rois: Sequence[str], unions: Mapping[str, Sequence[str]], kind: str
    ) -> tuple[list[int], dict[int, list[str]]]:
        """(subjects with every ROI readable as `kind` "mean" or "responses", subject -> ROIs it lacks).

        An ROI is readable when its own column is there or, for a union, every part's.
        """
        existing = self._existing_columns()
        column = mean_column if kind == "mean" else response_column
        complete, lacking = [], {}
        for subject in self.subjects(model_id):
            missing = []
            for roi in rois:
                if column(model_id, subject, roi) in existing:
                    continue
                parts = unions.get(roi, ())
                if not parts or any(column(model_id, subject, p) not in existing for p in parts):
                    missing.append(roi)
            if missing:
                lacking[subject] = missing
            else:
                complete.append(subject)
        return complete, lacking

    # -- reading ------------------------------------------------------------------
    def iter_shards(
        self, columns: Sequence[str], shards: Sequence[str] | None = None
    ) -> Iterator[tuple[str, pa.Table]]:
        """(shard, table of ok rows with `index` plus `columns`), one committed shard at a time."""
        shards = self.committed_shards() if shards is None else tuple(shards)
        dataset = self.dataset(shards)
        wanted = ["index", *dict.fromkeys(columns)]
        missing = [c for c in wanted if c not in dataset.schema.names]
        if missing:
            raise ResponsesError(f"responses under {self.url!r} lack columns {missing}")
        ok = pc.field("status") == "ok"
        for shard, fragment in zip(shards, dataset.get_fragments()):
            yield shard, fragment.to_table(columns=wanted, filter=ok)

    def univariate_plan(
        self,
        model_id: str,
        subjects: Sequence[int],
        rois: Sequence[str],
        unions: Mapping[str, Sequence[str]] = DEFAULT_UNIONS,
        threshold: float = 0.5,
    ) -> tuple[list[str], dict]:
        """(columns to read, (subject, roi) -> weighted parts) for the univariate responses."""
        existing = self._existing_columns()
        plan = {
            (s, r): self._roi_parts(model_id, s, r, unions, threshold, existing)
            for s in subjects
            for r in rois
        }
        return sorted({p.column for parts in plan.values() for p in parts}), plan

    def read_univariate(
        self,
        model_id: str,
        subjects: Sequence[int],
        rois: Sequence[str],
        unions: Mapping[str, Sequence[str]] = DEFAULT_UNIONS,
        threshold: float = 0.5,
        shards: Sequence[str] | None = None,
    ) -> UnivariateResponses:
        """Read only the `:mean` columns needed (or the parts of ROI unions)."""
        columns, plan = self.univariate_plan(model_id, subjects, rois, unions, threshold)
        shard_names, counts, positions, blocks = [], [], [], []
        for shard, table in self.iter_shards(columns, shards):
            block = combine_univariate(table, subjects, rois, plan)
            shard_names.append(shard)
            counts.append(block.shape[0])
            positions.append(table.column("index").to_numpy().astype(np.int32))
            blocks.append(block)
        values = np.concatenate(blocks) if blocks else np.empty((0, len(subjects), len(rois)), np.float32)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        images = ImageIndex(tuple(shard_names), offsets, np.concatenate(positions) if positions else np.empty(0, np.int32))
        return UnivariateResponses(images, tuple(subjects), tuple(rois), np.ascontiguousarray(values))

    def image_index(self) -> ImageIndex:
        """Numbering of the ok images of the committed shards (reads the `index` column only)."""
        names, counts, positions = [], [], []
        for shard, table in self.iter_shards([]):
            names.append(shard)
            counts.append(table.num_rows)
            positions.append(table.column("index").to_numpy().astype(np.int32))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return ImageIndex(tuple(names), offsets, np.concatenate(positions) if positions else np.empty(0, np.int32))

    def pattern_columns(
        self, model_id: str, subject: int, roi: str, unions: Mapping[str, Sequence[str]] = DEFAULT_UNIONS,
        threshold: float = 0.5,
    ) -> list[tuple[str, np.ndarray]]:
        """(voxel column, ncsnr mask) of an ROI, or of each part of an ROI union."""
        existing = self._existing_columns()
        own = response_column(model_id, subject, roi)
        parts = [own] if own in existing else [response_column(model_id, subject, p) for p in unions.get(roi, ())]
        if not parts or any(p not in existing for p in parts):
            raise ResponsesError(
                f"voxel column {own!r} (or the parts of its union) is not in the responses: "
                "generate with outputs [responses, mean]"
            )
        masks = [self.voxel_mask(p, threshold) for p in parts]
        if not any(m.any() for m in masks):
            raise ResponsesError(f"no voxel of {roi!r} (subject {subject}) passes ncsnr > {threshold}")
        return list(zip(parts, masks))

    def iter_patterns(
        self, columns: Sequence[tuple[str, np.ndarray]]
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(shard, (rows, V) float32 filtered voxel patterns), one committed shard at a time."""
        for shard, table in self.iter_shards([c for c, _ in columns]):
            pieces = []
            for part, mask in columns:
                matrix = fixed_size_list_to_numpy(table.column(part), part)
                if matrix.shape[1] != mask.size:
                    raise ResponsesError(
                        f"column {part!r} has {matrix.shape[1]} voxels but readouts.json lists "
                        f"{mask.size} ncsnr values"
                    )
                pieces.append(matrix[:, mask])
            yield shard, np.concatenate(pieces, axis=1)

    def read_patterns(
        self,
        model_id: str,
        subject: int,
        roi: str,
        unions: Mapping[str, Sequence[str]] = DEFAULT_UNIONS,
        threshold: float = 0.5,
    ) -> tuple[ImageIndex, np.ndarray]:
        """Voxel patterns (N, V) float32 of one subject and ROI, ncsnr-filtered voxels only."""
        columns = self.pattern_columns(model_id, subject, roi, unions, threshold)
        blocks = [block for _, block in self.iter_patterns(columns)]
        return self.image_index(), np.concatenate(blocks)

    def keys_for(self, images: ImageIndex, selected: np.ndarray) -> list[str]:
        """WebDataset keys of selected images, reading the key column of their shards only."""
        selected = np.asarray(selected, dtype=np.int64)
        shards, positions = images.locate(selected)
        keys: list[str] = [""] * selected.size
        by_shard: dict[str, list[int]] = {}
        for slot, shard in enumerate(shards):
            by_shard.setdefault(shard, []).append(slot)
        for shard, slots in by_shard.items():
            table = self.dataset([shard]).to_table(columns=["index", "key"])
            lookup = dict(zip(table.column("index").to_pylist(), table.column("key").to_pylist()))
            for slot in slots:
                keys[slot] = lookup.get(int(positions[slot]), "")
        return keys


def fixed_size_list_to_numpy(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """(rows, size) float32 view of a fixed-size-list (or fixed-shape tensor) column."""
    chunks = []
    for chunk in column.chunks:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage
        if not pa.types.is_fixed_size_list(chunk.type):
            raise ResponsesError(f"column {name!r} is {chunk.type}, expected a fixed-size list")
        size = chunk.type.list_size
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        chunks.append(flat.astype(np.float32, copy=False).reshape(-1, size))
    if not chunks:
        return np.empty((0, 0), np.float32)
    return np.concatenate(chunks)


def combine_univariate(
    table: pa.Table,
    subjects: Sequence[int],
    rois: Sequence[str],
    plan: Mapping[tuple[int, str], list[_Part]],
) -> np.ndarray:
    """(rows, S, R) float32 block; unions as voxel-count-weighted means of their parts."""
    block = np.empty((table.num_rows, len(subjects), len(rois)), dtype=np.float32)
    for si, subject in enumerate(subjects):
        for ri, roi in enumerate(rois):
            parts = plan[(subject, roi)]
            if len(parts) == 1:
                block[:, si, ri] = _scalar(table, parts[0].column)
                continue
            total = sum(p.weight for p in parts)
            acc = np.zeros(table.num_rows, dtype=np.float64)
            for part in parts:
                acc += _scalar(table, part.column).astype(np.float64) * (part.weight / total)
            block[:, si, ri] = acc
    return block


def _scalar(table: pa.Table, column: str) -> np.ndarray:
    values = table.column(column).to_numpy()
    if values.dtype.kind != "f":
        values = values.astype(np.float32)
    return values


def _writer_state(lease: dict[str, Any] | None, status: Any) -> str:
    """Why the output may still change: a live `generate` lease, or a last run that did not finish."""
    if lease and not _lease_gone(lease):
        return f"a generate run holds it (run {lease.get('run_id')})"
    if status is None or status in ("complete", "nothing-to-do"):
        return ""
    if status == "running":
        return "its last generate run stopped before finishing; rerun `berg-scale generate` to resume"
    if status == "incomplete":
        return "its last generate run quarantined shards (see `berg-scale status`)"
    return f"run.json says status {status!r}"


def _lease_gone(lease: dict[str, Any]) -> bool:
    """The lease's driver is known to be gone (its process, on this host) or stopped renewing."""
    age = time.time() - float(lease.get("renewed_at") or 0)
    return holder_process_gone(lease) or age > float(lease.get("ttl_s") or 120)
