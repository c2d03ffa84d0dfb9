"""EEG columns as `mne.EpochsArray`: sampling rate, channel names and types, montage, tmin, unit.

BERG's EEG models were trained on THINGS EEG2 epochs that had been transformed with MNE's
current source density (CSD), so their predictions are CSD values in volts per square
metre (the model card's `output.unit`). MNE keeps data in SI units and labels CSD channels
with its own channel type ("csd", plotted in mV/m²); handing the values over as "eeg" would
make MNE read them as volts and draw a wrong µV axis. The unit recorded with the column
decides both the channel type and the factor to SI units, so a model whose card states a
voltage (µV, mV, V) gets "eeg" channels scaled to volts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.exports.optional import require
from berg_scale.io.storage import StorageOptions

EEG_DIMS = ["repetition", "channel", "time"]
REPETITION_MODES = ("epochs", "average")
# unit as written in a card -> (factor to MNE's SI unit, MNE channel type)
UNITS: dict[str, tuple[float, str]] = {
    "V": (1.0, "eeg"),
    "mV": (1e-3, "eeg"),
    "µV": (1e-6, "eeg"),
    "uV": (1e-6, "eeg"),
    "V/m^2": (1.0, "csd"),
    "V/m²": (1.0, "csd"),
    "mV/m^2": (1e-3, "csd"),
    "mV/m²": (1e-3, "csd"),
    "µV/m^2": (1e-6, "csd"),
    "µV/m²": (1e-6, "csd"),
    "uV/m^2": (1e-6, "csd"),
}
# The 10-05 template on the Colin27 head; MNE 1.13 renamed "standard_1005" to "colin27_1005".
DEFAULT_MONTAGES = ("colin27_1005", "standard_1005")


def to_mne(
    output: str,
    column: str,
    repetitions: str = "epochs",
    keys: Sequence[str] | None = None,
    montage: str | None = "standard_1005",
    unit: str | None = None,
    storage: StorageOptions | None = None,
) -> Any:
    """An EEG column's committed responses as `mne.EpochsArray`.

    `repetitions="epochs"` gives one epoch per image and predicted repetition (metadata
    columns `key`, `shard`, `repetition`); `"average"` averages the repetitions, one epoch
    per image. `keys` keeps only those images, in that order. `montage` names one of MNE's
    bundled montages (None: no positions). `unit` overrides the unit recorded with the
    column (for outputs written before units were recorded, or other models).
    """
    from berg_scale.io.results import column_info, read_column

    if repetitions not in REPETITION_MODES:
        raise BergScaleError(f"repetitions must be one of {REPETITION_MODES}, got {repetitions!r}")
    info = column_info(output, column, storage)
    timing = eeg_timing(info, unit)
    all_keys, shards, values = read_column(output, column, True, storage)
    if keys is not None:
        values, all_keys, shards = _pick_keys(values, all_keys, shards, keys, column)
    return epochs_from_array(values, timing, repetitions, list(all_keys), list(shards), montage)


def eeg_timing(info: dict[str, Any], unit: str | None = None) -> dict[str, Any]:
    """channels, times (s), sfreq, tmin, unit, factor to SI and MNE channel type of an EEG column."""
    name = info.get("name", "?")
    if list(info.get("dims") or []) != EEG_DIMS:
        raise BergScaleError(
            f"{name} is not an EEG column (dims {info.get('dims')}, expected {EEG_DIMS}); "
            "to_mne takes eeg-things_eeg_2-vit_b_32 responses columns"
        )
    coords = info.get("coords") or {}
    if "channel" not in coords or "time" not in coords:
        raise BergScaleError(f"readouts.json has no channel/time coordinates for {name}; regenerate the output")
    attrs = info.get("attrs") or {}
    times = np.asarray(coords["time"], dtype=np.float64)
    sfreq = attrs.get("sfreq")
    steps = np.diff(times)
    if sfreq is None:
        if steps.size == 0:
            raise BergScaleError(f"{name} has a single time point and no recorded sampling rate")
        sfreq = 1.0 / float(np.median(steps))
    sfreq = float(sfreq)
    if steps.size and not np.allclose(steps, 1.0 / sfreq, rtol=1e-4, atol=1e-9):
        raise BergScaleError(
            f"{name}: the time points are not evenly spaced at {sfreq:g} Hz (a time-point selection "
            "with gaps); MNE epochs need a regular axis: generate with contiguous timepoints"
        )
    unit = unit or attrs.get("unit")
    if unit is None:
        raise BergScaleError(
            f"readouts.json records no unit for {name} (an output from before units were recorded); "
            "pass unit='V/m^2' (BERG's EEG models predict current source density)"
        )
    if unit not in UNITS:
        raise BergScaleError(f"unknown EEG unit {unit!r}; known units: {', '.join(UNITS)}")
    factor, ch_type = UNITS[unit]
    return {
        "channels": [str(c) for c in coords["channel"]],
        "times": times,
        "sfreq": sfreq,
        "tmin": float(attrs.get("tmin", times[0])),
        "unit": unit,
        "factor": factor,
        "ch_type": ch_type,
        "column": name,
    }


def epochs_from_array(
    values: np.ndarray,
    timing: dict[str, Any],
    repetitions: str = "epochs",
    keys: Sequence[str] | None = None,
    shards: Sequence[str] | None = None,
    montage: str | None = "standard_1005",
) -> Any:
    """(n_images, n_repetitions, n_channels, n_times) values in the column's unit -> EpochsArray."""
    mne = require("mne", "to_mne")
    values = np.asarray(values)
    if values.ndim != 4 or values.shape[2:] != (len(timing["channels"]), len(timing["times"])):
        raise BergScaleError(
            f"EEG values must be (images, repetitions, {len(timing['channels'])} channels, "
            f"{len(timing['times'])} times), got {values.shape}"
        )
    n_images, n_rep = values.shape[:2]
    keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(n_images)]
    shards = [str(s) for s in shards] if shards is not None else [""] * n_images
    if repetitions == "average":
        data = values.astype(np.float64).mean(axis=1)
        rows = {"key": keys, "shard": shards, "repetitions": [n_rep] * n_images}
    else:
        data = values.astype(np.float64).reshape(n_images * n_rep, *values.shape[2:])
        rows = {
            "key": np.repeat(keys, n_rep).tolist(),
            "shard": np.repeat(shards, n_rep).tolist(),
            "repetition": np.tile(np.arange(1, n_rep + 1), n_images).tolist(),
        }
    data *= timing["factor"]
    info = mne.create_info(timing["channels"], timing["sfreq"], "eeg")
    if montage:
        info.set_montage(_montage(mne, montage), on_missing="warn")
    if timing["ch_type"] == "csd":
        _mark_csd(mne, info)
    metadata = None
    try:
        import pandas as pd

        metadata = pd.DataFrame(rows)
    except ImportError:  # metadata is a convenience; the epochs are complete without it
        pass
    events = np.column_stack([np.arange(len(data)), np.zeros(len(data), int), np.ones(len(data), int)])
    epochs = mne.EpochsArray(data, info, events=events, tmin=timing["tmin"], event_id={"image": 1},
                             metadata=metadata, baseline=None, verbose="error")
    epochs.info["description"] = f"berg-scale {timing['column']} ({timing['unit']})"
    return epochs


