"""EEG figures: time courses per channel group and a scalp topomap at a chosen latency.

Both take the `mne.Epochs` that `berg_scale.exports.mne_export` returns, so channel types,
units and positions (MNE's bundled standard montage) come from one place. Values are
shown in MNE's display unit for the channel type (µV for EEG, mV/m² for current source
density), using MNE's own scaling table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.exports.optional import require

# Channel groups by 10-10 name prefix; order is the order of the curves.
GROUP_PATTERNS = (
    ("occipital", r"^(O|PO|I)"),
    ("parietal", r"^(P|CP)(?!O)"),
    ("central", r"^(C|FC)(?!P)"),
    ("temporal", r"^(T|FT|TP)"),
    ("frontal", r"^(F|AF|Fp)(?!C|T)"),
)


def channel_groups(channels: Sequence[str]) -> dict[str, list[str]]:
    """Default groups (occipital, parietal, central, temporal, frontal) from channel names."""
    groups: dict[str, list[str]] = {}
    for channel in channels:
        for name, pattern in GROUP_PATTERNS:
            if re.match(pattern, channel):
                groups.setdefault(name, []).append(channel)
                break
    return {name: groups[name] for name, _ in GROUP_PATTERNS if name in groups}


def display_scale(epochs: Any) -> tuple[float, str, str]:
    """(factor from SI, unit label, channel type) MNE uses to draw these channels."""
    mne = require("mne", "EEG figures")
    types = sorted(set(epochs.get_channel_types()))
    if len(types) != 1 or types[0] not in ("eeg", "csd"):
        raise BergScaleError(f"EEG figures need channels of one type, eeg or csd; got {types}")
    ch_type = types[0]
    return float(mne.defaults.DEFAULTS["scalings"][ch_type]), str(mne.defaults.DEFAULTS["units"][ch_type]), ch_type


def time_courses(epochs: Any, groups: Mapping[str, Sequence[str]] | None = None, ax: Any = None,
                 latency_s: float | None = None) -> Any:
    """Mean over epochs and the group's channels, with a band of ±1 SEM over epochs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = dict(groups) if groups is not None else channel_groups(epochs.ch_names)
    unknown = sorted({c for chans in groups.values() for c in chans} - set(epochs.ch_names))
    if unknown:
        raise BergScaleError(f"channel groups name channels the epochs lack: {', '.join(unknown[:5])}")
    if not groups:
        raise BergScaleError("no channel groups to draw: pass groups={'name': [channels]}")
    scale, unit, ch_type = display_scale(epochs)
    data = epochs.get_data(copy=False) * scale  # (epochs, channels, times)
    times_ms = epochs.times * 1000.0
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    colours = matplotlib.colormaps["tab10"]
    for i, (name, chans) in enumerate(groups.items()):
        picks = [epochs.ch_names.index(c) for c in chans]
        per_epoch = data[:, picks, :].mean(axis=1)
        mean = per_epoch.mean(axis=0)
        sem = per_epoch.std(axis=0, ddof=1) / np.sqrt(len(per_epoch)) if len(per_epoch) > 1 else np.zeros_like(mean)
        ax.plot(times_ms, mean, color=colours(i), lw=1.5, label=f"{name} ({len(chans)})")
        ax.fill_between(times_ms, mean - sem, mean + sem, color=colours(i), alpha=0.25, lw=0)
    ax.axvline(0.0, color="black", lw=0.8, ls=":")
    ax.axhline(0.0, color="black", lw=0.5)
    if latency_s is not None:
        ax.axvline(latency_s * 1000.0, color="grey", lw=1.0, ls="--")
    ax.set_xlabel("time from stimulus onset (ms)")
    quantity = "CSD" if ch_type == "csd" else "EEG"
    ax.set_ylabel(f"{quantity} ({unit})")
    ax.set_xlim(times_ms[0], times_ms[-1])
    ax.spines[["top", "right"]].set_visible(False)
    # Above the axes, in rows of up to three groups: EEG curves fill the whole panel, so no
    # place inside it is free for a legend.
    ax.legend(frameon=False, fontsize=8, title="channel group (n)", title_fontsize=8, loc="lower left",
              bbox_to_anchor=(0.0, 1.01), ncol=min(3, len(groups)), alignment="left", borderaxespad=0.0,
              columnspacing=1.2, handlelength=1.6)
    return ax


def topomap(epochs: Any, latency_s: float, ax: Any = None, colorbar: bool = True) -> Any:
    """The epoch-averaged scalp map at the sample nearest `latency_s` (MNE's plot_topomap)."""
    mne = require("mne", "EEG figures")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from berg_scale.exports.mne_export import has_positions

    if not has_positions(epochs.info):
        raise BergScaleError("the epochs have no channel positions: build them with to_mne(..., montage=...)")
    if not epochs.times[0] <= latency_s <= epochs.times[-1]:
        raise BergScaleError(
            f"latency {latency_s * 1000:g} ms is outside the epoch ({epochs.times[0] * 1000:g} to "
            f"{epochs.times[-1] * 1000:g} ms)"
        )
    scale, unit, ch_type = display_scale(epochs)
    sample = int(np.argmin(np.abs(epochs.times - latency_s)))
    values = epochs.get_data(copy=False)[:, :, sample].mean(axis=0) * scale
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    bound = float(np.max(np.abs(values))) or 1.0
    image, _ = mne.viz.plot_topomap(values, epochs.info, axes=ax, show=False, ch_type=ch_type, cmap="RdBu_r",
                                    vlim=(-bound, bound), contours=6, sensors=True)
    ax.set_title(f"{epochs.times[sample] * 1000:g} ms", fontsize=10)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(f"{'CSD' if ch_type == 'csd' else 'EEG'} ({unit})", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return ax


def eeg_overview(epochs: Any, latency_s: float, groups: Mapping[str, Sequence[str]] | None = None,
                 title: str | None = None) -> Any:
    """One figure: time courses per channel group (left) and the topomap at `latency_s` (right)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.8), gridspec_kw={"width_ratios": [1.7, 1.0]},
                                      layout="constrained")
    time_courses(epochs, groups, ax=left, latency_s=latency_s)
    topomap(epochs, latency_s, ax=right)
    n = len(epochs)
    fig.suptitle(title or f"Predicted EEG, mean of {n} epoch{'s' if n != 1 else ''} (band: ±1 SEM)", fontsize=10)
    return fig
