"""The ViT-B/32 feature extractor shared by every ViT-based readout.

Features are the outputs of all twelve encoder blocks (the second residual sum of each
block), flattened and concatenated: 12 x 50 tokens x 768 channels = 460,800 values per
image. We use torchvision's `vit_b_32` module, so torchvision's own checkpoint loads
strictly, and stop before the final LayerNorm and the classification head.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from berg_scale.errors import BergScaleError
from berg_scale.io.storage import StorageOptions, filesystem_for, is_remote
from berg_scale.models.families import VIT_B_32
from berg_scale.models.safe_load import load_checkpoint
from berg_scale.models.weights_check import require_finite_state

N_LAYERS = 12
N_TOKENS = 50
WIDTH = 768
N_FEATURES = N_LAYERS * N_TOKENS * WIDTH  # 460,800
BACKBONE_FILE = VIT_B_32.file
BACKBONE_URL = VIT_B_32.url


class BackboneMissingError(BergScaleError, FileNotFoundError):
    """The torchvision ViT-B/32 weights are not on this machine."""


def default_backbone_path() -> Path:
    """torchvision's cache location: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    return VIT_B_32.default_path()


def resolve_backbone_path(backbone_path: str | None, storage: StorageOptions | None = None) -> str:
    """The backbone file to use (local path or s3:// URL); never downloads from the web."""
    if backbone_path and is_remote(str(backbone_path)):
        fs, remote = filesystem_for(str(backbone_path), storage)
        if not fs.exists(remote):
            raise BackboneMissingError(
                f"ViT-B/32 backbone weights not found at {backbone_path}; upload torchvision's "
                f"'{BACKBONE_FILE}' there (from {BACKBONE_URL}) or fix backbone_path"
            )
        return str(backbone_path)
    path = Path(backbone_path).expanduser() if backbone_path else default_backbone_path()
    if not path.is_file():
        raise BackboneMissingError(
            f"ViT-B/32 backbone weights not found at {path}. Put torchvision's "
            f"'{BACKBONE_FILE}' there (or pass backbone_path=...); on a machine with internet: "
            f"curl -L -o {BACKBONE_FILE} {BACKBONE_URL}"
        )
    return str(path)


class VitFeatures(nn.Module):
    """Wraps torchvision's ViT-B/32 and returns the concatenated block outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_count = 0  # number of backbone passes; lets callers verify sharing
        self._blocks: Any = self.block_outputs

    def compile_blocks(self, **options: Any) -> None:
        """Run the block outputs through torch.compile (Inductor's fused kernels).

        Only the tensor computation is compiled, so the pass counter stays plain Python.
        The first batch of a new shape compiles; the second distinct batch size compiles
        once more with a dynamic batch dimension, after which every size reuses it.
        """
        self._blocks = torch.compile(self.block_outputs, dynamic=None, **options)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.forward_count += 1
        return self._blocks(pixels)

    def warm_up(self, pixels: torch.Tensor) -> None:
        """One pass that is not counted (it compiles, when compiled)."""
        self._blocks(pixels)

    def block_outputs(self, pixels: torch.Tensor) -> torch.Tensor:
        model: Any = self.model  # torchvision's VisionTransformer: its parts are untyped
        tokens = model._process_input(pixels)  # conv_proj + flatten -> (B, 49, 768)
        cls = model.class_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + model.encoder.pos_embedding
        blocks = []
        for layer in model.encoder.layers:
            x = layer(x)
            blocks.append(x.reshape(x.shape[0], -1))
        return torch.cat(blocks, dim=1).float()


def load_vit_b_32(
    path: str | Path, device: torch.device, storage: StorageOptions | None = None
) -> VitFeatures:
    """Build torchvision's ViT-B/32 and load the checkpoint strictly (safe loader)."""
    from torchvision.models import vit_b_32

    if is_remote(str(path)):
        fs, remote = filesystem_for(str(path), storage)
        with fs.open(remote, "rb") as handle:
            state = load_checkpoint(io.BytesIO(handle.read()), str(path))
    else:
        state = load_checkpoint(str(path), str(path))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise BergScaleError(f"{path}: expected a state dict, found {type(state).__name__}")
    with torch.device("meta"):
        model = vit_b_32(weights=None)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise BergScaleError(
            f"{path}: not a torchvision ViT-B/32 state dict ({str(exc).splitlines()[0]}); "
            f"use torchvision's {BACKBONE_FILE}"
        ) from None
    require_finite_state(model, str(path), "ViT-B/32")
    model = model.float().eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return VitFeatures(model)