def _montage(mne: Any, name: str) -> Any:
    """A bundled montage; the 10-05 template under whichever name this MNE uses."""
    builtin = set(mne.channels.get_builtin_montages())
    if name in DEFAULT_MONTAGES:
        name = next((n for n in DEFAULT_MONTAGES if n in builtin), name)
    if name not in builtin:
        raise BergScaleError(f"MNE has no bundled montage {name!r}; choose one of {sorted(builtin)[:8]} ...")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a renamed template warns in new MNE
        return mne.channels.make_standard_montage(name)


def _mark_csd(mne: Any, info: Any) -> None:
    """Turn EEG channels into CSD channels the way MNE's own CSD transform labels them."""
    from mne.io.constants import FIFF

    with info._unlock():
        for channel in info["chs"]:
            channel.update(coil_type=FIFF.FIFFV_COIL_EEG_CSD, unit=FIFF.FIFF_UNIT_V_M2)


def _pick_keys(values: np.ndarray, keys: np.ndarray, shards: np.ndarray, wanted: Sequence[str],
               column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    position: dict[str, int] = {}
    for i, key in enumerate(keys.tolist()):
        if key in position:
            raise BergScaleError(f"key {key!r} occurs in several shards of {column}; select by position instead")
        position[key] = i
    missing = [k for k in wanted if k not in position]
    if missing:
        raise BergScaleError(f"{len(missing)} keys are not among {column}'s committed images, e.g. {missing[0]!r}")
    rows = np.array([position[k] for k in wanted], dtype=np.int64)
    return values[rows], keys[rows], shards[rows]


def has_positions(info: Any) -> bool:
    """Whether every channel has a sensor position (MNE's get_montage lists no CSD channels)."""
    locs = np.array([ch["loc"][:3] for ch in info["chs"]])
    return bool(locs.size and np.isfinite(locs).all() and np.any(locs != 0, axis=1).all())
