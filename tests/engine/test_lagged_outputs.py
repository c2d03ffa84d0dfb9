"""A model whose results arrive later (a GPU's): the engine launches batch k + 1 before it
collects batch k, and writes exactly what a synchronous model writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine_support import assert_tables_equal, in_process_worker, output_table

from berg_scale.engine.stand_in_model import FixedCostModel


@dataclass
class LaggingModel(FixedCostModel):
    """The stand-in model behind `forward_async`, with results that are never 'done' early."""

    events: list[tuple[str, int]] = field(default_factory=list)

    def forward_async(self, images, presized=None):
        index = sum(1 for kind, _ in self.events if kind == "launch")
        self.events.append(("launch", index))
        outputs = self.forward(images)
        events = self.events

        class Pending:
            done = False

            def result(self):
                events.append(("result", index))
                return outputs

        return Pending()


def _run(tmp_path, name, model, shards):
    worker = in_process_worker(str(tmp_path / name), model)
    for shard in shards:
        result = worker.process(shard, 1)
        assert result.status == "done", result
    return output_table(str(tmp_path / name))


def test_results_are_collected_one_batch_late_and_written_unchanged(tmp_path):
    from berg_scale.io.shard_listing import list_shards
    from berg_scale.synthetic.shards import write_synthetic_shards

    write_synthetic_shards(str(tmp_path / "in"), 1, 8, defects=["not_image"])  # 4 chunks, one error row
    shards = list_shards(str(tmp_path / "in"))
    lagging = LaggingModel()
    table = _run(tmp_path, "lagging", lagging, shards)
    launched = [i for kind, i in lagging.events if kind == "launch"]
    assert len(launched) >= 3
    expected = [("launch", 0)]
    for i in launched[1:]:
        expected += [("launch", i), ("result", i - 1)]
    expected.append(("result", launched[-1]))
    assert lagging.events == expected
    reference = _run(tmp_path, "synchronous", FixedCostModel(), shards)
    assert_tables_equal(table, reference)
    assert table.column("key").to_pylist() == reference.column("key").to_pylist()  # tar order kept
