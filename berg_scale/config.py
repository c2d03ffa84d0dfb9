"""Typed run configuration: YAML in, validated objects out.

A run config is the single record of what a generation run computes, so it is strict:
unknown keys are errors (a typo must never silently fall back to a default), every error
names the field path, the bad value and what is allowed, on one line. Secrets come from
environment variables (`${VAR}`) and are held as `SecretStr`, so they never appear in
reprs, logs, `run.json` or any other output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence, TypeVar

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from berg_scale.config_paths import override_keys, resolve_config_paths
from berg_scale.errors import ConfigError
from berg_scale.io.storage import StorageOptions
from berg_scale.subject_ids import subject_config_value
from berg_scale.yaml_load import load_yaml

ModelT = TypeVar("ModelT", bound=BaseModel)

# `${NAME}` or `${NAME:-default}`; anything else between `${` and `}` is refused.
_ENV_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)

# Longest wait between two attempts of a shard: a retry exists to ride out a passing
# outage, and one bad input must not hold a run for hours.
MAX_BACKOFF_S = 300.0


def _not_bool(kind: str):
    """YAML's `true`/`false` are Python bools, and pydantic would take them as 1/0."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be {kind}, not a boolean (true/false)")
        return value

    return check


def _bool_only(value: Any) -> Any:
    """Numbers are not booleans either (a `1` meant for a count must not turn a switch on)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("must be true or false, not a number")
    return value


# Shared field types: every number in a config refuses booleans, floats refuse NaN/inf.
Int = Annotated[int, BeforeValidator(_not_bool("an integer"))]
Float = Annotated[float, BeforeValidator(_not_bool("a number")), AllowInfNan(False)]
Bool = Annotated[bool, BeforeValidator(_bool_only)]
# A subject as a number or as BERG names it (`sub-01`).
_not_bool_subject = _not_bool("a subject number")
Subject = Annotated[int, BeforeValidator(lambda value: subject_config_value(_not_bool_subject(value)))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Strict):
    """Where the images come from and how they are prepared before any model sees them."""

    shards: str | list[str] = Field(
        description="local folder/file, s3:// prefix, glob, or brace pattern {000000..000999}"
    )
    image_size: Int = Field(256, ge=16, le=4096)
    crop: Literal["center", "none"] = "center"
    # The rest of the decode options (berg_scale.io.image_decode.DecodeOptions); the defaults
    # are what every output before these fields existed was made with.
    alpha: Literal["white", "drop"] = "white"
    resample: Literal["bilinear", "bicubic", "lanczos"] = "bilinear"
    jpeg_draft: Bool = False
    max_pixels: Int = Field(64 * 1024 * 1024, ge=1)
    # Fields of each sample's <key>.json sidecar copied into output columns (opt-in),
    # e.g. [source, width, height] as make-shards writes them.
    metadata: list[str] = Field(default_factory=list)

    @field_validator("metadata")
    @classmethod
    def _metadata_names(cls, value: list[str]) -> list[str]:
        from berg_scale.io.sample_metadata import check_names

        return check_names(value)

    @field_validator("shards")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items or any(not item.strip() for item in items):
            raise ValueError("must name at least one shard path or pattern")
        return value

    def shard_patterns(self) -> list[str]:
        return [self.shards] if isinstance(self.shards, str) else list(self.shards)

    def decode_options(self) -> Any:
        """The whole decode options, handed as one object to every decoder."""
        from berg_scale.io.image_decode import DecodeOptions

        return DecodeOptions(size=self.image_size, crop=self.crop, max_pixels=self.max_pixels,
                             alpha=self.alpha, resample=self.resample, jpeg_draft=self.jpeg_draft)

    def fingerprint_fields(self) -> dict[str, Any]:
        """What of the input changes the numbers; decode option fields at their defaults are left
        out so that outputs made before those fields existed keep their fingerprint."""
        decode_fields = {"alpha", "resample", "jpeg_draft", "max_pixels"}
        at_default = {name for name in decode_fields if getattr(self, name) == type(self).model_fields[name].default}
        if not self.metadata:  # metadata columns only when asked for
            at_default.add("metadata")
        return self.model_dump(mode="json", exclude={"shards"} | at_default)


class ReadoutConfig(_Strict):
    """One model over one or more subjects and selections; expands to `ReadoutSpec`s."""

    model: str
    subjects: list[Subject] | Literal["all"] = "all"
    rois: list[str] | None = None
    selections: list[dict[str, Any]] | None = None
    outputs: list[Literal["responses", "mean"]] = ["responses"]  # pydantic copies it per instance
    dtype: Literal["float32", "float16"] = "float32"
    ncsnr_threshold: Float = 0.5
    downsample: Literal["fsaverage5"] | None = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from berg_scale.models.registry import known_model_ids

        known = known_model_ids()
        if value not in known:
            raise ValueError(f"unknown model id {value!r} (known: {', '.join(known)})")
        return value

    @field_validator("outputs")
    @classmethod
    def _some_output(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one of: responses, mean")
        return list(dict.fromkeys(value))

    @field_validator("subjects")
    @classmethod
    def _some_subject(cls, value: list[int] | str) -> list[int] | str:
        """An empty list would expand to no readout at all, so no column would be written."""
        if value == []:
            raise ValueError("list at least one subject, or leave the field out (or write all) "
                             "for every subject of the model")
        return value

    @field_validator("rois", "selections")
    @classmethod
    def _some_selection(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        """An empty list would expand to no readout at all; leaving the field out is what
        reads the model's whole output."""
        if value is not None and not value:
            raise ValueError(_empty_selection_advice(info.field_name or "rois", info.data.get("model")))
        return value

    @model_validator(mode="after")
    def _one_selection_style(self) -> "ReadoutConfig":
        if self.rois is not None and self.selections is not None:
            raise ValueError("give either 'rois' or 'selections', not both")
        return self

    def subject_list(self) -> list[int]:
        if self.subjects != "all":
            return list(self.subjects)
        from berg_scale.models.registry import get_card

        return list(get_card(self.model).subjects)

    def selection_list(self) -> list[dict[str, Any] | None]:
        if self.rois is not None:
            return [{"roi": roi} for roi in self.rois]
        if self.selections is not None:
            return [dict(selection) for selection in self.selections]
        return [None]

    def to_specs(self) -> list[Any]:
        from berg_scale.models import ReadoutSpec

        return [
            ReadoutSpec(
                model_id=self.model,
                subject=subject,
                selection=selection,
                outputs=tuple(self.outputs),
                dtype=self.dtype,
                ncsnr_threshold=self.ncsnr_threshold,
                downsample=self.downsample,
            )
            for subject in self.subject_list()
            for selection in self.selection_list()
        ]


