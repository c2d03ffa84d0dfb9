"""EEG decoding (BERG Fig. 1D) against planted structure and scikit-learn's own classifier.

Synthetic in silico EEG: 4 repetitions x 8 channels with BERG names x 30 time points.
Exemplar identity is carried by occipito-parietal channels at one time point, the binary
label at a later one; the command must recover both latencies within one sample.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from berg_scale.cli import main
from berg_scale.experiments import eeg_decoding as eeg
from berg_scale.models.registry import get_card
from berg_scale.rnc.synthetic import write_synthetic_output

CHANNELS = ["Fp1", "Cz", "O1", "Oz", "O2", "PO3", "P4", "CP1"]  # rule keeps the last 6
TIMES_S = np.round(-0.1 + 0.02 * np.arange(30), 6)  # -100 ms .. 480 ms
T_IDENTITY, T_LABEL = 10, 15  # 100 ms, 200 ms
N_EX, N_REP, N_SUBJECTS = 16, 4, 3
EEG_MODEL = "eeg-things_eeg_2-vit_b_32"


def planted_eeg(seed: int = 0) -> dict[int, np.ndarray]:
    """Per subject (images, repetition, channel, time): identity at T_IDENTITY, label at T_LABEL."""
    rng = np.random.default_rng(seed)
    op = np.array(["O" in c or "P" in c for c in CHANNELS])
    label_sign = np.where(np.arange(N_EX) % 2 == 0, 1.0, -1.0)  # even images: animate
    out = {}
    for subject in range(1, N_SUBJECTS + 1):
        data = rng.normal(size=(N_EX + 2, N_REP, len(CHANNELS), len(TIMES_S)))
        identity = rng.normal(size=(N_EX, len(CHANNELS))) * 2.5 * op
        data[:N_EX, :, :, T_IDENTITY] += identity[:, None, :]
        direction = rng.normal(size=len(CHANNELS)) * op
        direction *= 1.6 / np.linalg.norm(direction)
        data[:N_EX, :, :, T_LABEL] += label_sign[:, None, None] * direction[None, None, :]
        out[subject] = data
    return out


def write_eeg_output(url: str, subjects: dict[int, np.ndarray], error_rows=(), channels=CHANNELS) -> list[str]:
    columns, layouts, coords = {}, {}, {}
    for subject, data in subjects.items():
        name = f"{EEG_MODEL}/sub-{subject:02d}/all"
        columns[name] = data
        layouts[name] = {"shape": data.shape[1:], "dims": ["repetition", "channel", "time"]}
        coords[name] = {"repetition": list(range(1, data.shape[1] + 1)), "channel": list(channels),
                        "time": TIMES_S.tolist()}
    return write_synthetic_output(url, {}, voxel_columns=columns, layouts=layouts, coords=coords, n_shards=2,
                                  error_rows=error_rows)


def write_labels(path, keys, labels) -> str:
    lines = ["key,label", *(f"{k},{v}" for k, v in zip(keys, labels))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("eeg")
    output = str(root / "responses")
    # Image N_EX has an error row; image N_EX + 1 has no label; one table key is absent.
    keys = write_eeg_output(output, planted_eeg(), error_rows=[N_EX])
    labels = ["animate" if i % 2 == 0 else "inanimate" for i in range(N_EX + 1)]
    table = write_labels(root / "labels.csv", [*keys[: N_EX + 1], "not-generated"], [*labels, "animate"])
    return {"root": root, "output": output, "labels": table, "keys": keys}


def run_cli(planted, out, *extra) -> int:
    return main(["experiment", "eeg-decoding", "--responses", planted["output"], "--labels", planted["labels"],
                 "--out", str(out), *extra])


# ------------------------------------------------------------------ classifier equivalence


def sklearn_pairwise(data: np.ndarray, shrinkage: float) -> np.ndarray:
    """scikit-learn's own pairwise decoding: LDA(lsqr, shrinkage) with LeaveOneGroupOut over repetitions."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_score

    n_ex, n_rep, _, n_t = data.shape
    y = np.r_[np.zeros(n_rep), np.ones(n_rep)]
    groups = np.r_[np.arange(n_rep), np.arange(n_rep)]
    rows = []
    for i in range(n_ex):
        for j in range(i + 1, n_ex):
            rows.append([
                cross_val_score(LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage),
                                np.concatenate([data[i, :, :, t], data[j, :, :, t]]), y, groups=groups,
                                cv=LeaveOneGroupOut()).mean()
                for t in range(n_t)
            ])
    return np.array(rows)


