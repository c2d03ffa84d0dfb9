"""A forward's results on their way to the host, so the next batch can start meanwhile.

`.cpu()` on a CUDA tensor waits for the GPU to finish everything queued before it, and
the Python that launches the next batch's kernels only runs after that wait: the GPU
then idles for that launch time once per batch. `ModelSet.forward_async` instead copies
each output into pinned host memory without waiting and records an event; the engine
launches the next batch and only then collects the previous one (`result()`). On the CPU
the results are ready at once and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


def to_host(value: torch.Tensor) -> torch.Tensor:
    """A host copy of `value` that may still be in flight (CUDA: pinned, non-blocking)."""
    if value.device.type != "cuda":
        return value.cpu()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    return host


@dataclass
class PendingOutputs:
    """{column: host tensors, one per model batch} plus the event after their copies."""

    parts: dict[str, list[torch.Tensor]]
    ready: Any  # torch.cuda.Event, or None when the copies are already complete
    total: int  # images in the call
    columns: Sequence[Any]  # the model's OutputColumns (shape and dtype of empty results)

    @property
    def done(self) -> bool:
        return self.ready is None

    def result(self) -> dict[str, np.ndarray]:
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None
        out = {}
        for column in self.columns:
            parts = [part.numpy() for part in self.parts[column.name]]
            if parts:
                out[column.name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            else:
                out[column.name] = np.zeros((self.total, *column.shape), dtype=column.dtype)
        return out
