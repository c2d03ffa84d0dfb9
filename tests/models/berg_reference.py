"""Independent float64 reference of BERG's forward math, written from BERG's public file format.

Nothing here imports berg_scale's model code: files are read with NumPy/torch's own
(trusting) loaders, the resize step uses torchvision (as the spec allows), and the
ViT-B/32, scaler/PCA/regression, GNet and fwRF computations are spelled out in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

D = torch.float64


def load_npy_dict(path) -> dict:
    return np.load(path, allow_pickle=True).item()


def load_pt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- preprocessing ----------------------------------------------------------------------


def _resize(images: np.ndarray, size: list[int]) -> np.ndarray:
    if list(images.shape[-2:]) == size:
        return images
    t = torch.from_numpy(images)
    return TF.resize(t, size, interpolation=InterpolationMode.BILINEAR, antialias=True).numpy()


def vit_preprocess(images: np.ndarray) -> np.ndarray:
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = math.floor(256 * long / short)
    size = [256, new_long] if h <= w else [new_long, 256]
    x = _resize(images, size)
    hh, ww = x.shape[-2:]
    top, left = int(round((hh - 224) / 2)), int(round((ww - 224) / 2))
    x = x[..., top : top + 224, left : left + 224].astype(np.float64) / 255.0
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return (x - mean) / std


def fwrf_preprocess(images: np.ndarray) -> np.ndarray:
    return _resize(images, [227, 227]).astype(np.float64) / 255.0


# --- ViT-B/32 -----------------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * weight + bias


def vit_features(state: dict, pixels: np.ndarray) -> np.ndarray:
    """(B, 3, 224, 224) float64 -> (B, 460800) block outputs, all in float64."""
    s = {k: v.to(D) for k, v in state.items() if v.is_floating_point()}
    x = torch.from_numpy(pixels).to(D)
    b = x.shape[0]
    # 32x32 patches, row-major patch order, as a matrix product.
    patches = x.reshape(b, 3, 7, 32, 7, 32).permute(0, 2, 4, 1, 3, 5).reshape(b, 49, 3 * 32 * 32)
    tokens = patches @ s["conv_proj.weight"].reshape(768, -1).T + s["conv_proj.bias"]
    h = torch.cat([s["class_token"].expand(b, 1, 768), tokens], dim=1) + s["encoder.pos_embedding"]
    outs = []
    for i in range(12):
        p = f"encoder.layers.encoder_layer_{i}."
        y = _layer_norm(h, s[p + "ln_1.weight"], s[p + "ln_1.bias"])
        qkv = y @ s[p + "self_attention.in_proj_weight"].T + s[p + "self_attention.in_proj_bias"]
        q, k, v = qkv.split(768, dim=-1)
        q, k, v = (t.reshape(b, 50, 12, 64).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / 8.0
        scores = scores - scores.max(-1, keepdim=True).values
        att = torch.exp(scores)
        att = att / att.sum(-1, keepdim=True)
        a = (att @ v).transpose(1, 2).reshape(b, 50, 768)
        a = a @ s[p + "self_attention.out_proj.weight"].T + s[p + "self_attention.out_proj.bias"]
        h = h + a
        y = _layer_norm(h, s[p + "ln_2.weight"], s[p + "ln_2.bias"])
        y = y @ s[p + "mlp.0.weight"].T + s[p + "mlp.0.bias"]
        y = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))
        y = y @ s[p + "mlp.3.weight"].T + s[p + "mlp.3.bias"]
        h = h + y
        outs.append(h.reshape(b, -1))
    return torch.cat(outs, dim=1).numpy()


def pca_scores(weights: dict, features: np.ndarray) -> np.ndarray:
    sc, pca = weights["scaler_param"], weights["pca_param"]
    z = (features - sc["mean_"].astype(np.float64)) / sc["scale_"].astype(np.float64)
    return (z - pca["mean_"].astype(np.float64)) @ pca["components_"].astype(np.float64).T


def regression(params: dict, scores: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    coef = params["coef_"].astype(np.float64)
    intercept = params["intercept_"].astype(np.float64)
    if rows is not None:
        coef, intercept = coef[rows], intercept[rows]
    return scores @ coef.T + intercept


def eeg_responses(weights: dict, meta: dict, scores: np.ndarray, channels=None, timepoints=None) -> np.ndarray:
    names = meta["eeg"]["ch_names"]
    n_ch, n_t = len(names), len(meta["eeg"]["times"])
    ch = np.arange(n_ch) if channels is None else np.array([names.index(c) for c in channels])
    tp = np.arange(n_t) if timepoints is None else np.flatnonzero(np.asarray(timepoints) == 1)
    reps = []
    for r in range(1, len(weights["reg_param"]) + 1):
        y = regression(weights["reg_param"][f"rep-{r}"], scores).reshape(-1, n_ch, n_t)
        reps.append(y[:, ch][:, :, tp])
    return np.stack(reps, axis=1)


# --- GNet + fwRF ---------------------------------------------------------------------------


def gnet_maps(enc: dict, x: np.ndarray) -> list[torch.Tensor]:
    s = {k: v.to(D) for k, v in enc.items() if v.is_floating_point()}

    def bn(prefix, t):
        mean, var = s[prefix + ".running_mean"], s[prefix + ".running_var"]
        w, b = s[prefix + ".weight"], s[prefix + ".bias"]
        shape = (1, -1, 1, 1)
        return (t - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * w.view(shape) + b.view(shape)

    def conv(prefix, t, stride=1, padding=0):
        return F.conv2d(t, s[prefix + ".weight"], s[prefix + ".bias"], stride=stride, padding=padding)

    def block(name, t):
        return torch.relu(conv(f"enc.{name}.conv1", bn(f"enc.{name}.bn1", t), padding=1))

    z = torch.from_numpy(x).to(D) - s["mu"]
    c1 = F.max_pool2d(torch.relu(conv("pre.conv1.0", z, stride=4, padding=2)), 3, 2)
    y = torch.relu(conv("pre.conv2.0", c1, padding=2))
    c3 = torch.relu(conv("enc.conv3", bn("enc.bn1", y)))
    c4a = block("conv4a", c3)
    c4b = block("conv4b", c4a)
    q = F.max_pool2d(c4b, 3, 2, padding=1)
    c5a = block("conv5a", q)
    c5b = block("conv5b", c5a)
    c6a = block("conv6a", c5b)
    c6b = block("conv6b", c6a)
    return [
        torch.cat([c1, y], 1),
        torch.cat([c3, c4a[:, :64], c4b[:, :64]], 1),
        torch.cat([c5a[:, :64], c5b[:, :64], c6a[:, :64], c6b], 1),
    ]


def _act(t: torch.Tensor) -> torch.Tensor:
    return torch.log(1 + torch.abs(t)) * torch.tanh(t)


def fwrf_responses(checkpoint: dict, subject: int, x: np.ndarray) -> np.ndarray:
    params = checkpoint["best_params"]
    maps = gnet_maps(params["enc"], x)
    v = {k: t.to(D) for k, t in params["fwrfs"][subject].items()}
    phis = []
    for k, m in enumerate(maps):
        rf = v[f"rf{k}"]
        g = torch.softmax(rf.reshape(rf.shape[0], -1), dim=1)
        f = _act(m).reshape(m.shape[0], 256, -1)
        phis.append(torch.einsum("vs,ics->vic", g, f))
    phi = _act(torch.cat(phis, dim=2))
    out = torch.einsum("vic,vc->iv", phi, v["w"]) + v["b"]
    return out.numpy()


def rel_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference| (the metric every equivalence test uses)."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))