@pytest.mark.parametrize("shrinkage", [0.5, 0.05, 1.0])
def test_pairwise_classifier_equals_sklearn_lda(shrinkage):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(6, 4, 5, 4)) + 0.8 * rng.normal(size=(6, 1, 5, 4))
    mine = eeg.pairwise_lda_accuracy(data, shrinkage=shrinkage, chunk_pairs=4)
    np.testing.assert_array_equal(mine, sklearn_pairwise(data, shrinkage))
    assert 0.5 < mine.mean() < 1.0  # a case with errors to get right, not all-correct


def test_pairwise_classifier_three_repetitions_and_more_channels_than_trials():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(4, 3, 9, 3)) + rng.normal(size=(4, 1, 9, 3))
    pairs = np.array([[0, 3], [1, 2]])
    mine = eeg.pairwise_lda_accuracy(data, pairs=pairs)
    np.testing.assert_array_equal(mine, sklearn_pairwise(data, eeg.DEFAULT_SHRINKAGE)[[2, 3]])


def test_label_decoding_is_stratified_lda_balanced_accuracy():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(5)
    patterns = rng.normal(size=(30, 4, 3))
    labels = np.array(["a"] * 12 + ["b"] * 18)
    patterns[12:, 0, 1] += 2.5
    curve, folds = eeg.label_lda_accuracy(patterns, labels, shrinkage=0.3, n_folds=5, seed=7)
    assert folds == 5
    y = (labels == "b").astype(int)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=7)
    for t in range(3):
        pred = cross_val_predict(LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.3), patterns[:, :, t], y, cv=cv)
        assert curve[t] == pytest.approx(balanced_accuracy_score(y, pred))
    assert curve[1] > 0.7
    with pytest.raises(eeg.EegDecodingError, match="at least 4 labelled images"):
        eeg.label_lda_accuracy(patterns[9:14], labels[9:14])  # 3 + 2 images: a 2-image training fold
    with pytest.raises(eeg.EegDecodingError, match="at least 2 folds, got 1"):
        eeg.label_lda_accuracy(patterns, labels, n_folds=1)  # 12 and 18 images per label: the option is at fault
    with pytest.raises(eeg.EegDecodingError, match="--label-folds must be at least 2"):
        eeg.run_decoding("unused", "unused", "unused", label_folds=1)


