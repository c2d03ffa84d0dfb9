"""What every experiment command shares: its output folder, its options, its reads.

- A rerun into the same --out removes the files of the earlier run that it does not write
  (and nothing a user put there), logging one line with the count.
- --no-figures and --no-plots are one option on every experiment command.
- Parquet is read by path through the filesystem, never from a Python file object: pyarrow
  reading such an object, then a quick exit, aborts the interpreter now and then (rc 134),
  which would make the one-line errors' exit status 2 unreliable.
"""

from __future__ import annotations

import ast
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyarrow as pa
import pytest

from berg_scale.cli import build_parser
from berg_scale.experiments.labels import LabelError, read_label_table
from berg_scale.experiments.outputs import output_names, write_experiment_outputs

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "berg_scale"
EXPERIMENT_ARGS = {
    "tripartite": ["--responses", "r", "--labels", "l.csv", "--out", "o"],
    "eeg-decoding": ["--responses", "r", "--labels", "l.csv", "--out", "o"],
    "cortical-distance": ["--study", "s", "--out", "o"],
    "categorical-selectivity": ["--study", "s", "--out", "o"],
    "roi-mds": ["--responses", "r", "--out", "o"],
}


def _figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    return fig


def test_a_rerun_removes_what_it_does_not_rewrite_and_keeps_user_files(tmp_path):
    out = tmp_path / "out"
    known = output_names(("scores", "extra"), ("map",))
    table = pa.table({"x": [1, 2]})
    write_experiment_outputs(str(out), None, {"scores": table, "extra": table}, {"map": _figure()},
                             {"experiment": "demo"}, known=known, log=lambda m: None)
    (out / "notes.txt").write_text("mine")
    (out / "map-old.png").write_bytes(b"not ours")
    assert {p.name for p in out.iterdir()} == {"scores.parquet", "extra.parquet", "map.png", "map.svg",
                                               "summary.json", "notes.txt", "map-old.png"}
    lines: list[str] = []
    write_experiment_outputs(str(out), None, {"scores": table}, {}, {"experiment": "demo"}, known=known,
                             log=lines.append)
    assert {p.name for p in out.iterdir()} == {"scores.parquet", "summary.json", "notes.txt", "map-old.png"}
    assert lines == ["removed 3 files of an earlier demo run that this run does not write: "
                     "extra.parquet, map.png, map.svg"]
    lines.clear()
    write_experiment_outputs(str(out), None, {"scores": table}, {}, {"experiment": "demo"}, known=known,
                             log=lines.append)
    assert lines == []  # nothing stale: nothing logged


@pytest.mark.parametrize("name", sorted(EXPERIMENT_ARGS))
def test_every_experiment_accepts_no_figures_and_no_plots(name):
    parser = build_parser()
    for flag in ("--no-figures", "--no-plots"):
        args = parser.parse_args(["experiment", name, *EXPERIMENT_ARGS[name], flag])
        assert args.no_figures is True
    assert parser.parse_args(["experiment", name, *EXPERIMENT_ARGS[name]]).no_figures is False


def _file_object_reads(path: pathlib.Path) -> list[str]:
    """'file:line' of every pyarrow read given the target of a `with ... .open(...) as NAME` block."""
    readers = {"read_table", "ParquetFile", "read_schema", "read_metadata", "read_csv", "open_csv"}
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        handles = {item.optional_vars.id for item in node.items
                   if isinstance(item.optional_vars, ast.Name) and isinstance(item.context_expr, ast.Call)
                   and getattr(item.context_expr.func, "attr", "") == "open"}
        for inner in (n for stmt in node.body for n in ast.walk(stmt)):
            if isinstance(inner, ast.Call) and getattr(inner.func, "attr", getattr(inner.func, "id", "")) in readers:
                if any(isinstance(a, ast.Name) and a.id in handles for a in inner.args):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno}")
    return found


def test_no_pyarrow_read_goes_through_a_python_file_object():
    files = [p for folder in ("experiments", "figures", "exports") for p in (PACKAGE / folder).glob("*.py")]
    assert files
    offenders = [hit for path in files for hit in _file_object_reads(path)]
    assert offenders == []


def test_a_label_table_without_the_label_column_names_its_columns_and_the_option(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("shard,key,category,animacy\nshard-000000,k0,animals,animate\n")
    with pytest.raises(LabelError) as caught:
        read_label_table(str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert "it has shard, key, category, animacy" in message and "--label-column category" in message
    table = read_label_table(str(path), label_column="animacy")
    assert table.label_of("shard-000000", "k0") == "animate"
    no_key = tmp_path / "nokey.csv"
    no_key.write_text("image,label\na,b\n")
    with pytest.raises(LabelError, match="needs a 'key' column .* it has image, label"):
        read_label_table(str(no_key))


def test_a_parquet_label_table_is_read(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "label": ["x", "y"]}), path)
    assert read_label_table(str(path)).labels == ["x", "y"]
    with pytest.raises(LabelError, match="does not exist"):
        read_label_table(str(tmp_path / "missing.parquet"))
