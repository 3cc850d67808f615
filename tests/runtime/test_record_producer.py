"""One record producer for every mode: the policy hook holds in realtime, batch and library
calls alike; keyed writes replace instead of adding; compaction merges a day's small files
without losing, doubling or changing a record."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tests.models import SumModel, numbers
from typer.testing import CliRunner

from berth.app import Berth, build_server
from berth.batch.specs import JobSpec, destination, source
from berth.cli.main import app as cli_app
from berth.config import PathOptions, ServeOptions, Settings
from berth.runtime.record_reader import RecordReader
from berth.runtime.record_writers import QueuedRecordWriter, RecorderLimits
from berth.runtime.records import RecordBatch
from berth.testing import asgi_client


class DropB:
    """A policy that keeps no ``b`` and drops records of unit "secret" altogether."""

    def apply(self, batch: RecordBatch) -> RecordBatch | None:
        if batch.unit_id == "secret":
            return None
        return batch.with_inputs({k: v for k, v in batch.inputs.items() if k != "b"})


def _model(home: Path) -> None:
    with Berth(Settings(home=home, user="tester")) as c:
        c.register(SumModel(), "s", training_data=numbers(), trusted=True)


def test_the_record_policy_holds_in_every_mode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _model(home)
    settings = Settings(home=home, user="tester")
    server = build_server(
        settings,
        ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False),
        record_policy=DropB(),
    )

    async def serve() -> None:
        async with asgi_client(server) as http:
            for unit in ("u1", "secret"):
                r = await http.post(
                    "/v1/predict/s", json={"records": [{"a": 1.0, "b": 2.0}], "unit_id": unit}
                )
                assert r.status_code == 200, r.text

    asyncio.run(serve())
    rows = tmp_path / "rows.parquet"
    numbers(5).to_parquet(rows)
    with Berth(settings, record_policy=DropB()) as client:
        client.run_batch(
            JobSpec(
                reference="s",
                input=source(str(rows)),
                output=destination(str(tmp_path / "out.parquet")),
            )
        )
        client.load("s", record=True).predict(numbers(2))
        client.load("s").predict(numbers(3))  # library records are off by default
    table = RecordReader(settings.resolved_records_root()).read("s")
    modes = table.column("mode").to_pylist()
    assert sorted(modes) == sorted(["realtime"] + ["batch"] * 5 + ["library"] * 2)
    assert "in.a" in table.column_names
    assert "in.b" not in table.column_names
    assert "secret" not in table.column("unit_id").to_pylist()


def test_a_keyed_write_replaces_its_earlier_file(tmp_path: Path, client: Berth) -> None:
    client.register(SumModel(), "k", training_data=numbers(), trusted=True)
    path = client.path
    target = path.resolve_sync("k")
    for attempt in range(3):
        frame = numbers(4, seed=attempt)
        result = path.run_sync(target, frame, mode="batch", record_key="batch-job-000001")
        assert result.recorded is not None
        result.recorded.result()
    table = RecordReader(client.settings.resolved_records_root()).read("k")
    assert table.num_rows == 4  # the last attempt's rows only
    assert table.column("in.a").to_pylist() == numbers(4, seed=2)["a"].tolist()


def _queued(root: Path, n: int) -> None:
    """``n`` flushes of the queued writer: ``n`` small files of one day."""
    writer = QueuedRecordWriter(root, RecorderLimits(compact_interval_s=None))
    now = time.time()
    for i in range(n):
        writer.record(
            RecordBatch(
                model="c",
                version=1 + i % 2,
                mode="realtime",
                prediction_ids=[f"p{i}"],
                inputs={"x": np.array([float(i)])},
                outputs={"y": np.array([2.0 * i])},
                latency_ms=1.0,
                at=now + i / 1000,
            )
        )
        writer.flush_now()


def test_compaction_merges_a_days_files_and_keeps_every_record(tmp_path: Path) -> None:
    root = tmp_path / "records"
    _queued(root, 12)
    reader = RecordReader(root)
    before = reader.read("c").to_pandas()
    assert len(list(root.rglob("*.parquet"))) == 12
    report = reader.compact("c", older_than_s=0)
    assert (report.files_before, report.files_after) == (12, 1)
    assert len(list(root.rglob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(reader.read("c").to_pandas(), before)
    assert reader.read("c", version=2).num_rows == 6
    assert reader.compact("c", older_than_s=0).files_before == 0  # nothing left to merge


def test_young_files_and_keyed_files_are_left_alone(tmp_path: Path, client: Berth) -> None:
    root = client.settings.resolved_records_root()
    _queued(root, 3)
    report = RecordReader(root).compact(older_than_s=3600)
    assert report.files_before == 0
    client.register(SumModel(), "k", training_data=numbers(), trusted=True)
    path = client.path
    for chunk in range(3):
        key = f"batch-j-{chunk:06d}"
        done = path.run_sync(path.resolve_sync("k"), numbers(2), mode="batch", record_key=key)
        assert done.recorded is not None
        done.recorded.result()
    RecordReader(root).compact("k", older_than_s=0)
    assert len(list((root / "model=k").rglob("batch-j-*.parquet"))) == 3


def test_a_compaction_killed_before_removing_its_inputs_is_finished_by_the_next(
    tmp_path: Path,
) -> None:
    root = tmp_path / "records"
    _queued(root, 4)
    reader = RecordReader(root)
    files = sorted(root.rglob("*.parquet"))
    expected = reader.read("c").num_rows
    reader.compact("c", older_than_s=0)
    (merged,) = root.rglob("*.parquet")
    # Put the inputs back, as if the process died after the rename, before the removals.
    table = pq.read_table(merged)
    for i, f in enumerate(files):
        pq.write_table(table.slice(i, 1), f)
    assert reader.read("c").num_rows == 2 * expected  # the crash's doubling
    reader.compact("c", older_than_s=3600)  # removes the inputs the merged file holds
    assert reader.read("c").num_rows == expected


def test_the_writer_compacts_on_its_own(tmp_path: Path) -> None:
    root = tmp_path / "records"
    _queued(root, 5)
    old = time.time() - 3600
    for f in root.rglob("*.parquet"):
        os.utime(f, (old, old))
    writer = QueuedRecordWriter(
        root, RecorderLimits(flush_interval_s=0.05, compact_interval_s=0.01)
    )
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while len(list(root.rglob("*.parquet"))) > 1:
            assert time.monotonic() < deadline, "the writer never compacted"
            time.sleep(0.05)
    finally:
        writer.close()
    assert RecordReader(root).read("c").num_rows == 5


def test_berth_records_compact(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _queued(home / "records", 6)
    runner = CliRunner()
    done = runner.invoke(cli_app, ["--home", str(home), "records", "compact", "--older-than", "0"])
    assert done.exit_code == 0, done.output
    assert "compacted 6 file(s) into 1" in done.stdout
    bad = runner.invoke(cli_app, ["--home", str(home), "records", "compact", "-m", "-x"])
    assert bad.exit_code == 2
    assert "model name" in bad.stderr


@pytest.mark.parametrize("mode", ["realtime", "batch", "library"])
def test_every_mode_writes_the_declared_schema(tmp_path: Path, client: Berth, mode: str) -> None:
    from berth.runtime.records import record_schema

    client.register(SumModel(), "d", training_data=numbers(), trusted=True)
    path = client.path
    done = path.run_sync(path.resolve_sync("d"), numbers(2), mode=mode, record_key=f"{mode}-x")
    assert done.recorded is not None
    done.recorded.result()
    table = RecordReader(client.settings.resolved_records_root()).read("d")
    declared = record_schema()
    assert table.column_names[: len(declared)] == declared.names
    assert table.column("mode").to_pylist() == [mode, mode]


def test_a_redelivered_message_replaces_its_records_on_the_async_face(client: Berth) -> None:
    from berth.runtime.envelope import RequestContext
    from berth.runtime.path import InferencePath
    from berth.runtime.records import RecordProducer

    client.register(SumModel(), "st", training_data=numbers(), trusted=True)
    root = client.settings.resolved_records_root()
    path = InferencePath(
        client.registry, PathOptions(poll_interval_s=0), records=RecordProducer(root)
    )

    async def consume() -> None:
        await path.start()
        try:
            for _ in range(2):  # the broker delivers message 7 twice
                target = await path.resolve("st", RequestContext(source_id="7"))
                result = await path.run(target, numbers(3), mode="stream", record_key="stream-7")
                assert result.recorded is not None
                await asyncio.wrap_future(result.recorded)
        finally:
            await path.close()

    asyncio.run(consume())
    table = RecordReader(root).read("st")
    assert table.num_rows == 3
    assert set(table.column("source_id").to_pylist()) == {"7"}


def test_inputs_of_one_numeric_dtype_are_recorded_as_one_block(client: Berth) -> None:
    """The frame's block goes to the records as it is; each feature still reads back as its
    own column, whether one request or many share a file."""
    from berth.runtime.codecs import InputBlock

    frame = pd.DataFrame({f"f{i}": np.arange(4, dtype=np.float64) + i for i in range(5)})
    client.register(SumModel(), "blocky", training_data=frame, trusted=True)
    path = client.path
    target = path.resolve_sync("blocky")
    validated = path.validate(target, frame)
    assert isinstance(validated.record_inputs, InputBlock)
    assert validated.record_inputs["f3"].tolist() == frame["f3"].tolist()
    root = client.settings.resolved_records_root()
    writer = QueuedRecordWriter(root, RecorderLimits(compact_interval_s=None))
    for i in range(3):  # three requests in one file
        writer.record(
            RecordBatch(
                model="blocky",
                version=1,
                mode="realtime",
                prediction_ids=[f"r{i}-{j}" for j in range(4)],
                inputs=path.validate(target, frame + i).record_inputs,
                outputs={"prediction": np.zeros(4)},
                latency_ms=1.0,
            )
        )
    writer.flush_now()
    table = RecordReader(root).read("blocky")
    assert table.column("in.f2").to_pylist() == [v + i for i in range(3) for v in frame["f2"]]


class CalmA:
    """A policy that replaces every ``a`` by 0.5 (masking a value)."""

    def apply(self, batch: RecordBatch) -> RecordBatch | None:
        return batch.with_inputs({**batch.inputs, "a": np.full(batch.rows, 0.5)})


def test_range_warnings_are_of_the_validated_inputs_even_under_a_masking_policy(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _model(home)  # a and b observed in [0, 1): warn
    settings = Settings(home=home, user="tester")
    with Berth(settings, record_policy=CalmA()) as client:
        client.load("s", record=True).predict(pd.DataFrame({"a": [5.0, 0.3], "b": [0.2, 0.4]}))
    table = RecordReader(settings.resolved_records_root()).read("s")
    assert table.column("in.a").to_pylist() == [0.5, 0.5]
    assert table.column("warnings").to_pylist() == [["out_of_range:a"], None]


def test_range_warnings_found_for_a_whole_flush_match_those_of_each_request(
    client: Berth,
) -> None:
    """The writer checks the ranges of every request of a flush in one comparison: the same
    warnings as one check per request."""
    from berth.runtime.validation import out_of_range

    client.register(SumModel(), "w", training_data=numbers(), trusted=True)
    path = client.path
    target = path.resolve_sync("w")
    frames = [
        pd.DataFrame({"a": [0.5, 2.0], "b": [0.5, 0.5]}),
        pd.DataFrame({"a": [0.1], "b": [0.2]}),
        pd.DataFrame({"a": [-1.0, 0.4, 0.3], "b": [9.0, 0.1, -3.0]}),
    ]
    root = client.settings.resolved_records_root()
    writer = QueuedRecordWriter(root, RecorderLimits(compact_interval_s=None))
    expected: list[list[str] | None] = []
    for i, frame in enumerate(frames):
        inputs = path.validate(target, frame).record_inputs
        found = out_of_range(target.info.signature, inputs)
        per_row = found.to_arrow().to_pylist() if found is not None else [None] * len(frame)
        expected += per_row
        writer.record(
            RecordBatch(
                model="w",
                version=1,
                mode="realtime",
                prediction_ids=[f"r{i}-{j}" for j in range(len(frame))],
                inputs=inputs,
                outputs={"prediction": np.zeros(len(frame))},
                latency_ms=1.0,
                ranges=target.info.signature,
            )
        )
    writer.flush_now()
    assert len(list(root.rglob("*.parquet"))) == 1  # one file: one comparison for the three
    table = RecordReader(root).read("w")
    assert table.column("warnings").to_pylist() == expected
    assert expected[0] is None
    assert expected[1] == ["out_of_range:a"]
