"""The prediction-record writer and reader: Parquet partitioned by model and day, a bounded queue
that drops (and counts) instead of blocking, flushing on close, atomic files."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from berth.errors import InvalidInputError
from berth.runtime.record_reader import RecordReader, parse_since
from berth.runtime.record_writers import QueuedRecordWriter as RecordWriter
from berth.runtime.record_writers import RecorderLimits
from berth.runtime.records import RecordBatch

DAY1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def batch(
    n: int = 2,
    *,
    model: str = "credit",
    version: int = 1,
    at: datetime | None = None,
    tag: str = "p",
    unit_id: str | None = None,
    latency_ms: float = 1.5,
) -> RecordBatch:
    age = np.arange(n, dtype=np.float64) + 20.0
    proba = np.stack([np.full(n, 0.25), np.full(n, 0.75)], axis=1)
    return RecordBatch(
        model=model,
        version=version,
        mode="realtime",
        prediction_ids=[f"{tag}-{i}" for i in range(n)],
        inputs={
            "age": age,
            "plan": np.array(["basic", "pro"] * (n // 2) + ["pro"] * (n % 2), dtype=object),
        },
        outputs={"label": np.array(["stay"] * n), "probabilities": proba},
        latency_ms=latency_ms,
        unit_id=unit_id,
        **({"at": at.timestamp()} if at is not None else {}),
    )


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# -- layout and columns ------------------------------------------------------------------------


def test_files_are_partitioned_by_model_and_day_with_typed_columns(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    writer.record(batch(3, at=DAY1, unit_id="user-7", latency_ms=4.0))
    writer.flush_now()
    (file,) = parquet_files(tmp_path)
    assert file.parent == tmp_path / "model=credit" / "date=2026-03-01"
    table = pq.read_table(file, partitioning=None)
    assert table.column_names == [
        "prediction_id",
        "time",
        "model",
        "version",
        "mode",
        "unit_id",
        "request_id",
        "deployment",
        "variant",
        "source_id",
        "latency_ms",
        "warnings",
        "in.age",
        "in.plan",
        "out.label",
        "out.probabilities",
    ]
    schema = table.schema
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("version").type == pa.int32()
    assert schema.field("in.age").type == pa.float64()
    assert schema.field("out.label").type == pa.string()
    assert schema.field("out.probabilities").type == pa.list_(pa.float64(), 2)
    rows = table.to_pylist()
    assert [r["prediction_id"] for r in rows] == ["p-0", "p-1", "p-2"]
    assert {r["time"] for r in rows} == {DAY1}
    assert {(r["model"], r["version"], r["mode"], r["unit_id"]) for r in rows} == {
        ("credit", 1, "realtime", "user-7")
    }
    assert [r["in.age"] for r in rows] == [20.0, 21.0, 22.0]
    assert [r["in.plan"] for r in rows] == ["basic", "pro", "pro"]
    assert rows[0]["out.probabilities"] == [0.25, 0.75]
    assert rows[0]["latency_ms"] == 4.0
    assert {(r["request_id"], r["deployment"], r["variant"], r["source_id"]) for r in rows} == {
        (None, None, None, None)
    }
    assert table.schema.remove_metadata().field("unit_id").type == pa.string()
    assert writer.written == 3


def test_one_file_per_model_version_and_day(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    writer.record(batch(2, version=1, at=DAY1, tag="a"))
    writer.record(batch(1, version=1, at=DAY1, tag="b"))
    writer.record(batch(2, version=2, at=DAY1, tag="c"))
    writer.record(batch(2, version=1, at=DAY2, tag="d"))
    writer.record(batch(1, model="other", at=DAY2, tag="e"))
    writer.flush_now()
    folders = sorted(str(f.parent.relative_to(tmp_path)) for f in parquet_files(tmp_path))
    assert folders == [
        "model=credit/date=2026-03-01",
        "model=credit/date=2026-03-01",
        "model=credit/date=2026-03-02",
        "model=other/date=2026-03-02",
    ]
    assert writer.written == 8
    ids = RecordReader(tmp_path).read("credit").column("prediction_id").to_pylist()
    assert ids == ["a-0", "a-1", "b-0", "c-0", "c-1", "d-0", "d-1"]  # oldest first


def test_unit_ids_per_request_and_object_outputs(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    first = batch(2, tag="a", unit_id="u1")
    second = batch(1, tag="b")
    second.outputs["label"] = np.array(["churn"], dtype=object)
    writer.record(first)
    writer.record(second)
    writer.flush_now()
    table = RecordReader(tmp_path).read("credit")
    assert table.column("unit_id").to_pylist() == ["u1", "u1", None]
    assert table.column("out.label").to_pylist() == ["stay", "stay", "churn"]


# -- reading -----------------------------------------------------------------------------------


def test_read_records_filters_by_version_and_time_window(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    writer.record(batch(1, version=1, at=DAY1, tag="v1-day1"))
    writer.record(batch(1, version=2, at=DAY1 + timedelta(hours=1), tag="v2-day1"))
    writer.record(batch(1, version=1, at=DAY2, tag="v1-day2"))
    writer.record(batch(1, version=2, at=DAY2 + timedelta(hours=1), tag="v2-day2"))
    writer.flush_now()

    def ids(**kwargs: object) -> list[str]:
        table = RecordReader(tmp_path).read("credit", **kwargs)  # type: ignore[arg-type]
        return [i.rsplit("-", 1)[0] for i in table.column("prediction_id").to_pylist()]

    assert ids() == ["v1-day1", "v2-day1", "v1-day2", "v2-day2"]
    assert ids(version=2) == ["v2-day1", "v2-day2"]
    assert ids(since=DAY1 + timedelta(minutes=30)) == ["v2-day1", "v1-day2", "v2-day2"]
    assert ids(until=DAY2) == ["v1-day1", "v2-day1"]  # until is exclusive
    assert ids(since=DAY1 + timedelta(minutes=30), until=DAY2 + timedelta(minutes=30)) == [
        "v2-day1",
        "v1-day2",
    ]
    assert ids(version=1, since=DAY2 - timedelta(seconds=1)) == ["v1-day2"]
    # A window in another time zone means the same instants.
    berlin = DAY2.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert ids(since=berlin) == ["v1-day2", "v2-day2"]
    assert ids(since=DAY2 + timedelta(days=1)) == []


def test_read_records_of_a_model_without_records_is_empty(tmp_path: Path) -> None:
    assert RecordReader(tmp_path).read("nobody").num_rows == 0
    RecordWriter(tmp_path).flush_now()  # nothing queued: nothing written
    assert parquet_files(tmp_path) == []


def test_read_records_selects_columns(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    writer.record(batch(2, at=DAY1))
    writer.flush_now()
    table = RecordReader(tmp_path).read("credit", columns=["prediction_id", "out.label", "time"])
    assert sorted(table.column_names) == ["out.label", "prediction_id", "time"]
    assert table.num_rows == 2


def test_each_version_keeps_its_own_columns(tmp_path: Path) -> None:
    # Version 2 has a feature version 1 did not have; reading version 2's records (or the
    # model's) must not lose it. Fails today: the dataset takes its schema from the first file.
    writer = RecordWriter(tmp_path)
    writer.record(batch(1, version=1, at=DAY1, tag="old"))
    writer.flush_now()
    newer = batch(1, version=2, at=DAY1 + timedelta(minutes=1), tag="new")
    newer = newer.with_inputs({**newer.inputs, "income": np.array([52_000.0])})
    writer.record(newer)
    writer.flush_now()
    v2 = RecordReader(tmp_path).read("credit", version=2)
    assert "in.income" in v2.column_names
    assert v2.column("in.income").to_pylist() == [52_000.0]
    both = RecordReader(tmp_path).read("credit")
    assert both.column("in.income").to_pylist() == [None, 52_000.0]


# -- never blocking, flushing, atomic files ----------------------------------------------------


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    dropped: list[int] = []
    writer = RecordWriter(tmp_path, RecorderLimits(max_queue=2), on_drop=dropped.append)
    accepted: list[bool] = []

    def loop() -> None:
        for i in range(500):
            accepted.append(writer.record(batch(3, tag=f"r{i}")))

    caller = threading.Thread(target=loop, daemon=True)
    caller.start()
    caller.join(30.0)
    assert not caller.is_alive(), "record() blocked on a full queue"
    assert accepted[:2] == [True, True]
    assert not any(accepted[2:])
    assert writer.depth == 2
    assert writer.dropped == 498 * 3
    assert dropped == [3] * 498
    writer.flush_now()
    assert RecordReader(tmp_path).read("credit").num_rows == 6


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, RecorderLimits(flush_interval_s=60.0))
    writer.start()
    for i in range(5):
        assert writer.record(batch(2, tag=f"q{i}"))
    assert parquet_files(tmp_path) == []  # a minute to go before the next timed write
    closer = threading.Thread(target=writer.close, daemon=True)
    closer.start()
    closer.join(30.0)
    assert not closer.is_alive()
    assert RecordReader(tmp_path).read("credit").num_rows == 10
    assert writer.written == 10
    assert leftovers(tmp_path) == []


def test_close_of_a_writer_never_started_still_writes_what_is_queued(tmp_path: Path) -> None:
    # close() says "write everything queued"; without a thread it returns and loses them today.
    writer = RecordWriter(tmp_path)
    writer.record(batch(2, tag="late"))
    writer.close()
    assert RecordReader(tmp_path).read("credit").num_rows == 2


def test_the_thread_writes_on_its_interval(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, RecorderLimits(flush_interval_s=0.05))
    writer.start()
    try:
        writer.record(batch(2))
        deadline = time.monotonic() + 10.0
        while not parquet_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert RecordReader(tmp_path).read("credit").num_rows == 2
        writer.record(batch(1, tag="second"))
    finally:
        writer.close()
    assert RecordReader(tmp_path).read("credit").num_rows == 3
    assert leftovers(tmp_path) == []


def test_files_appear_whole_and_half_written_ones_are_ignored(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path)
    for i in range(3):
        writer.record(batch(2, tag=f"w{i}", version=i + 1))
    writer.flush_now()
    assert leftovers(tmp_path) == []
    assert all(not f.name.startswith(".") for f in parquet_files(tmp_path))
    # What a crash mid-write leaves behind is a hidden temporary file: readers skip it.
    folder = parquet_files(tmp_path)[0].parent
    (folder / ".123-1-abcd.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert RecordReader(tmp_path).read("credit").num_rows == 6


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_write_does_not_stop_the_writer(tmp_path: Path) -> None:
    # The records root cannot be written (a file sits where the folder should be). The writer
    # must survive the failed write; today its thread dies, the queue fills, and close() then
    # blocks forever on queue.put(_STOP), so a graceful shutdown hangs.
    root = tmp_path / "records"
    root.write_text("not a folder")
    writer = RecordWriter(root, RecorderLimits(max_queue=2, flush_interval_s=0.02))
    writer.start()
    writer.record(batch(1, tag="doomed"))
    time.sleep(0.3)  # one timed write, which fails
    for i in range(5):
        writer.record(batch(1, tag=f"after{i}"))
    closer = threading.Thread(target=writer.close, kwargs={"timeout": 2.0}, daemon=True)
    closer.start()
    closer.join(3.0)
    assert not closer.is_alive(), "close() hung after a failed write"


# -- parse_since -------------------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2d", NOW - timedelta(days=2)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1w", NOW - timedelta(weeks=1)),  # pytimeparse's grammar
        ("1h30m", NOW - timedelta(minutes=90)),
        ("1 h", NOW - timedelta(hours=1)),
        ("2026-11-26T10:00", datetime(2026, 11, 26, 10, 0, tzinfo=UTC)),
        ("2026-11-26T10:00:00+01:00", datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
        ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),
    ],
)
def test_parse_since_accepts_durations_and_iso_times(text: str, expected: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_parse_since_defaults_to_now() -> None:
    before = datetime.now(UTC)
    parsed = parse_since("1h")
    assert before - timedelta(hours=1, seconds=5) <= parsed <= datetime.now(UTC)


@pytest.mark.parametrize("junk", ["", "yesterday", "-1h", "h", "1x", "12:00x", "2 fortnights"])
def test_parse_since_rejects_junk(junk: str) -> None:
    with pytest.raises(InvalidInputError, match="30m, 1h, 2d"):
        parse_since(junk, now=NOW)


def test_parse_since_rejects_a_duration_out_of_range() -> None:
    # Fails today: timedelta arithmetic raises a bare OverflowError (a traceback in the CLI).
    with pytest.raises(InvalidInputError):
        parse_since("99999999d", now=NOW)
