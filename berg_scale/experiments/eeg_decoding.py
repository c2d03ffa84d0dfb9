"""Time-resolved decoding of exemplar identity and a binary label from in silico EEG (BERG Fig. 1D).

Reads the EEG columns (`eeg-things_eeg_2-vit_b_32/sub-XX/...`, dims repetition x channel x
time) of an output written by `generate` and a label table with two labels (e.g.
animate / inanimate); the labelled images are the exemplars.

Exemplar identity: for every pair of exemplars and every time point, a linear classifier
tells the two apart from the channel pattern, with leave-one-repetition-out
cross-validation over the in silico repetitions (trials); accuracy is averaged over pairs.
The classifier is a closed-form, vectorised equivalent of scikit-learn's
`LinearDiscriminantAnalysis(solver="lsqr", shrinkage=S)` (S = --shrinkage, default 0.5)
trained on the two exemplars' training repetitions, with `LeaveOneGroupOut` over
repetition indices: its predictions are those of scikit-learn's estimator, checked in the
tests.

Label: the binary label is decoded at each time point from the repetition-averaged
pattern of each image, with scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr",
shrinkage=S)` under `StratifiedKFold(n_splits=--label-folds, shuffle=True,
random_state=--seed)` over images; the score is the balanced accuracy of the pooled
out-of-fold predictions (chance 50% even for unbalanced labels; plain accuracy when the
labels are balanced).

Both curves are averaged over subjects; each peak latency (the time of the mean curve's
maximum from stimulus onset on, `--peak-from`) gets a bootstrap confidence interval over
subjects. Writes decoding.parquet,
summary.json and eeg_decoding.png/.svg under --out.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_scale.errors import BergScaleError
from berg_scale.experiments.outputs import add_no_figures_option, output_names, write_experiment_outputs
from berg_scale.io.endpoints import ENDPOINT_HELP
from berg_scale.subject_ids import subject_argument

EEG_DIMS = ["repetition", "channel", "time"]
DEFAULT_CHANNEL_SET = "occipitoparietal"
CHANNEL_SETS = ("occipitoparietal", "all")
DEFAULT_SHRINKAGE = 0.5
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LABEL_FOLDS = 5
DEFAULT_PEAK_FROM_MS = 0.0  # peaks are latencies after stimulus onset, as the paper reports them
CI_LEVEL = 0.95
ANALYSES = ("exemplar", "label")


class EegDecodingError(BergScaleError):
    """The responses or options do not allow the EEG decoding experiment."""


# ----------------------------------------------------------------------------- channels


def occipitoparietal_channels(names: Sequence[str]) -> list[str]:
    """Channels whose name contains an upper-case "O" or "P" (O*, PO*, P*, CP*, TP*).

    This is the BERG paper's rule for its 28 occipital and parietal channels; "Fp1" and
    "Fp2" are frontal (lower-case p) and stay out.
    """
    return [name for name in names if "O" in name or "P" in name]


def resolve_channels(spec: str | None, available: Sequence[str]) -> list[str]:
    """Channels named by --channels: a named set or a comma list, in the column's order.

    Unknown names are an error that names them, so that a typo never shrinks the
    channel set silently.
    """
    spec = (spec or DEFAULT_CHANNEL_SET).strip()
    if spec == "occipitoparietal":
        chosen = occipitoparietal_channels(available)
        if not chosen:
            raise EegDecodingError(
                f"no channel name contains an upper-case O or P (channels: {', '.join(available)}): "
                "give --channels as a comma list"
            )
        return chosen
    if spec == "all":
        return list(available)
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    if not wanted:
        raise EegDecodingError("--channels is empty: give a comma list of channel names or "
                               f"one of {', '.join(CHANNEL_SETS)}")
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise EegDecodingError(
            f"unknown channel(s) {', '.join(unknown)}: the responses have {', '.join(available)} "
            f"(or use --channels {' / '.join(CHANNEL_SETS)})"
        )
    duplicates = sorted({name for name in wanted if wanted.count(name) > 1})
    if duplicates:
        raise EegDecodingError(f"--channels names {', '.join(duplicates)} more than once")
    return wanted


# ----------------------------------------------------------------------------- classifiers


def pairwise_lda_accuracy(
    data: np.ndarray,
    pairs: np.ndarray | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
    chunk_pairs: int = 256,
) -> np.ndarray:
    """Leave-one-repetition-out accuracy of every exemplar pair at every time point.

    `data` is (n_exemplars, n_repetitions, n_channels, n_times); `pairs` is (n_pairs, 2)
    exemplar indices (default: every pair i < j). Returns (n_pairs, n_times) accuracies in
    [0, 1]. For pair (i, j), time t and held-out repetition r, the prediction equals that of
    scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)` fitted
    on `data[[i, j]][:, reps != r, :, t]` with labels 0 (i) and 1 (j), tested on repetition
    r of both; the accuracy is the mean over the 2 x n_repetitions test trials
    (`cross_val_score` with `LeaveOneGroupOut`, groups = repetition, averaged).

    Why closed form: 200 exemplars give 19,900 pairs x 140 times x 4 folds = 11 million
    fits. The pooled within-class covariance of a pair has rank <= 2(R-1), so the shrunk
    covariance a*I + b*Z'Z is inverted through the Woodbury identity with a 2(R-1)-sized
    system, batched over pairs and time points. With balanced training classes the LDA
    intercept is the midpoint of the class means (log prior ratio 0), and a zero decision
    value predicts class 0, as scikit-learn does.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 4:
        raise ValueError("data must be (exemplars, repetitions, channels, times)")
    n_ex, n_rep, n_ch, n_t = data.shape
    if n_rep < 2:
        raise EegDecodingError(f"pairwise decoding needs at least 2 repetitions per exemplar, got {n_rep}")
    if not 0.0 < shrinkage <= 1.0:
        raise EegDecodingError(f"--shrinkage must be in (0, 1], got {shrinkage}")
    if pairs is None:
        pairs = np.column_stack(np.triu_indices(n_ex, k=1))
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    correct = np.zeros((len(pairs), n_t), dtype=np.float64)
    n_train = 2 * (n_rep - 1)
    b = (1.0 - shrinkage) / n_train
    eye = np.eye(n_train)
    # (exemplar, repetition, time, channel): channels last for the batched products.
    trials = np.ascontiguousarray(np.moveaxis(data, 2, 3))
    for held in range(n_rep):
        train = trials[:, [r for r in range(n_rep) if r != held]]  # (E, R-1, T, C)
        means = train.mean(axis=1)  # (E, T, C)
        resid = np.moveaxis(train - means[:, None], 1, 2)  # (E, T, R-1, C)
        test = trials[:, held]  # (E, T, C)
        for lo in range(0, len(pairs), chunk_pairs):
            i, j = pairs[lo : lo + chunk_pairs, 0], pairs[lo : lo + chunk_pairs, 1]
            z = np.concatenate([resid[i], resid[j]], axis=2)  # (P, T, N, C)
            # Pooled covariance S = Z'Z / N (priors n_k / N); shrunk: (1-s) S + s tr(S)/C I.
            a = shrinkage * np.einsum("ptnc,ptnc->pt", z, z) / (n_train * n_ch)
            singular = a <= 0
            a_safe = np.where(singular, 1.0, a)
            diff = means[j] - means[i]  # (P, T, C)
            mid = 0.5 * (means[i] + means[j])
            gram = z @ np.swapaxes(z, -1, -2)  # (P, T, N, N)
            system = b * gram + a_safe[..., None, None] * eye
            u = z @ diff[..., None]  # (P, T, N, 1)
            s = np.linalg.solve(system, u)
            w = (diff - b * (np.swapaxes(z, -1, -2) @ s)[..., 0]) / a_safe[..., None]
            w[singular] = 0.0  # zero covariance: scikit-learn's least squares gives coef 0
            dec_i = np.einsum("ptc,ptc->pt", test[i] - mid, w)
            dec_j = np.einsum("ptc,ptc->pt", test[j] - mid, w)
            correct[lo : lo + len(i)] += (dec_i <= 0).astype(float) + (dec_j > 0).astype(float)
    return correct / (2 * n_rep)


def label_lda_accuracy(
    patterns: np.ndarray,
    labels: np.ndarray,
    shrinkage: float = DEFAULT_SHRINKAGE,
    n_folds: int = DEFAULT_LABEL_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Balanced cross-validated accuracy of a binary label at every time point.

    `patterns` is (n_images, n_channels, n_times) (repetitions averaged), `labels` has two
    distinct values. Folds: `StratifiedKFold(n_splits=min(n_folds, smallest class),
    shuffle=True, random_state=seed)` over images, the same folds at every time point;
    classifier `LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)`. Returns
    (curve, folds used). Few hundred fits per subject: scikit-learn itself is fast enough.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    classes, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if len(classes) != 2:
        raise EegDecodingError(f"label decoding needs exactly 2 labels, got {len(classes)}")
    smallest = int(np.bincount(y).min())
    if int(n_folds) < 2:
        raise EegDecodingError(f"label decoding needs at least 2 folds, got {n_folds}")
    folds = min(int(n_folds), smallest)
    if folds < 2:
        raise EegDecodingError(
            f"label decoding needs at least 2 images of each label, got {smallest} of one label"
        )
    patterns = np.asarray(patterns, dtype=np.float64)
    n_t = patterns.shape[2]
    predicted = np.empty((n_t, len(y)), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(y)), y):
        if len(train) <= len(classes):  # scikit-learn's LDA needs more samples than classes
            raise EegDecodingError(f"label decoding needs at least 4 labelled images, got {len(y)}")
        for t in range(n_t):
            model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)
            model.fit(patterns[train, :, t], y[train])
            predicted[t, test] = model.predict(patterns[test, :, t])
    curve = np.array([balanced_accuracy_score(y, predicted[t]) for t in range(n_t)])
    return curve, folds


# ----------------------------------------------------------------------------- statistics


def peak_latency(curve: np.ndarray, times_ms: np.ndarray, from_ms: float | None = DEFAULT_PEAK_FROM_MS) -> float:
    """Time of the curve's maximum (the first one on ties) at or after `from_ms` (None: the
    whole epoch). A latency before stimulus onset would be no response at all."""
    window = _peak_window(times_ms, from_ms)
    return float(times_ms[window][int(np.argmax(np.asarray(curve)[window]))])


def _peak_window(times_ms: np.ndarray, from_ms: float | None) -> np.ndarray:
    window = np.ones(len(times_ms), dtype=bool) if from_ms is None else np.asarray(times_ms) >= from_ms
    if not window.any():
        raise EegDecodingError(f"--peak-from {from_ms:g} ms is after the epoch's last time point "
                               f"({float(np.max(times_ms)):g} ms)")
    return window


def bootstrap_peak(curves: np.ndarray, times_ms: np.ndarray, n_boot: int, rng: np.random.Generator,
                   from_ms: float | None = DEFAULT_PEAK_FROM_MS) -> dict[str, Any]:
    """Peak of the subject-mean curve and its percentile CI over resampled subjects.

    Each bootstrap sample draws subjects with replacement and takes the peak of their
    mean curve; with one subject the interval collapses onto the peak. Peaks are sought
    from `from_ms` on (stimulus onset by default).
    """
    curves = np.asarray(curves, dtype=np.float64)
    window = _peak_window(times_ms, from_ms)
    times_ms, curves = np.asarray(times_ms)[window], curves[:, window]
    peak = peak_latency(curves.mean(axis=0), times_ms, None)
    result: dict[str, Any] = {"peak_ms": peak, "peak_accuracy": float(curves.mean(axis=0).max() * 100),
                              "ci_level": CI_LEVEL, "n_bootstrap": int(n_boot), "peak_from_ms": from_ms}
    if n_boot <= 0:
        result.update(ci_low_ms=None, ci_high_ms=None)
        return result
    draws = rng.integers(0, len(curves), size=(int(n_boot), len(curves)))
    peaks = times_ms[np.argmax(curves[draws].mean(axis=1), axis=1)]
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(peaks, [tail, 100 - tail])
    result.update(ci_low_ms=float(low), ci_high_ms=float(high))
    return result


# ----------------------------------------------------------------------------- responses


@dataclass
class EegColumn:
    name: str
    subject: int
    shape: tuple[int, int, int]
    channels: list[str]
    times_ms: np.ndarray


def eeg_columns(readouts: dict[str, Any] | None, output: str) -> dict[int, EegColumn]:
    """EEG response columns by subject (one per subject: the `/all` selection if several)."""
    by_subject: dict[int, list[EegColumn]] = {}
    for entry in (readouts or {}).get("columns", []):
        if list(entry.get("dims") or []) != EEG_DIMS or entry.get("kind", "responses") != "responses":
            continue
        coords = entry.get("coords") or {}
        shape = tuple(int(n) for n in entry.get("shape") or [])
        if len(shape) != 3 or "channel" not in coords or "time" not in coords:
            raise EegDecodingError(f"{output}: EEG column {entry['name']} lacks channel or time coordinates "
                                   "in readouts.json")
        times = np.asarray(coords["time"], dtype=np.float64)
        # BERG's `times` are in seconds; keep ms exact to the sample (5 ms at 200 Hz).
        times_ms = np.round(times * 1000.0, 6) if np.nanmax(np.abs(times)) < 20 else times
        column = EegColumn(entry["name"], int(entry["subject"]), shape, [str(c) for c in coords["channel"]], times_ms)
        by_subject.setdefault(column.subject, []).append(column)
    chosen = {}
    for subject, columns in by_subject.items():
        full = [c for c in columns if c.name.split(":")[0].endswith("/all")]
        chosen[subject] = (full or columns)[0]
    return dict(sorted(chosen.items()))


def _read_rows(dataset: Any, columns: list[str]) -> Any:
    return dataset.to_table(columns=["shard", "key", "status", *columns])


def _subject_trials(dataset: Any, column: EegColumn, rows: dict[tuple[str, str], int],
                    channel_index: np.ndarray) -> np.ndarray:
    """(n_exemplars, repetitions, channels, times) for the labelled rows, in `rows` order."""
    from berg_scale.io.results import _to_numpy

    table = _read_rows(dataset, [column.name])
    idents = list(zip(table.column("shard").to_pylist(), table.column("key").to_pylist()))
    values = _to_numpy(table.column(column.name), len(idents), column.shape)
    position = np.empty(len(rows), dtype=np.int64)
    for at, ident in enumerate(idents):
        target = rows.get(ident)
        if target is not None:
            position[target] = at
    trials = np.asarray(values[position][:, :, channel_index], dtype=np.float64)
    bad = ~np.isfinite(trials).all(axis=(1, 2, 3))
    if bad.any():
        first = idents[int(position[np.flatnonzero(bad)[0]])]
        raise EegDecodingError(f"{column.name}: {int(bad.sum())} labelled images have non-finite responses "
                               f"(first: shard {first[0]}, key {first[1]})")
    return trials


# ----------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, metavar="OUTPUT", help="output folder or s3:// prefix of `generate`")
    parser.add_argument("--labels", required=True, metavar="TABLE",
                        help="CSV/Parquet with key,label (optionally shard) and exactly two labels")
    parser.add_argument("--label-column", default="label", help="column of the label table holding the binary label")
    parser.add_argument("--out", required=True, metavar="DIR", help="where decoding.parquet, summary.json and figures go")
    parser.add_argument("--subjects", nargs="+", type=subject_argument, metavar="N", help="EEG subjects (default: every one present)")
    parser.add_argument("--channels", default=DEFAULT_CHANNEL_SET, metavar="SET|A,B,...",
                        help="occipitoparietal (default: names with an upper-case O or P), all, or a comma list")
    parser.add_argument("--max-pairs", type=int, metavar="N", help="decode a random sample of N exemplar pairs")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap samples of subjects for the peak CIs (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--shrinkage", type=float, default=DEFAULT_SHRINKAGE, metavar="S",
                        help=f"LDA covariance shrinkage in (0, 1] (default {DEFAULT_SHRINKAGE})")
    parser.add_argument("--peak-from", type=_peak_from, default=DEFAULT_PEAK_FROM_MS, metavar="MS",
                        help=f"look for each peak at or after MS ms (default {DEFAULT_PEAK_FROM_MS:g}, stimulus "
                        "onset; 'epoch' for the whole epoch, baseline included)")
    parser.add_argument("--label-folds", type=int, default=DEFAULT_LABEL_FOLDS, metavar="K",
                        help=f"stratified folds over images for the label (default {DEFAULT_LABEL_FOLDS})")
    parser.add_argument("--seed", type=int, default=0)
    add_no_figures_option(parser, first="--no-plots")
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help=ENDPOINT_HELP)


def run(args: argparse.Namespace) -> int:
    from berg_scale.io.storage import StorageOptions
    from berg_scale.io.storage_errors import storage_errors

    storage = StorageOptions(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    with storage_errors(None, storage, what="read or write"):
        summary = run_decoding(
            responses=args.responses, labels_path=args.labels, label_column=args.label_column, out=args.out, subjects=args.subjects,
            channels=args.channels, max_pairs=args.max_pairs, n_bootstrap=args.bootstrap,
            shrinkage=args.shrinkage, label_folds=args.label_folds, seed=args.seed, peak_from_ms=args.peak_from,
            plots=not args.no_figures, storage=storage,
        )
    print(f"labels: {summary['label_report']['description']}")
    print(f"{summary['n_exemplars']} exemplars ({', '.join(f'{n} {k}' for k, n in summary['label_counts'].items())}), "
          f"{summary['n_pairs']} pairs, {len(summary['channels'])} channels, subjects "
          f"{', '.join(str(s) for s in summary['subjects'])}")
    for analysis in ANALYSES:
        peak = summary["peaks"][analysis]
        ci = format_peak_ci(peak, len(summary["subjects"]))
        print(f"{_analysis_title(analysis, summary)} peaks at {format_ms(peak['peak_ms'])} ms "
              f"({peak['peak_accuracy']:.1f}% accuracy{', ' + ci if ci else ''})")
    for path in summary["files"]:
        print(f"wrote {path}")
    return 0


def format_ms(value: float) -> str:
    """A latency in ms with a typographic minus, so that a negative bound never reads as a dash."""
    return f"{value:g}".replace("-", "−")


def _peak_from(text: str) -> float | None:
    """`--peak-from`: milliseconds, or `epoch` for no lower bound."""
    if text.strip().lower() == "epoch":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds or 'epoch', got {text!r}") from None


def format_peak_ci(peak: dict[str, Any], n_subjects: int) -> str:
    """'95% CI 90 to 120 ms'; '' without a CI; for one subject, or when every resample peaks at
    the same time, the interval has no width and says so instead of repeating one bound."""
    low, high = peak.get("ci_low_ms"), peak.get("ci_high_ms")
    if low is None or high is None:
        return ""
    level = f"{int(round(peak.get('ci_level', CI_LEVEL) * 100))}% CI"
    if n_subjects < 2:
        return f"no {level} with 1 subject"
    if low == high:
        return f"{level} {format_ms(low)} ms (every resample peaks there)"
    return f"{level} {format_ms(low)} to {format_ms(high)} ms"


def _analysis_title(analysis: str, summary: dict[str, Any]) -> str:
    if analysis == "exemplar":
        return "exemplar identity"
    return " vs ".join(summary["label_counts"])


def run_decoding(
    responses: str,
    labels_path: str,
    out: str,
    subjects: Sequence[int] | None = None,
    channels: str | None = None,
    max_pairs: int | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    shrinkage: float = DEFAULT_SHRINKAGE,
    label_folds: int = DEFAULT_LABEL_FOLDS,
    seed: int = 0,
    plots: bool = True,
    peak_from_ms: float | None = DEFAULT_PEAK_FROM_MS,
    storage: Any = None,
    label_column: str = "label",
) -> dict[str, Any]:
    """The whole experiment; returns the summary written to summary.json."""
    from berg_scale.experiments.labels import match_labels, read_label_table
    from berg_scale.io.output_store import OutputStore, read_readouts
    from berg_scale.io.results import open_responses

    if not 0.0 < shrinkage <= 1.0:
        raise EegDecodingError(f"--shrinkage must be in (0, 1], got {shrinkage}")
    if max_pairs is not None and max_pairs < 1:
        raise EegDecodingError(f"--max-pairs must be at least 1, got {max_pairs}")
    if n_bootstrap < 0:
        raise EegDecodingError(f"--bootstrap must be 0 or more, got {n_bootstrap}")
    if label_folds < 2:
        raise EegDecodingError(f"--label-folds must be at least 2 (cross-validation needs a fold to "
                               f"test on), got {label_folds}")
    dataset = open_responses(responses, storage)
    columns = eeg_columns(read_readouts(OutputStore(responses, storage)), responses)
    if not columns:
        raise EegDecodingError(f"{responses} has no EEG columns (dims repetition x channel x time): generate "
                               "responses with the eeg-things_eeg_2-vit_b_32 model")
    if subjects:
        absent = [s for s in subjects if s not in columns]
        if absent:
            raise EegDecodingError(f"EEG subject(s) {', '.join(map(str, absent))} not in {responses}; present: "
                                   f"{', '.join(map(str, columns))}")
        columns = {s: columns[s] for s in subjects}
    first = next(iter(columns.values()))
    chosen = resolve_channels(channels, first.channels)
    for column in columns.values():
        lacking = [c for c in chosen if c not in column.channels]
        if lacking:
            raise EegDecodingError(f"{column.name} lacks channel(s) {', '.join(lacking)}")
        if not np.array_equal(column.times_ms, first.times_ms):
            raise EegDecodingError(f"{column.name} has other time points than {first.name}")
    times_ms = first.times_ms

    table = read_label_table(labels_path, storage, label_column=label_column)
    if len(table.labels) != 2:
        shown = ", ".join(table.labels[:6]) + (", ..." if len(table.labels) > 6 else "")
        raise EegDecodingError(f"label table {labels_path} has {len(table.labels)} labels ({shown}); "
                               "EEG decoding needs exactly two (e.g. animate, inanimate)")
    ids = _read_rows(dataset, [])
    shards = [str(s) for s in ids.column("shard").to_pylist()]
    keys = [str(k) for k in ids.column("key").to_pylist()]
    ok = [status == "ok" for status in ids.column("status").to_pylist()]
    match = match_labels(table, shards, keys, ok)
    used = [i for i, label in enumerate(match.labels) if label is not None]
    if len(used) < 2:
        raise EegDecodingError(f"fewer than 2 exemplars: {match.describe()} (labels {labels_path}, "
                               f"responses {responses})")
    rows = {(shards[i], keys[i]): n for n, i in enumerate(used)}
    labels = np.asarray([match.labels[i] for i in used], dtype=str)
    counts = {label: int((labels == label).sum()) for label in table.labels}

    rng = np.random.default_rng(seed)
    all_pairs = math.comb(len(used), 2)
    if max_pairs is not None and max_pairs < all_pairs:
        flat = np.sort(rng.choice(all_pairs, size=max_pairs, replace=False))
        pairs = _pairs_from_flat(flat, len(used))
    else:
        pairs = np.column_stack(np.triu_indices(len(used), k=1))

    curves: dict[str, list[np.ndarray]] = {name: [] for name in ANALYSES}
    folds_used = None
    for column in columns.values():
        channel_index = np.array([column.channels.index(c) for c in chosen], dtype=np.int64)
        trials = _subject_trials(dataset, column, rows, channel_index)
        curves["exemplar"].append(pairwise_lda_accuracy(trials, pairs, shrinkage).mean(axis=0))
        label_curve, folds_used = label_lda_accuracy(trials.mean(axis=1), labels, shrinkage, label_folds, seed)
        curves["label"].append(label_curve)
    stacked = {name: np.vstack(values) for name, values in curves.items()}
    peaks = {name: bootstrap_peak(stacked[name], times_ms, n_bootstrap, rng, peak_from_ms) for name in ANALYSES}
    report = match.report()
    report["description"] = match.describe()
    summary: dict[str, Any] = {
        "experiment": "eeg-decoding",
        "responses": responses,
        "labels": labels_path,
        "subjects": list(columns),
        "columns": [c.name for c in columns.values()],
        "channels": chosen,
        "channel_rule": (channels or DEFAULT_CHANNEL_SET),
        "n_exemplars": len(used),
        "label_counts": counts,
        "n_pairs": len(pairs),
        "n_pairs_possible": int(all_pairs),
        "n_repetitions": int(first.shape[0]),
        "times_ms": [float(t) for t in times_ms],
        "chance_accuracy": 50.0,
        "peaks": peaks,
        "label_report": report,
        "parameters": {
            "classifier": f"LinearDiscriminantAnalysis(solver='lsqr', shrinkage={shrinkage})",
            "exemplar_cv": "LeaveOneGroupOut over repetitions (trials), per pair and time point",
            "label_cv": f"StratifiedKFold(n_splits={folds_used}, shuffle=True, random_state={seed}) over images, "
                        "repetitions averaged, balanced accuracy",
            "shrinkage": shrinkage, "max_pairs": max_pairs, "bootstrap": n_bootstrap,
            "label_folds": label_folds, "seed": seed, "peak": ("argmax of the subject-mean curve over the epoch" if peak_from_ms is None else
                     f"argmax of the subject-mean curve from {peak_from_ms:g} ms on"),
            "peak_from_ms": peak_from_ms,
        },
    }
    summary["files"] = _write_outputs(out, storage, stacked, list(columns), times_ms, summary, plots)
    return summary


def _pairs_from_flat(flat: np.ndarray, n: int) -> np.ndarray:
    """Row-major upper-triangle pair (i < j) for each flat index, without building all pairs."""
    # Pairs before row i: i*n - i*(i+1)/2; invert that count for each flat index.
    i = np.floor((2 * n - 1 - np.sqrt((2 * n - 1) ** 2 - 8 * flat)) / 2).astype(np.int64)
    start = i * n - i * (i + 1) // 2
    low = flat < start
    i[low] -= 1
    start = i * n - i * (i + 1) // 2
    high = flat >= start + (n - 1 - i)
    i[high] += 1
    start = i * n - i * (i + 1) // 2
    j = flat - start + i + 1
    return np.column_stack([i, j])


# ----------------------------------------------------------------------------- outputs


def decoding_table(curves: dict[str, np.ndarray], subjects: Sequence[int], times_ms: np.ndarray) -> Any:
    """Long table: one row per (subject or 'mean', analysis, time point); accuracy in %."""
    import pyarrow as pa

    subject_col, analysis_col, time_col, acc_col = [], [], [], []
    for analysis in ANALYSES:
        block = curves[analysis]
        for label, curve in [*zip([str(s) for s in subjects], block), ("mean", block.mean(axis=0))]:
            subject_col += [label] * len(times_ms)
            analysis_col += [analysis] * len(times_ms)
            time_col += [float(t) for t in times_ms]
            acc_col += [float(a) * 100 for a in curve]
    return pa.table({"subject": pa.array(subject_col, pa.string()), "analysis": pa.array(analysis_col, pa.string()),
                     "time_ms": pa.array(time_col, pa.float64()), "accuracy": pa.array(acc_col, pa.float64())})


FIGURE = "eeg_decoding"


def _write_outputs(out: str, storage: Any, curves: dict[str, np.ndarray], subjects: list[int],
                   times_ms: np.ndarray, summary: dict[str, Any], plots: bool) -> list[str]:
    """decoding.parquet, summary.json and (with `plots`) the figure under `out`; returns the URLs."""
    drawn = {FIGURE: decoding_figure(curves, times_ms, summary)} if plots else {}
    return write_experiment_outputs(out, storage, {"decoding": decoding_table(curves, subjects, times_ms)},
                                    drawn, summary, known=output_names(("decoding",), (FIGURE,)))


COLOURS = {"exemplar": "#1f4e9c", "label": "#c2410c"}


def _peak_legend(peak: dict[str, Any], n_subjects: int) -> str:
    """`Peak 105 ms, 95% CI 95 to 115 ms`: short enough for two legend columns under the plot."""
    text = f"Peak {format_ms(peak['peak_ms'])} ms"
    low, high = peak.get("ci_low_ms"), peak.get("ci_high_ms")
    if n_subjects < 2 or low is None or high is None:
        return text
    level = f"{int(round(peak.get('ci_level', CI_LEVEL) * 100))}% CI"
    if low == high:
        return f"{text}, {level}: every resample peaks there"
    return f"{text}, {level} {format_ms(low)} to {format_ms(high)} ms"


def decoding_figure(curves: dict[str, np.ndarray], times_ms: np.ndarray, summary: dict[str, Any]) -> Any:
    """Both subject-mean curves with a band of +-1 SEM across subjects, chance and peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    n_subjects = len(summary["subjects"])
    for analysis in ANALYSES:
        block = curves[analysis] * 100
        mean = block.mean(axis=0)
        colour = COLOURS[analysis]
        title = "Exemplar identity" if analysis == "exemplar" else " vs ".join(summary["label_counts"]).capitalize()
        ax.plot(times_ms, mean, color=colour, lw=2, label=title)
        if n_subjects > 1:
            sem = block.std(axis=0, ddof=1) / math.sqrt(n_subjects)
            ax.fill_between(times_ms, mean - sem, mean + sem, color=colour, alpha=0.25, lw=0)
        peak = summary["peaks"][analysis]
        ax.axvline(peak["peak_ms"], color=colour, ls="--", lw=1.3,
                   label=_peak_legend(peak, n_subjects))
    ax.axhline(summary["chance_accuracy"], color="0.35", lw=1, ls=":", label="Chance (50%)")
    ax.axvline(0, color="0.6", lw=0.8)
    span = float(times_ms[-1] - times_ms[0])
    # a little room on both sides, so that a peak on the first or last sample stays visible
    ax.set_xlim(float(times_ms[0]) - 0.015 * span, float(times_ms[-1]) + 0.015 * span)
    ax.set_xlabel("Time from stimulus onset (ms)", fontsize=11)
    ax.set_ylabel("Decoding accuracy (%)", fontsize=11)
    ax.tick_params(labelsize=10)
    band = f", shading ±1 SEM over {n_subjects} subjects" if n_subjects > 1 else ", 1 subject"
    ax.set_title(f"In silico EEG: {summary['n_exemplars']} exemplars, {len(summary['channels'])} channels{band}",
                 fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    order = [0, 1, 4, 2, 3]  # two columns: exemplar curve, its peak, chance | label curve, its peak
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=9, frameon=False,
              loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


if __name__ == "__main__":  # pragma: no cover
    from berg_scale.cli import main

    sys.exit(main(["experiment", "eeg-decoding", *sys.argv[1:]]))