def _empty_selection_advice(field: str, model: str | None) -> str:
    """What to write instead of an empty `rois`/`selections` list, for this model if known."""
    noun = "ROI" if field == "rois" else "selection"
    if model is not None:
        from berg_scale.models.registry import get_card

        if get_card(model).selection_required:
            return f"list at least one {noun} ({model} needs one)"
    return f"list at least one {noun}, or leave the field out for the model's whole output"


def resolve_exact_resize(precision: str, exact_resize: bool | None) -> bool:
    """Whether images are resampled on the CPU as BERG does: the default (None) is yes for
    fp32, whose results must be exact, and no for bf16/fp16, which trade exactness for speed."""
    return precision == "fp32" if exact_resize is None else bool(exact_resize)


class ResourcesConfig(_Strict):
    """How much of the cluster a run uses and how each worker spends it."""

    workers: Int | Literal["auto"] = "auto"
    gpus_per_worker: Float = Field(1.0, ge=0)
    cpus_per_worker: Float = Field(1.0, gt=0)
    batch_size: Int = Field(100, ge=1, le=100_000)
    # cpu: Pillow, exact (the default: nvJPEG's pixels differ); gpu, or auto where the
    # worker finds CUDA: nvJPEG for JPEGs (faster, responses drift; benchmarks/gpu_feed.py).
    decode: Literal["cpu", "gpu", "auto"] = "cpu"
    decode_threads: Int = Field(4, ge=1, le=256)
    # Decode processes per worker, outside the worker's process (engine/decode_pool.py):
    # 0 decodes in the worker's own threads; auto: the node's CPUs per GPU worker, less
    # cpus_per_worker, for GPU workers, and 0 for CPU workers (their cores run the model).
    decode_workers: Int | Literal["auto"] = "auto"
    decode_nodes: Literal["same", "any"] = "same"  # any: CPU-only nodes may decode too
    decode_in_flight: Int = Field(0, ge=0, le=1024)  # chunks queued to the pool; 0: 2 per process
    # Shards queued on each worker: the next one reads and decodes while the current one
    # runs the model (only one runs the model at a time); 1: one shard at a time.
    shards_in_flight: Int = Field(2, ge=1, le=8)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Resample images on the CPU as BERG does (exact); null: yes for fp32, no for bf16/fp16.
    exact_resize: Bool | None = None
    # Compile the ViT-B/32 backbone with torch.compile (fused kernels; a warm-up of one to
    # two minutes per worker). fp32 stays within 1e-6 of the eager backbone.
    compile: Bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    startup_timeout_s: Float = Field(1800.0, gt=0)

    @field_validator("decode_workers")
    @classmethod
    def _decode_workers_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 512:
            raise ValueError("must be 'auto' or an integer from 0 (decode in the worker) to 512")
        return value

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return value


