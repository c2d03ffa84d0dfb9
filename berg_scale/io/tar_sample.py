"""The one record of an input image, from the tar reader to its output row.

`io/shard_reader.py` makes a `TarSample` per key of a shard, `engine/shard_pipeline.py`
decodes its image and keeps the same record (without the bytes) as the row's identity
and outcome, and `io/response_writer.py` turns those records into a Parquet row group.
One type all the way means a field added at the reader (a sidecar, a note) reaches the
writer without being copied through look-alike classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class TarSample:
    """One sample of a shard: its identity, its image bytes and what went wrong with it.

    Unpacks as `(key, index, image, image_ext, json)`. `index` is the key's rank by the first
    appearance of its image or json member in the tar (unique within the shard). Fresh from the reader, `error` is set
    exactly when `image` is None and says why; `notes` records non-fatal oddities (an
    unreadable json member, extra image members), which the shard's commit marker counts
    and quotes (a note never changes a row). `json` is the parsed sidecar, the source of
    the `input.metadata` columns. After decoding (`decoded`) the bytes are released and
    `error` is the row's error: the reader's reason, else the decoder's, else None (ok).
    """

    key: str
    index: int
    image: bytes | None = None
    image_ext: str | None = None
    json: dict[str, Any] | None = None
    error: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """No reason against this sample so far (an output row: its image went through the model)."""
        return self.error is None

    def decoded(self, decode_error: str | None) -> TarSample:
        """This sample as an output row: bytes released (a chunk waits for the model without
        holding its compressed images), the reader's error kept before the decoder's."""
        return dataclasses.replace(self, image=None, error=self.error or decode_error)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.key, self.index, self.image, self.image_ext, self.json))
