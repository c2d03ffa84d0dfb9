"""How a worker builds its models: a small picklable factory sent to each actor.

Only this factory (paths and readout specs) crosses the process boundary; each worker
loads the weights itself, once, on its own device. A BERG root in object storage is first
copied into the node-local weight cache, so the workers of one node download it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from berg_scale.config import ResourcesConfig, default_of
from berg_scale.models.encoder import Encoder
from berg_scale.models.registry import installed_plugins


@dataclass(frozen=True)
class ModelSetFactory:
    """Builds a `berg_scale.models.ModelSet` on the device a worker was given."""

    berg_root: str
    readouts: tuple[Any, ...]
    precision: str = default_of(ResourcesConfig, "precision")
    batch_size: int = default_of(ResourcesConfig, "batch_size")
    backbone_path: str | None = None
    storage: Any = None
    exact_resize: bool | None = None
    compile: bool = default_of(ResourcesConfig, "compile")
    # Models registered at run time on the driver; each worker installs them again.
    plugins: tuple[Callable[[], None], ...] = field(default_factory=installed_plugins)
    needs_weights: bool = field(default=True, init=False)

    @classmethod
    def from_config(cls, config: Any) -> ModelSetFactory:
        """The factory a run config describes (its readouts, resources and storage)."""
        resources = config.resources
        return cls(
            berg_root=config.berg_root,
            readouts=tuple(config.readout_specs()),
            precision=resources.precision,
            batch_size=resources.batch_size,
            backbone_path=config.backbone,
            exact_resize=resources.exact_resize,
            compile=resources.compile,
            storage=config.storage_options(),
        )

    def local_berg_root(self) -> str:
        """The root to load from: a remote root becomes its node-local cached copy."""
        from berg_scale.io.storage import filesystem_for, is_remote, join

        if not is_remote(self.berg_root):
            return self.berg_root
        from berg_scale.weights import ensure_local_weights, files_for_readouts

        weights = files_for_readouts(self.readouts, include_metadata=False)
        metadata = files_for_readouts(self.readouts, include_weights=False)
        fs, _ = filesystem_for(self.berg_root, self.storage)
        # Metadata is optional for some readouts (fwRF without ROI means): copy what exists.
        present = [rel for rel in metadata if fs.exists(filesystem_for(join(self.berg_root, rel), self.storage)[1])]
        return ensure_local_weights(self.berg_root, weights + present, storage=self.storage)

    def build(self, device: Any) -> Encoder:
        from berg_scale.models import ModelSet

        for install in self.plugins:
            install()
        return ModelSet(
            self.local_berg_root(),
            list(self.readouts),
            device=str(device),
            precision=self.precision,
            batch_size=self.batch_size,
            backbone_path=self.backbone_path,
            storage=self.storage,
            exact_resize=self.exact_resize,
            compile=self.compile,
        )
