"""The target pattern: a vector from a .npy/.csv file, or an image's own response.

A target file is untrusted input: it is size-capped, .npy files are read without pickle,
text is parsed as numbers only, and anything that is not one finite vector is refused
with a one-line error that says what to fix. `--like SHARD/KEY` takes the vector of one
committed image from the same columns that are searched, and that image is left out of
the results (an image is always its own nearest neighbour).
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from berg_scale.io.storage import StorageOptions, filesystem_for
from berg_scale.rnc.responses import ResponseStore
from berg_scale.search.columns import ColumnSpec, column_matrix
from berg_scale.search.errors import SearchError

MAX_TARGET_BYTES = 256 * 1024 * 1024
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_SEPARATORS = re.compile(r"[,;\s]+")


@dataclass(frozen=True)
class Target:
    """The vector searched for, where it came from, and the image to leave out (if any)."""

    vector: np.ndarray  # float64 (D,)
    source: dict[str, Any]
    exclude: tuple[str, str] | None = None  # (shard, key)
    image: dict[str, Any] = field(default_factory=dict)  # shard, key, index of a --like image


def target_from_file(path: str, storage: StorageOptions | None = None) -> Target:
    return Target(read_vector_file(path, storage), {"file": path})


def read_vector_file(path: str, storage: StorageOptions | None = None) -> np.ndarray:
    """One finite vector from a .npy file or a text file of numbers (float64)."""
    fs, local = filesystem_for(path, storage)
    try:
        size = fs.size(local)
    except FileNotFoundError:
        raise SearchError(f"target file {path} does not exist: check the path") from None
    if size is not None and size > MAX_TARGET_BYTES:
        raise SearchError(f"target file {path} is {size / 2**20:.0f} MiB; the limit is {MAX_TARGET_BYTES // 2**20} MiB")
    with fs.open(local, "rb") as handle:
        data = handle.read(MAX_TARGET_BYTES + 1)
    suffix = posixpath.splitext(path.lower())[1]
    if suffix == ".npy":
        array = _from_npy(data, path)
    elif suffix in TEXT_SUFFIXES:
        array = _from_text(data, path)
    else:
        raise SearchError(f"target file {path} has suffix {suffix or '(none)'!r}: give a .npy, .csv, .tsv or .txt file")
    return as_vector(array, path)


def as_vector(array: np.ndarray, what: str) -> np.ndarray:
    """Squeeze to 1-D and check the values; `what` names the source in errors."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        raise SearchError(f"{what} holds {array.dtype} values: the target must be real numbers")
    vector = array.astype(np.float64).squeeze()
    if vector.ndim == 0:
        vector = vector.reshape(1)
    if vector.ndim != 1:
        raise SearchError(f"{what} has shape {tuple(array.shape)}: give one vector (a single row or column)")
    if vector.size == 0:
        raise SearchError(f"{what} is empty: the target needs one value per searched response")
    bad = np.flatnonzero(~np.isfinite(vector))
    if bad.size:
        raise SearchError(
            f"{what} has {bad.size} non-finite value(s) (first at position {int(bad[0])}): the target must be finite"
        )
    return vector


def _from_npy(data: bytes, path: str) -> np.ndarray:
    if not data.startswith(b"\x93NUMPY"):
        raise SearchError(f"target file {path} is not a readable .npy file (no NumPy header): save it with numpy.save")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SearchError(f"target file {path} holds Python objects: save a plain numeric array with numpy.save") from None
        raise SearchError(f"target file {path} is not a readable .npy file: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SearchError(f"target file {path} is not a readable .npy file: {exc}") from None


def _from_text(data: bytes, path: str) -> np.ndarray:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SearchError(f"target file {path} is not UTF-8 text: write numbers separated by commas or newlines") from None
    split = [[t for t in _SEPARATORS.split(line.strip()) if t] for line in text.splitlines()]
    rows = [(number, row) for number, row in enumerate(split, 1) if row]
    if rows and not any(_is_number(t) for t in rows[0][1]):
        rows = rows[1:]  # a header line
    if len(rows) > 1 and any(len(row) > 1 for _, row in rows):
        raise SearchError(
            f"target file {path} has {len(rows)} rows with several numbers: give one vector "
            f"(a single row, or one number per line)"
        )
    values = []
    for number, row in rows:
        for token in row:
            if not _is_number(token):
                raise SearchError(f"line {number} of target file {path}: {token!r} is not a number")
            values.append(float(token))
    return np.asarray(values, dtype=np.float64)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_like(value: str) -> tuple[str, str]:
    """(shard, key) of `SHARD/KEY`; keys may contain '/', shard names never do."""
    shard, sep, key = value.partition("/")
    if not sep or not shard or not key:
        raise SearchError(f"--like {value!r} is not SHARD/KEY: give the shard name and the image key, e.g. 000012/img00012345")
    return shard, key


def target_like(store: ResponseStore, columns: Sequence[ColumnSpec], value: str) -> Target:
    """The vector of one committed image, read from the searched columns."""
    shard, key = parse_like(value)
    committed = store.committed_shards()
    if shard not in committed:
        example = ", ".join(committed[:3])
        raise SearchError(f"--like {value!r}: shard {shard!r} is not a committed shard of {store.url} (e.g. {example})")
    names = [c.name for c in columns]
    table = store.dataset([shard]).to_table(columns=["key", "index", "status", *names], filter=pc.field("key") == key)
    if table.num_rows == 0:
        raise SearchError(f"--like {value!r}: shard {shard!r} has no image with key {key!r}")
    statuses = table.column("status").to_pylist()
    if "ok" not in statuses:
        raise SearchError(f"--like {value!r}: that image has status {statuses[0]!r} (no responses): pick another image")
    row = table.filter(pc.field("status") == "ok").slice(0, 1)
    vector = np.concatenate([column_matrix(row.column(c.name), c)[0] for c in columns]).astype(np.float64)
    if not np.isfinite(vector).all():
        raise SearchError(f"--like {value!r}: that image's responses are not all finite, so it cannot be a target")
    index = int(row.column("index")[0].as_py())
    return Target(vector, {"like": f"{shard}/{key}"}, exclude=(shard, key),
                  image={"shard": shard, "key": key, "index": index})
