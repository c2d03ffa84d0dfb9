"""How a worker builds its models: a small picklable recipe sent to each actor.

Only this recipe (paths and readout specs) crosses the process boundary; each worker
loads the weights itself, once, on its own device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSetFactory:
    """Recipe for `berg_scale.models.ModelSet` on the device a worker was given."""

    berg_root: str
    readouts: tuple[Any, ...]
    precision: str = "fp32"
    batch_size: int = 100
    backbone_path: str | None = None
    storage: Any = None
    needs_weights: bool = field(default=True, init=False)

    def build(self, device: Any) -> Any:
        from berg_scale.models import ModelSet

        return ModelSet(
            self.berg_root,
            list(self.readouts),
            device=str(device),
            precision=self.precision,
            batch_size=self.batch_size,
            backbone_path=self.backbone_path,
            storage=self.storage,
        )
