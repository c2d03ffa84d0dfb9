"""Live per-image progress across workers, named start-up phases, and what the rates cover."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from berg_scale.engine.progress import ImageCounts, RunStats

from engine_support import make_config


def test_in_flight_rows_count_once_per_shard_and_give_way_to_the_marker():
    stats = RunStats(shards_total=4)
    counts = ImageCounts(stats, todo_bytes=4000, todo_shards=4)
    counts.report("a", 30, worker=0)
    counts.report("a", 50, worker=1)  # a speculative duplicate of a: the furthest counts
    counts.report("b", 10, worker=2)
    assert counts.images() == 60 and counts.estimated_total() is None  # no density known yet
    stats.add_marker({"rows": 100, "ok": 99, "errors": 1, "input_size": 1000})
    counts.close_shard("a")
    counts.report("a", 70, worker=0)  # a late answer about a committed shard is ignored
    assert counts.images() == 110
    assert counts.estimated_total() == 400  # 100 images per 1000 input bytes x 4000 bytes
    counts.report(None, 0, worker=2)  # worker 2 moved on (its attempt at b ended)
    assert counts.images() == 100

    by_shard = ImageCounts(RunStats(shards_total=3), todo_bytes=None, todo_shards=3)
    by_shard.stats.add_marker({"rows": 7})
    assert by_shard.estimated_total() == 21


def test_rate_line_says_what_each_figure_covers():
    stats = RunStats(shards_total=1, images=100, started=0.0, finished=10.0, startup_seconds=15.0,
                     startup_phases={"ray": 3.0, "workers": 12.0})
    line = stats.rate_line()
    assert "10.0 images/s over 10.0 s of processing (from the first ready worker)" in line
    assert "4.0 images/s over 25.0 s including start-up 15.0 s: ray 3.0 s, workers 12.0 s" in line
    assert stats.to_dict()["images_per_second_overall"] == pytest.approx(4.0)


@pytest.mark.ray
def test_a_run_reports_images_within_a_shard_and_names_its_start_up(ray_session, tmp_path, monkeypatch):
    from berg_scale.engine import progress
    from berg_scale.engine.run import run_generation
    from berg_scale.engine.stand_in_model import FixedCostModelFactory
    from berg_scale.synthetic.shards import write_synthetic_shards

    monkeypatch.setattr(progress, "POLL_INTERVAL_S", 0.1)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.3)
    write_synthetic_shards(str(tmp_path / "in"), 2, 40, seed=3)
    output = str(tmp_path / "out")
    config = make_config(str(tmp_path / "in"), output)
    lines: list[str] = []
    # 40 images at 0.05 s each: about 2 s per shard, several polls inside each one.
    result = run_generation(config, model_factory=FixedCostModelFactory(seconds_per_image=0.05),
                            show_progress=False, log=lines.append)
    assert result.exit_code == 0

    assert any(line.startswith("start-up: connecting to Ray: done in") for line in lines)
    assert any(line.startswith("start-up: starting workers and loading the models: done in") for line in lines)
    assert any("loaded its models in" in line for line in lines)
    progress_lines = [line for line in lines if line.startswith("generate: ")]
    counts = [(int(m.group(1).replace(",", "")), int(m.group(2)))
              for m in (re.match(r"generate: ([\d,]+).*shards (\d+)/2 done", line) for line in progress_lines) if m]
    assert any(0 < images < 40 and done == 0 for images, done in counts), progress_lines
    # After the first marker: a total estimated from images per input byte (80 in truth), and an ETA.
    totals = [int(m.group(1)) for m in (re.search(r"of ~(\d+) images .*ETA", line) for line in progress_lines) if m]
    assert totals and all(60 <= total <= 100 for total in totals), "\n".join(lines)

    summary = result.summary()
    assert "of processing (from the first ready worker)" in summary and "including start-up" in summary
    with open(f"{output}/run.json") as handle:
        this_run = json.load(handle)["this_run"]
    assert set(this_run["startup_phases"]) == {"preflight", "ray", "workers", "model_load", "describe_output"}
    assert this_run["startup_seconds"] >= this_run["startup_phases"]["workers"]
    assert this_run["images_per_second_overall"] < this_run["images_per_second"]


def test_the_progress_bar_counts_images_on_a_terminal(monkeypatch, capsys):
    """The terminal variant: a tqdm bar in images whose total appears with the first marker."""
    from berg_scale.engine import progress

    class _Handle:
        def __init__(self) -> None:
            self.progress = SimpleNamespace(remote=lambda: (_ for _ in ()).throw(AttributeError("no")))

    stats = RunStats(shards_total=2)
    live = progress.LiveProgress(stats, [SimpleNamespace(index=0, state="busy", handle=_Handle())],
                                 [SimpleNamespace(size=100), SimpleNamespace(size=100)], live=True,
                                 log=lambda line: None, poll_interval_s=0.05)
    stats.add_marker({"rows": 10, "input_size": 100})
    live.shard_done("a", {})
    assert live.bar.n == 10 and live.bar.total == 20 and live.bar.unit == "img"
    live.close()
    assert "10/20" in capsys.readouterr().err