class RetriesConfig(_Strict):
    """How hard the scheduler tries before it gives up on a shard or a worker."""

    max_attempts: Int = Field(3, ge=1, le=100)
    error_rate_threshold: Float = Field(0.5, ge=0.0, le=1.0)
    speculative_tail: Bool = True
    speculative_min_elapsed_s: Float = Field(5.0, ge=0.0)
    max_worker_restarts: Int = Field(3, ge=0)
    # Wait before retry n is n x backoff_s, never more than MAX_BACKOFF_S.
    backoff_s: Float = Field(1.0, ge=0.0, le=MAX_BACKOFF_S)


class StorageSettings(_Strict):
    """Connection settings for one store; unset fields fall back to the standard AWS variables."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: Bool = False
    key: SecretStr | None = None
    secret: SecretStr | None = None

    def options(self) -> StorageOptions:
        return StorageOptions(
            endpoint_url=self.endpoint_url,
            region=self.region,
            anon=self.anon,
            key=self.key.get_secret_value() if self.key else None,
            secret=self.secret.get_secret_value() if self.secret else None,
        )


class StorageConfig(StorageSettings):
    """S3-compatible storage: the fields here serve every URL, except those under a key of
    `prefixes`, which use that block alone (nothing is inherited from the fields here).

    BERG's public bucket is read anonymously when no credentials are configured.
    """

    prefixes: dict[str, StorageSettings] = Field(default_factory=dict)

    @field_validator("prefixes")
    @classmethod
    def _check_prefixes(cls, value: dict[str, StorageSettings]) -> dict[str, StorageSettings]:
        for prefix in value:
            if "://" not in prefix or not prefix.split("://", 1)[1].strip("/"):
                raise ValueError(
                    f"prefix {prefix!r} is not a URL with a bucket: write it like 's3://bucket/' "
                    "or 's3://bucket/folder/'"
                )
        return value

    def options(self) -> StorageOptions:
        base = super().options()
        prefixes = tuple((prefix, block.options()) for prefix, block in self.prefixes.items())
        return StorageOptions(base.endpoint_url, base.region, base.anon, base.key, base.secret, prefixes=prefixes)


class RunConfig(_Strict):
    """A whole generation run."""

    # Local paths here resolve against the config file's folder (see config_paths).
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("input.shards", "berg_root", "backbone", "output")

    input: InputConfig
    berg_root: str
    backbone: str | None = None
    readouts: list[ReadoutConfig] = Field(min_length=1)
    output: str
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    def readout_specs(self) -> list[Any]:
        from berg_scale.errors import BergScaleError

        specs = []
        for index, readout in enumerate(self.readouts):
            try:
                for spec in readout.to_specs():
                    spec.resolve()  # validates ROI / channels against the model card
                    specs.append(spec)
            except BergScaleError as exc:
                raise ConfigError(f"readouts.{index} ({readout.model}): {exc}") from None
        seen: set[tuple] = set()
        for spec in specs:
            identity = (spec.model_id, spec.subject, json.dumps(spec.selection, sort_keys=True))
            if identity in seen:
                raise ConfigError(
                    f"readouts: {spec.model_id} subject {spec.subject} selection "
                    f"{spec.selection} is requested twice; list each readout once"
                )
            seen.add(identity)
        return specs

    def storage_options(self) -> StorageOptions:
        return self.storage.options()

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready dump with every secret masked, safe for run.json and logs."""
        return self.model_dump(mode="json")

    def input_fingerprint(self) -> str:
        """Hash of everything in the config that changes the numbers in the output."""
        # The shard list is left out on purpose: extending a range and resuming is fine.
        relevant = {
            "input": self.input.fingerprint_fields(),
            "readouts": [readout.model_dump(mode="json") for readout in self.readouts],
            "precision": self.resources.precision,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def default_of(model: type[BaseModel], name: str) -> Any:
    """A field's default as the config model defines it.

    The config model is the one place a default is written; code that also runs without a
    config (ModelSet, the worker's model factory, the scheduler's policy) takes its defaults from here.
    """
    return model.model_fields[name].get_default(call_default_factory=True)


# --------------------------------------------------------------------------- loading


def load_config(
    source: str | os.PathLike[str] | dict[str, Any],
    overrides: Sequence[str] = (),
    environ: dict[str, str] | None = None,
) -> RunConfig:
    """Read a YAML file (or a dict), apply `key.path=value` overrides, resolve `${VAR}`."""
    return load_validated(source, RunConfig, overrides, environ)


def load_validated(
    source: str | os.PathLike[str] | dict[str, Any],
    model: type[ModelT],
    overrides: Sequence[str] = (),
    environ: dict[str, str] | None = None,
    origin: str | None = None,
) -> ModelT:
    """YAML file or dict -> `model`, with overrides, `${VAR}` secrets and one-line errors.

    Shared by every typed config of the project (runs, RNC studies), so they all accept
    the same syntax and report problems the same way. For a file, the relative local
    paths among `model.PATH_FIELDS` resolve against the file's folder (not those set by
    an override); a dict is taken as given.
    """
    base_dir: Path | None = None
    if isinstance(source, dict):
        raw: Any = json.loads(json.dumps(source))
        origin = origin or "config"
    else:
        path = Path(source)
        base_dir = path.absolute().parent
        origin = origin or str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {origin}: {exc.strerror or exc}") from exc
        raw = load_yaml(text, origin)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: top level must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    raw = _resolve_env(raw, os.environ if environ is None else environ, ())
    if base_dir is not None:
        fields = getattr(model, "PATH_FIELDS", ())
        raw = resolve_config_paths(raw, base_dir, fields, skip=override_keys(overrides))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {format_validation_error(exc, model)}") from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `--set a.b.c=value`; the value is parsed as YAML (`[1,2]`, `true`, `8`)."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected key.path=value")
    key_path, _, text = override.partition("=")
    key_path = re.sub(r"\[(\d+)\]", r".\1", key_path)  # readouts[0].rois is readouts.0.rois
    parts = [part for part in key_path.strip().split(".") if part]
    if not parts:
        raise ConfigError(f"--set {override!r}: empty key path")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(part, node, where, override)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {override!r}: {where} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, key_path, override)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {override!r}: {'.'.join(parts[:-1])} is not a section")


