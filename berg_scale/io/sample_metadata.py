"""Per-image metadata carried from a shard's `<key>.json` sidecars into output columns.

`make-shards` writes `{"source", "width", "height"}` (plus `original_width` /
`original_height` for resized images) next to every image; img2dataset and similar
tools write their own fields. A run config that lists field names under
`input.metadata` gets one column per name, between the identity columns and the
responses. The known fields have fixed types (string path, int32 sizes); any other
field is a string column (JSON text for non-string values). A sample without the field,
or without a sidecar, gets a null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from berg_scale.io.shard_reader import escape_name

SCHEMA_KEY = "sample_metadata"
KNOWN_TYPES: dict[str, pa.DataType] = {
    "source": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
}
RESERVED = ("key", "shard", "index", "status", "error")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_names(names: Sequence[str]) -> list[str]:
    """Field names usable as columns; ValueError naming the problem otherwise."""
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"metadata field {name!r} must be a plain name (letters, digits, '_')")
        if name in RESERVED:
            raise ValueError(f"metadata field {name!r} would replace an identity column ({', '.join(RESERVED)})")
    if len(set(names)) != len(names):
        raise ValueError("metadata fields must be distinct")
    return names


def with_sample_metadata(schema: pa.Schema, names: Sequence[str], after: int) -> pa.Schema:
    """`schema` with one column per name inserted at position `after` (names recorded)."""
    if not names:
        return schema
    fields = list(schema)
    extra = [pa.field(name, KNOWN_TYPES.get(name, pa.string())) for name in names]
    payload = json.loads((schema.metadata or {}).get(b"berg_scale", b"{}"))
    payload[SCHEMA_KEY] = list(names)
    metadata = {**(schema.metadata or {}), b"berg_scale": json.dumps(payload, sort_keys=True).encode()}
    return pa.schema(fields[:after] + extra + fields[after:], metadata=metadata)


def metadata_names(schema: pa.Schema) -> list[str]:
    payload = json.loads((schema.metadata or {}).get(b"berg_scale", b"{}"))
    return list(payload.get(SCHEMA_KEY, []))


def _value(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_integer(arrow_type):
        return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31 else None
    # A JSON string may hold a lone surrogate (`"\udce9"`, what a tool writes for a file
    # name byte that is not UTF-8), which Parquet cannot store: such code points are
    # written as `%XX`, as in keys. JSON text of other values is ASCII, so always valid.
    return escape_name(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)


def metadata_array(field: pa.Field, sidecars: Sequence[dict[str, Any] | None]) -> pa.Array:
    """One column from the rows' sidecar dicts (null where a field is missing or mistyped)."""
    values = [_value(s.get(field.name) if isinstance(s, dict) else None, field.type) for s in sidecars]
    return pa.array(values, field.type)