def test_pair_subsample_index_inverts_row_major_order():
    for n in (2, 3, 9, 200):
        flat = np.arange(n * (n - 1) // 2)
        np.testing.assert_array_equal(eeg._pairs_from_flat(flat, n), np.column_stack(np.triu_indices(n, 1)))


# ------------------------------------------------------------------ channels


def test_occipitoparietal_rule_keeps_berg_28_channels():
    names = list(get_card(EEG_MODEL).channels)
    chosen = eeg.occipitoparietal_channels(names)
    assert len(names) == 63 and len(chosen) == 28
    assert "Fp1" not in chosen and "Fp2" not in chosen and "Cz" not in chosen
    groups = {"O": 0, "PO": 0, "P": 0, "CP": 0, "TP": 0}
    for name in chosen:
        prefix = name.rstrip("0123456789z")
        groups[prefix] += 1
    assert groups == {"O": 3, "PO": 5, "P": 9, "CP": 7, "TP": 4}


def test_channel_option_forms():
    assert eeg.resolve_channels(None, CHANNELS) == ["O1", "Oz", "O2", "PO3", "P4", "CP1"]
    assert eeg.resolve_channels("all", CHANNELS) == CHANNELS
    assert eeg.resolve_channels("Oz, Cz", CHANNELS) == ["Oz", "Cz"]
    with pytest.raises(eeg.EegDecodingError, match="unknown channel.*Xx1, O9"):
        eeg.resolve_channels("Oz,Xx1,O9", CHANNELS)


# ------------------------------------------------------------------ the command


def test_planted_latencies_recovered(planted, capsys):
    out = planted["root"] / "result"
    assert run_cli(planted, out, "--bootstrap", "200", "--seed", "1") == 0
    console = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    step = 20.0
    assert abs(summary["peaks"]["exemplar"]["peak_ms"] - TIMES_S[T_IDENTITY] * 1000) <= step
    assert abs(summary["peaks"]["label"]["peak_ms"] - TIMES_S[T_LABEL] * 1000) <= step
    for analysis in ("exemplar", "label"):
        peak = summary["peaks"][analysis]
        assert peak["ci_low_ms"] <= peak["peak_ms"] <= peak["ci_high_ms"]
    assert summary["channels"] == ["O1", "Oz", "O2", "PO3", "P4", "CP1"]
    assert summary["subjects"] == [1, 2, 3]
    assert summary["n_exemplars"] == N_EX and summary["n_pairs"] == N_EX * (N_EX - 1) // 2
    assert summary["label_counts"] == {"animate": N_EX // 2, "inanimate": N_EX // 2}
    report = summary["label_report"]
    assert report["labelled_error_rows"] == 1 and report["response_rows_without_label"] == 1
    assert report["table_keys_missing_from_responses"] == 1 and report["first_missing"] == ["not-generated"]
    assert "100 ms" in console and "200 ms" in console and "summary.json" in console
    assert "1 table keys not in the responses" in console

    table = pq.read_table(out / "decoding.parquet").to_pandas()
    assert list(table.columns) == ["subject", "analysis", "time_ms", "accuracy"]
    assert set(table["subject"]) == {"1", "2", "3", "mean"} and set(table["analysis"]) == {"exemplar", "label"}
    mean = table[(table.subject == "mean") & (table.analysis == "exemplar")]
    assert len(mean) == len(TIMES_S)
    assert mean.accuracy.max() > 90 and abs(mean.accuracy.iloc[0] - 50) < 15
    for ext in ("png", "svg"):
        assert (out / f"eeg_decoding.{ext}").stat().st_size > 1000
    assert (out / "eeg_decoding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontal_channels_carry_nothing(planted):
    out = planted["root"] / "frontal"
    assert run_cli(planted, out, "--channels", "Fp1,Cz", "--bootstrap", "0", "--subjects", "2", "--no-plots") == 0
    table = pq.read_table(out / "decoding.parquet").to_pandas()
    assert table[table.subject == "mean"].accuracy.max() < 85
    assert not (out / "eeg_decoding.png").exists()


def test_max_pairs_subsamples_with_seed(planted):
    out = planted["root"] / "pairs"
    assert run_cli(planted, out, "--max-pairs", "20", "--bootstrap", "10", "--subjects", "1", "--no-plots") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == 20 and summary["n_pairs_possible"] == N_EX * (N_EX - 1) // 2


def one_line_error(capsys, code: int, pattern: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert pattern in err, err


def test_errors_are_one_line(planted, tmp_path, capsys):
    one_line_error(capsys, run_cli(planted, tmp_path / "a", "--channels", "Oz,Q7"), "unknown channel(s) Q7")
    one_line_error(capsys, run_cli(planted, tmp_path / "b", "--subjects", "1", "7"), "EEG subject(s) 7 not in")

    keys = planted["keys"]
    three = write_labels(tmp_path / "three.csv", keys[:6], ["a", "b", "c"] * 2)
    one_line_error(capsys, main(["experiment", "eeg-decoding", "--responses", planted["output"], "--labels", three,
                                 "--out", str(tmp_path / "c")]), "has 3 labels")
    single = write_labels(tmp_path / "single.csv", [keys[0], "ghost"], ["animate", "inanimate"])
    one_line_error(capsys, main(["experiment", "eeg-decoding", "--responses", planted["output"], "--labels", single,
                                 "--out", str(tmp_path / "d")]), "fewer than 2 exemplars")

    fmri = str(tmp_path / "fmri")
    fkeys = write_synthetic_output(fmri, {}, voxel_columns={"fmri-nsd-fwrf/sub-01/V1": np.zeros((4, 3))}, n_shards=1)
    labels = write_labels(tmp_path / "f.csv", fkeys, ["a", "b"] * 2)
    one_line_error(capsys, main(["experiment", "eeg-decoding", "--responses", fmri, "--labels", labels,
                                 "--out", str(tmp_path / "e")]), "has no EEG columns")


@pytest.mark.slow
@pytest.mark.ray
def test_end_to_end_on_generated_demo_eeg(ray_session, tmp_path, capsys):
    """Responses from the real engine (demo root, random weights): layout, channels and times as BERG's."""
    from berg_scale.commands.demo import DEMO_EEG_CHANNELS
    from berg_scale.io.results import open_responses

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-rnc", "--no-experiments", "--shards", "2",
                 "--images-per-shard", "4"]) == 0
    generated = str(out / "generated")
    ids = open_responses(generated).to_table(columns=["shard", "key"])
    rows = list(zip(ids.column("shard").to_pylist(), ids.column("key").to_pylist()))
    table = tmp_path / "labels.csv"
    table.write_text("shard,key,label\n" + "".join(f"{s},{k},{'animate' if i % 2 else 'inanimate'}\n"
                                                  for i, (s, k) in enumerate(rows)))
    capsys.readouterr()
    assert main(["experiment", "eeg-decoding", "--responses", generated, "--labels", str(table),
                 "--out", str(tmp_path / "dec"), "--bootstrap", "20"]) == 0
    console = capsys.readouterr().out
    summary = json.loads((tmp_path / "dec" / "summary.json").read_text())
    assert summary["channels"] == [c for c in DEMO_EEG_CHANNELS if c != "Cz"]
    assert summary["times_ms"][0] == -100 and summary["times_ms"][-1] == 595 and len(summary["times_ms"]) == 140
    assert summary["n_exemplars"] == 7 and summary["label_report"]["labelled_error_rows"] == 1
    assert "1 labelled images with an error row left out" in console
    assert (tmp_path / "dec" / "eeg_decoding.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_ci_reads_with_negative_bounds_and_without_width():
    from berg_scale.experiments.eeg_decoding import format_ms, format_peak_ci

    peak = {"peak_ms": -65.0, "ci_low_ms": -80.0, "ci_high_ms": -50.0, "ci_level": 0.95}
    assert format_peak_ci(peak, 3) == "95% CI −80 to −50 ms"
    assert format_peak_ci({**peak, "ci_low_ms": -65.0, "ci_high_ms": -65.0}, 3) == \
        "95% CI −65 ms (every resample peaks there)"
    assert format_peak_ci({**peak, "ci_low_ms": -65.0, "ci_high_ms": -65.0}, 1) == "no 95% CI with 1 subject"
    assert format_peak_ci({**peak, "ci_low_ms": None, "ci_high_ms": None}, 3) == ""
    assert format_peak_ci({**peak, "ci_low_ms": -10.0, "ci_high_ms": 15.0}, 3) == "95% CI −10 to 15 ms"
    assert format_ms(105.0) == "105" and format_ms(-2.5) == "−2.5"


def test_one_subject_console_says_there_is_no_ci(planted, capsys):
    out = planted["root"] / "one"
    assert run_cli(planted, out, "--bootstrap", "20", "--subjects", "1", "--no-figures") == 0
    console = capsys.readouterr().out
    peaks = [line for line in console.splitlines() if " peaks at " in line]
    assert len(peaks) == 2
    assert all(line.endswith("accuracy, no 95% CI with 1 subject)") for line in peaks), peaks
    assert not (out / "eeg_decoding.png").exists()


def test_peaks_are_sought_from_stimulus_onset_unless_asked_otherwise():
    times = np.array([-100.0, -50.0, 0.0, 50.0, 100.0])
    curve = np.array([0.9, 0.5, 0.6, 0.8, 0.7])  # the baseline's maximum is no response
    assert eeg.peak_latency(curve, times) == 50.0
    assert eeg.peak_latency(curve, times, None) == -100.0
    peak = eeg.bootstrap_peak(np.vstack([curve, curve]), times, 10, np.random.default_rng(0))
    assert peak["peak_ms"] == 50.0 and peak["peak_accuracy"] == pytest.approx(80.0)
    assert peak["ci_low_ms"] == peak["ci_high_ms"] == 50.0
    with pytest.raises(eeg.EegDecodingError, match="--peak-from 200 ms is after the epoch's last time point"):
        eeg.peak_latency(curve, times, 200.0)
    assert eeg._peak_from("epoch") is None and eeg._peak_from("-50") == -50.0
