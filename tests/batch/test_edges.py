"""Edge cases found in review: uneven Parquet row groups on resume, limits on resume, types that
differ between chunks, text that only looks missing, and checks that must come before scoring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from tests.batch.data import (
    Stop,
    StopAfter,
    customers,
    expected,
    spec,
    without_ids,
    write_parquet,
)
from tests.cli.test_cli import CLEAN_ENV
from typer.testing import CliRunner

from berth.app import Berth
from berth.batch.runner import StoppedError
from berth.batch.specs import ErrorLimit
from berth.cli.main import app
from berth.errors import ConflictError, InvalidInputError
from berth.runtime.record_reader import RecordReader


def test_resuming_skips_exactly_the_finished_rows_across_uneven_row_groups(
    churn: Berth, tmp_path: Path
) -> None:
    frame = customers(1_000)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=300)
    assert [pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(4)] == [
        300,
        300,
        300,
        100,
    ]
    job_spec = spec(path, tmp_path / "o.parquet", chunk_rows=250)
    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfter(500))
    job = churn.run_batch(job_spec)
    result = pd.read_parquet(tmp_path / "o.parquet")
    assert result["id"].tolist() == frame["id"].tolist()
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in range(1_000)]
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, frame), check_dtype=False)


def test_a_job_stopped_by_max_errors_stays_stopped_when_run_again(
    churn: Berth, tmp_path: Path
) -> None:
    frame = customers(300).astype(object)
    frame.loc[[10, 20, 30], "plan"] = "gold"
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    job_spec = spec(path, tmp_path / "o.csv", max_errors=ErrorLimit.parse("2"), chunk_rows=100)
    for _ in range(3):
        with pytest.raises(StoppedError, match="3 failed validation"):
            churn.run_batch(job_spec)
    assert not (tmp_path / "o.csv").exists()
    assert len(pd.read_csv(tmp_path / "o.errors.csv")) == 3
    customers(300).to_csv(path, index=False)  # fixed: a restart needs no --overwrite
    job = churn.run_batch(job_spec.replace(restart=True))
    assert (job.status, job.errors) == ("succeeded", 0)
    assert not (tmp_path / "o.errors.csv").exists()


def test_a_column_typed_differently_between_chunks_becomes_text(
    churn: Berth, tmp_path: Path
) -> None:
    frame = customers(6)
    records = frame.to_dict(orient="records")
    records[3]["id"] = "A3"  # a number in the first chunks, text in the second
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    job = churn.run_batch(spec(path, tmp_path / "o.parquet", chunk_rows=2))
    result = pd.read_parquet(tmp_path / "o.parquet")
    assert job.rows == 6
    assert result["id"].tolist() == ["1000", "1001", "1002", "A3", "1004", "1005"]


def test_text_that_reads_like_a_missing_value_is_kept(churn: Berth, tmp_path: Path) -> None:
    frame = customers(4).astype(object)
    frame["id"] = ["NA", "null", "N/A", "7"]
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    churn.run_batch(spec(path, tmp_path / "o.jsonl"))
    assert pd.read_json(tmp_path / "o.jsonl", lines=True, dtype=False)["id"].tolist() == [
        "NA",
        "null",
        "N/A",
        "7",
    ]


def test_restart_gives_up_the_old_job_and_its_records(churn: Berth, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    customers(300).to_parquet(path)
    job_spec = spec(path, tmp_path / "o.parquet", chunk_rows=100)
    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfter(200))
    old = churn.jobs.recent()[0]
    job = churn.run_batch(job_spec.replace(restart=True))
    records = RecordReader(churn.settings.resolved_records_root()).read("churn")
    assert sorted(records.column("prediction_id").to_pylist()) == sorted(
        f"{job.id}-{i}" for i in range(300)
    )
    with pytest.raises(ConflictError, match=f"job {old.id} was abandoned"):
        churn.run_batch(job_spec, resume=old.id)


def test_checks_that_come_before_any_scoring(churn: Berth, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    customers(20).to_parquet(path)
    with pytest.raises(InvalidInputError, match=r"errors file folder .* does not exist"):
        churn.run_batch(spec(path, tmp_path / "o.parquet", errors_path=str(tmp_path / "x/e.csv")))
    (tmp_path / "o.errors.csv").write_text("row,error\n")
    with pytest.raises(ConflictError, match=r"errors file .* exists"):
        churn.run_batch(spec(path, tmp_path / "o.parquet"))
    db = tmp_path / "out.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE scores (x INTEGER)")
    with pytest.raises(ConflictError, match="output table 'scores' exists"):
        churn.run_batch(spec(path, f"duckdb:///{db}", table="scores"))
    assert churn.jobs.recent() == []  # nothing scored, no job


def test_an_empty_input_gives_a_typed_empty_output(churn: Berth, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    customers(5).iloc[:0].to_parquet(path)
    job = churn.run_batch(spec(path, tmp_path / "o.parquet"))
    assert job.rows == 0
    schema = pq.read_schema(tmp_path / "o.parquet")
    assert schema.field("version").type == pa.int32()
    assert schema.field("label").type == pa.int64()
    assert schema.field("probabilities_1").type == pa.float64()


def test_jsonl_with_a_bom_and_a_first_record_without_a_feature(
    churn: Berth, tmp_path: Path
) -> None:
    """The file is not refused for its first line: that line's row is, as any other."""
    records = customers(5).to_dict(orient="records")
    del records[0]["income"]
    path = tmp_path / "in.jsonl"
    body = "".join(json.dumps(r) + "\n" for r in records)
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    job = churn.run_batch(spec(path, tmp_path / "o.parquet"))
    assert (job.rows, job.errors) == (5, 1)
    assert pd.read_csv(tmp_path / "o.errors.csv")["error"].tolist() == [
        "feature 'income' has a missing value"
    ]


def test_a_query_ending_in_a_semicolon_and_plain_progress_without_a_total(
    churn: Berth, home: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/in.db"
    engine = sa.create_engine(url)
    customers(30).to_sql("customers", engine, index=False)
    engine.dispose()
    result = CliRunner(env=CLEAN_ENV).invoke(
        app,
        ["--home", str(home), "batch", "run", "churn", "-i", url,
         "--query", "SELECT * FROM customers ORDER BY id;", "-o", str(tmp_path / "o.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.stderr
    assert len(pd.read_csv(tmp_path / "o.csv")) == 30


def test_a_model_that_fails_to_load_leaves_no_reader_thread_behind(
    churn: Berth, tmp_path: Path
) -> None:
    import threading

    from berth.errors import ArtifactIntegrityError

    info = churn.get_version("churn/1")
    for file in churn.store.path(info.digest).rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes() + b"tampered")
    source = write_parquet(customers(300), tmp_path / "in.parquet")
    with pytest.raises(ArtifactIntegrityError):
        churn.run_batch(spec(source, tmp_path / "out.parquet"))
    time.sleep(0.3)
    assert "berth-batch-reader" not in [t.name for t in threading.enumerate()]
