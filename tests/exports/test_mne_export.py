"""EEG columns as MNE epochs: sampling rate, names, types, tmin, montage and unit scaling.

The synthetic column holds known values in the unit recorded with it; MNE must show those
values on its own display axis (mV/m² for CSD, µV for EEG), which is the check that the
factor to SI units is right.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import mne
import numpy as np
import pytest

from berg_scale.errors import BergScaleError
from berg_scale.exports import to_mne
from berg_scale.exports.mne_export import _montage, has_positions
from berg_scale.models.registry import get_card
from berg_scale.models.vit_readouts import eeg_time_attrs
from berg_scale.rnc.synthetic import image_key, write_synthetic_output

EEG = "eeg-things_eeg_2-vit_b_32"
CHANNELS = ["O1", "Oz", "O2", "Pz", "Cz", "Fp1", "TP9", "FT10"]
N_IMAGES, N_REP, N_T = 5, 4, 20
TIMES = np.round(-0.1 + 0.005 * np.arange(N_T), 6)


def write_eeg(tmp_path, attrs: dict | None, times: np.ndarray = TIMES) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 0.02, (N_IMAGES, N_REP, len(CHANNELS), len(times))).astype(np.float32)
    name = f"{EEG}/sub-01/all"
    output = str(tmp_path / "out")
    write_synthetic_output(output, {}, {name: values}, n_shards=2,
                           layouts={name: {"shape": values.shape[1:], "dims": ["repetition", "channel", "time"]}},
                           coords={name: {"repetition": [1, 2, 3, 4], "channel": CHANNELS, "time": times}})
    path = tmp_path / "out" / "readouts.json"
    readouts = json.loads(path.read_text())
    if attrs is not None:
        readouts["columns"][0]["attrs"] = attrs
    path.write_text(json.dumps(readouts))
    return output, values


def card_attrs() -> dict:
    """What the EEG model records for a full time axis (the same function it calls)."""
    return eeg_time_attrs(TIMES, np.arange(N_T), get_card(EEG).output["unit"])


def test_card_states_current_source_density_unit():
    assert get_card(EEG).output["unit"] == "V/m^2"
    full = np.round(-0.1 + 0.005 * np.arange(140), 6)
    attrs = eeg_time_attrs(full, np.arange(140), "V/m^2")
    assert attrs == {"sfreq": 200.0, "tmin": -0.1, "unit": "V/m^2"}
    assert eeg_time_attrs(full, np.arange(20, 140), None) == {"sfreq": 200.0, "tmin": 0.0}


def test_epochs_have_sampling_names_types_tmin_and_montage(tmp_path):
    output, values = write_eeg(tmp_path, card_attrs())
    epochs = to_mne(output, f"{EEG}/sub-01/all")
    assert isinstance(epochs, mne.EpochsArray)
    assert epochs.info["sfreq"] == 200.0 and epochs.ch_names == CHANNELS
    assert set(epochs.get_channel_types()) == {"csd"}
    assert epochs.tmin == pytest.approx(-0.1) and len(epochs.times) == N_T
    np.testing.assert_allclose(epochs.times, TIMES, atol=1e-9)
    assert len(epochs) == N_IMAGES * N_REP
    assert list(epochs.metadata["repetition"][:4]) == [1, 2, 3, 4]
    assert list(epochs.metadata["key"][:5]) == [image_key(0)] * 4 + [image_key(1)]
    # CSD values are kept in SI (V/m²): the data equal the stored values, epoch = (image, repetition)
    np.testing.assert_allclose(epochs.get_data()[5], values[1, 1], rtol=1e-6)
    # Positions: MNE's bundled 10-05 template, exactly as MNE places it on EEG channels.
    reference = mne.create_info(CHANNELS, 200.0, "eeg")
    reference.set_montage(_montage(mne, "standard_1005"))
    for ours, theirs in zip(epochs.info["chs"], reference["chs"]):
        assert ours["ch_name"] == theirs["ch_name"]
        np.testing.assert_allclose(ours["loc"][:3], theirs["loc"][:3])
    assert has_positions(epochs.info)


def test_mne_display_axis_reads_the_stored_values(tmp_path):
    output, values = write_eeg(tmp_path, card_attrs())
    evoked = to_mne(output, f"{EEG}/sub-01/all", repetitions="average").average()
    fig = evoked.plot(show=False, spatial_colors=False)
    ax = fig.axes[0]
    assert "mV/m²" in ax.get_ylabel()
    drawn = np.array([line.get_ydata() for line in ax.lines if len(line.get_ydata()) == N_T])
    expected = values.astype(np.float64).mean(axis=(0, 1)) * 1e3  # V/m² shown as mV/m²
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(expected, axis=0), rtol=1e-5, atol=1e-9)
    matplotlib.pyplot.close(fig)

    # A model whose card states microvolts: MNE's µV axis shows the stored numbers themselves.
    epochs = to_mne(output, f"{EEG}/sub-01/all", repetitions="average", unit="µV")
    assert set(epochs.get_channel_types()) == {"eeg"}
    np.testing.assert_allclose(epochs.get_data(), values.mean(axis=1) * 1e-6, rtol=1e-5)
    fig = epochs.average().plot(show=False, spatial_colors=False)
    assert "µV" in fig.axes[0].get_ylabel()
    drawn = np.array([line.get_ydata() for line in fig.axes[0].lines if len(line.get_ydata()) == N_T])
    expected = values.astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(expected, axis=0), rtol=1e-5, atol=1e-9)
    matplotlib.pyplot.close(fig)


def test_average_and_key_selection(tmp_path):
    output, values = write_eeg(tmp_path, card_attrs())
    keys = [image_key(3), image_key(0)]
    epochs = to_mne(output, f"{EEG}/sub-01/all", repetitions="average", keys=keys, montage=None)
    assert len(epochs) == 2 and list(epochs.metadata["key"]) == keys
    assert not has_positions(epochs.info)
    np.testing.assert_allclose(epochs.get_data(), values[[3, 0]].mean(axis=1), rtol=1e-6)
    with pytest.raises(BergScaleError, match="not among"):
        to_mne(output, f"{EEG}/sub-01/all", keys=["nope"])


def test_clear_errors(tmp_path):
    output, _ = write_eeg(tmp_path / "a", None)
    with pytest.raises(BergScaleError, match="records no unit.*unit='V/m\\^2'"):
        to_mne(output, f"{EEG}/sub-01/all")
    with pytest.raises(BergScaleError, match="unknown EEG unit"):
        to_mne(output, f"{EEG}/sub-01/all", unit="furlong")
    epochs = to_mne(output, f"{EEG}/sub-01/all", unit="V/m^2")  # sfreq derived from the time axis
    assert epochs.info["sfreq"] == pytest.approx(200.0)
    gappy = np.concatenate([TIMES[:10], TIMES[12:22]])
    output, _ = write_eeg(tmp_path / "b", {"sfreq": 200.0, "unit": "V/m^2"}, times=gappy)
    with pytest.raises(BergScaleError, match="not evenly spaced"):
        to_mne(output, f"{EEG}/sub-01/all")
    with pytest.raises(BergScaleError, match="repetitions must be"):
        to_mne(output, f"{EEG}/sub-01/all", repetitions="mean")