def _list_index(part: str, node: list, where: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"--set {override!r}: {where} needs a list index 0..{len(node) - 1}, got {part!r}"
        )
    return int(part)


def _resolve_env(node: Any, environ: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {key: _resolve_env(value, environ, (*path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_env(value, environ, (*path, str(i))) for i, value in enumerate(node)]
    if isinstance(node, str):
        return _substitute_env(node, environ, ".".join(path) or "config")
    return node


def _substitute_env(text: str, environ: Any, where: str) -> str:
    """Expand `${NAME}` and `${NAME:-default}` (shell meaning: default when unset or empty).

    Anything else that starts with `${` is refused: taken literally it would become a
    folder or bucket key named `${...`, which nobody means.
    """
    secret = where.rsplit(".", 1)[-1] in ("key", "secret")

    def shown(reference: str) -> str:
        return "(value hidden)" if secret else repr(reference)

    def substitute(match: re.Match[str]) -> str:
        body = _ENV_BODY.fullmatch(match.group(1))
        if body is None:
            raise ConfigError(
                f"{where}: malformed environment reference {shown(match.group(0))}: write "
                "${NAME} or ${NAME:-default} (NAME: letters, digits and _, not starting with a digit)"
            )
        name, default = body.group(1), body.group(2)
        value = environ.get(name)
        if default is not None:
            if "${" in default:
                raise ConfigError(
                    f"{where}: nested environment reference in {shown(match.group(0))} is not "
                    "supported: give a literal default"
                )
            return value if value else default
        if value is None:
            raise ConfigError(
                f"{where}: environment variable {name} is not set (export it, give a default "
                f"with ${{{name}:-default}}, or edit the config)"
            )
        return value

    result = _ENV_REFERENCE.sub(substitute, text)
    # Whatever `${` is left had no closing brace.
    leftover = _ENV_REFERENCE.sub("", text)
    if "${" in leftover:
        start = leftover.index("${")
        raise ConfigError(
            f"{where}: unterminated environment reference {shown(leftover[start:start + 40])}: "
            "close it with '}', as in ${NAME} or ${NAME:-default}"
        )
    return result


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """Turn pydantic's multi-line report into one line: path, problem, bad value."""
    messages: list[str] = []
    by_location: dict[str, int] = {}
    for error in exc.errors(include_url=False):
        parts = [part for part in error["loc"] if not _is_union_tag(part)]
        location = ".".join(str(part) for part in parts) or "config"
        kind = error["type"]
        if location in by_location and kind not in ("extra_forbidden", "missing"):
            # One message per field, even when a union produced one error per member type.
            index = by_location[location]
            problem = _problem(error)
            if problem not in messages[index]:
                messages[index] = messages[index].replace(" (got", f", or {problem} (got", 1)
            continue
        by_location[location] = len(messages)
        if kind == "extra_forbidden":
            allowed = _allowed_keys(error["loc"][:-1], root or RunConfig)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            messages.append(f"{location}: unknown key{hint}")
        elif kind == "missing":
            messages.append(f"{location}: required field is missing")
        else:
            problem = _problem(error)
            value = error.get("input")
            secret = bool(parts) and str(parts[-1]) in ("key", "secret")
            shown = "value hidden" if secret else _short_repr(value)
            if not secret and shown in problem:
                messages.append(f"{location}: {problem}")
            else:
                messages.append(f"{location}: {problem} (got {shown})")
    return _one_line("; ".join(messages))


_UNION_TAG = re.compile(r"^(int|str|float|bool|none|[a-z-]+\[.*\])$")


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def _problem(error: Mapping[str, Any]) -> str:
    problem = error["msg"]
    if problem.startswith("Value error, "):
        problem = problem[len("Value error, ") :]
    return problem[:1].lower() + problem[1:]


def _allowed_keys(location: tuple, root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = None
        for candidate in candidates:
            inner = [candidate, *getattr(candidate, "__args__", ())]
            for item in inner:
                if isinstance(item, type) and issubclass(item, BaseModel):
                    nested = item
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
