"""Typed configuration of an RNC study (YAML -> validated objects, one-line errors).

Every default of the RNC paper (Gifford et al., Nature Human Behaviour 2025; docs/rnc.md)
is a field here, so a study config only states what differs from the paper.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from berg_scale.config import Bool, Float, Int, Subject, load_validated
from berg_scale.errors import ConfigError
from berg_scale.io.storage import StorageOptions

PAPER_ROIS = ["V1", "V2", "V3", "hV4", "EBA", "FFA", "PPA", "RSC"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Strict):
    endpoint_url: str | None = None
    region: str | None = None
    anon: Bool = False

    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region, anon=self.anon)


class UnivariateConfig(_Strict):
    enabled: Bool = True
    n_images: Int = Field(25, ge=1)
    margin: Float = Field(0.04, ge=0)
    baseline_batches: Int = Field(1_000_000, ge=1)
    baseline_batch_size: Int = Field(25, ge=1)
    n_bootstrap: Int = Field(100_000, ge=0)
    n_permutations: Int = Field(100_000, ge=0)
    alpha: Float = Field(0.05, gt=0, lt=1)
    chance: Float = Field(0.05, gt=0, lt=1)
    distributed: Bool = False


class MultivariateConfig(_Strict):
    enabled: Bool = False
    conditions: list[Literal["align", "disentangle"]] = ["align", "disentangle"]
    population: Int = Field(200, ge=1)
    batch_size: Int = Field(50, ge=3)
    generations: Int = Field(2000, ge=1)
    mutants_per_parent: Int = Field(5, ge=1, le=5)
    baseline_batches: Int = Field(1_000_000, ge=3)
    n_bootstrap: Int = Field(100_000, ge=0)
    n_permutations: Int = Field(100_000, ge=1)
    alpha: Float = Field(0.05, gt=0, lt=1)
    chance: Float = Field(0.05, gt=0, lt=1)
    device: str = "auto"
    storage_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chunk: Int | None = Field(None, ge=1)  # candidates per gather; default sizes it from the voxel count
    log_every: Int = Field(100, ge=1)


class PlotConfig(_Strict):
    enabled: Bool = True
    formats: list[Literal["png", "svg", "pdf"]] = ["png", "svg"]
    max_points: Int = Field(20_000, ge=100)
    images: str | None = None  # input WebDataset shards (<images>/<shard>.tar) for the image grid
    tile_size: Int = Field(96, ge=16, le=512)


DEFAULT_UNIONS = {
    "FFA": ["FFA-1", "FFA-2"],
    # fsaverage splits the early visual areas into ventral and dorsal halves
    "V1": ["V1v", "V1d"], "V2": ["V2v", "V2d"], "V3": ["V3v", "V3d"],
}
SECTIONS = ("univariate", "multivariate")


class StudyConfig(_Strict):
    # Local paths here resolve against the study file's folder (berg_scale.config_paths).
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("responses", "out_dir", "plots.images")

    responses: str
    out_dir: str
    storage: StorageConfig = StorageConfig()
    # None: the one fMRI model in the responses (fmri-nsd-fwrf when there are several)
    model_id: str | None = None
    # None: every subject whose columns for all the study's ROIs are in the responses
    subjects: list[Subject] | None = Field(None, min_length=1)
    rois: list[str] = Field(default_factory=lambda: ["V1", "hV4"], min_length=2)
    pairs: list[tuple[str, str]] | None = None
    # an ROI whose own column is absent is read as the union of these parts
    roi_unions: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_UNIONS.items()})
    ncsnr_threshold: Float = 0.5
    seed: Int = Field(20200220, ge=0)
    # images with a NaN or infinite response are left out and reported; more than this
    # fraction of them means a broken output, and the study stops instead
    max_excluded_fraction: Float = Field(0.01, ge=0, le=1)
    cross_validation: Bool = True
    univariate: UnivariateConfig = UnivariateConfig()
    multivariate: MultivariateConfig = MultivariateConfig()
    plots: PlotConfig = PlotConfig()

    @model_validator(mode="before")
    @classmethod
    def _present_section_is_enabled(cls, data: object) -> object:
        """A `univariate:` or `multivariate:` section that is written down runs, unless it
        says `enabled: false`; an absent multivariate section is off (see `section_states`)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in SECTIONS:
            if name in data and data[name] is None:  # `multivariate:` with nothing below it
                data[name] = {}
            if isinstance(data.get(name), dict) and "enabled" not in data[name]:
                data[name] = {**data[name], "enabled": True}
        data.setdefault("_sections_given", [n for n in SECTIONS if n in data])
        return data

    sections_given: list[str] = Field(default_factory=list, alias="_sections_given", exclude=True)

    def section_states(self) -> dict[str, str]:
        """Analysis -> one line saying whether it runs and why (for the log)."""
        states = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if section.enabled:
                states[name] = "on"
            elif name in self.sections_given:
                states[name] = f"off ({name}.enabled is false)"
            else:
                states[name] = f"off (no {name}: section in the study config; add one to run it)"
        return states

    @field_validator("subjects")
    @classmethod
    def _distinct_subjects(cls, subjects: list[int] | None) -> list[int] | None:
        if subjects is not None and len(set(subjects)) != len(subjects):
            raise ValueError("subjects must be distinct")
        return subjects

    @field_validator("pairs")
    @classmethod
    def _pairs_of_listed_rois(cls, pairs: list[tuple[str, str]] | None, info: ValidationInfo) -> object:
        """A pair names two ROIs of `rois`; the error names the one that is not there.

        A field validator, so that the message quotes the pair, not the whole study.
        """
        rois = info.data.get("rois")
        for pair in pairs or []:
            if pair[0] == pair[1]:
                raise ValueError(f"pair {pair[0]} {pair[1]} names one ROI twice: a pair needs two different ROIs")
            absent = [r for r in pair if rois is not None and r not in rois]
            if absent:
                raise ValueError(
                    f"pair {pair[0]} {pair[1]} (--pair) names {' and '.join(absent)}, which rois (--rois "
                    f"{' '.join(rois or [])}) does not list: add {'them' if len(absent) > 1 else 'it'} to rois, "
                    "or choose a pair of the listed ROIs"
                )
        return pairs

    def roi_pairs(self) -> list[tuple[str, str]]:
        return [(p[0], p[1]) for p in self.pairs] if self.pairs else list(itertools.combinations(self.rois, 2))


def parse_config(data: object, source: str = "config") -> StudyConfig:
    """A study from a mapping (e.g. command-line options); one ConfigError line on problems."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    return load_validated(data, StudyConfig, origin=source)


def load_config(
    path: str | Path, overrides: Sequence[str] = (), environ: dict[str, str] | None = None
) -> StudyConfig:
    """Read a study YAML the same way run configs are read (`--set` overrides, `${VAR}`)."""
    return load_validated(Path(path), StudyConfig, overrides, environ)
