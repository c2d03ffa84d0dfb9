"""The GNet encoder and the feature-weighted receptive field (fwRF) read-out, in torch.

Module and parameter names follow BERG's checkpoints so their state dicts load with
strict key and shape checking. Only inference (eval mode) is supported: BatchNorm uses
running statistics and dropout is the identity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAP_SIZES = (27, 25, 13)
N_MAP_FEATURES = 256
N_FEATURES = 3 * N_MAP_FEATURES  # 768


class _TrunkBlock(nn.Module):
    """BatchNorm on the block input, then a padded 3x3 convolution and ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1(self.bn1(x)))


class _Prefilter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2))
        self.conv2 = nn.Sequential(nn.Conv2d(64, 192, kernel_size=5, padding=2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2)
        y = F.relu(self.conv2(c1))
        return c1, y


class _Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(192, 128, kernel_size=3)
        self.bn1 = nn.BatchNorm2d(192, eps=1e-5)
        self.conv4a = _TrunkBlock(128, 128)
        self.conv5a = _TrunkBlock(128, 128)
        self.conv6a = _TrunkBlock(128, 128)
        self.conv4b = _TrunkBlock(128, 128)
        self.conv5b = _TrunkBlock(128, 128)
        self.conv6b = _TrunkBlock(128, 64)


class GNetEncoder(nn.Module):
    """Image (B, 3, 227, 227) in [0, 1] -> three feature maps of 256 channels each."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1, 3, 1, 1), requires_grad=False)
        self.pre = _Prefilter()
        self.enc = _Trunk()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1, y = self.pre(x - self.mu)
        t = self.enc
        c3 = F.relu(t.conv3(t.bn1(y)))
        c4a = t.conv4a(c3)
        c4b = t.conv4b(c4a)
        q = F.max_pool2d(c4b, kernel_size=3, stride=2, padding=1)
        c5a = t.conv5a(q)
        c5b = t.conv5b(c5a)
        c6a = t.conv6a(c5b)
        c6b = t.conv6b(c6a)
        f0 = torch.cat([c1, y], dim=1)
        f1 = torch.cat([c3, c4a[:, :64], c4b[:, :64]], dim=1)
        f2 = torch.cat([c5a[:, :64], c5b[:, :64], c6a[:, :64], c6b], dim=1)
        return f0, f1, f2


def log_tanh(t: torch.Tensor) -> torch.Tensor:
    """The fwRF non-linearity log(1 + |t|) * tanh(t) (written literally, not log1p)."""
    return torch.log(1 + torch.abs(t)) * torch.tanh(t)


class FwrfReadout(nn.Module):
    """Per voxel: softmax spatial pooling of each map, non-linearity, linear weights."""

    def __init__(self, n_voxels: int, voxel_chunk: int = 1024) -> None:
        super().__init__()
        self.rf0 = nn.Parameter(torch.zeros(n_voxels, 27, 27), requires_grad=False)
        self.rf1 = nn.Parameter(torch.zeros(n_voxels, 25, 25), requires_grad=False)
        self.rf2 = nn.Parameter(torch.zeros(n_voxels, 13, 13), requires_grad=False)
        self.w = nn.Parameter(torch.zeros(n_voxels, N_FEATURES), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(n_voxels), requires_grad=False)
        self.voxel_chunk = voxel_chunk

    def forward(self, maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch = maps[0].shape[0]
        flat = [log_tanh(m.float()).reshape(batch * N_MAP_FEATURES, -1) for m in maps]
        rfs = (self.rf0, self.rf1, self.rf2)
        outputs = []
        for start in range(0, self.b.shape[0], self.voxel_chunk):
            v = slice(start, start + self.voxel_chunk)
            pooled = []
            for f, rf in zip(flat, rfs):
                g = torch.softmax(rf[v].reshape(rf[v].shape[0], -1), dim=1)  # (nv, S)
                pooled.append((f @ g.T).reshape(batch, N_MAP_FEATURES, -1))  # (b, 256, nv)
            phi = log_tanh(torch.cat(pooled, dim=1))  # (b, 768, nv)
            outputs.append(torch.einsum("bcv,vc->bv", phi, self.w[v]) + self.b[v])
        return torch.cat(outputs, dim=1)
