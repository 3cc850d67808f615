"""Batch jobs on the local engine: every input and output format, bad rows, limits, fail-fast
checks, records, and the jobs table. Each output is checked against scoring the same rows in
process."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from tests.batch.data import Stop, StopAfter, customers, expected, spec, without_ids, write_parquet

from berth.app import Berth
from berth.batch.runner import StoppedError
from berth.errors import ConflictError, InvalidInputError, NotFoundError
from berth.runtime.record_reader import RecordReader


def test_parquet_to_parquet_matches_scoring_in_process(churn: Berth, tmp_path: Path) -> None:
    frame = customers(230)
    out = tmp_path / "scores.parquet"
    job = churn.run_batch(spec(write_parquet(frame, tmp_path / "in.parquet"), out))

    assert (job.status, job.rows, job.errors, job.chunks) == ("succeeded", 230, 0, 5)
    assert (job.model, job.version, job.total_rows) == ("churn", 1, 230)
    result = pd.read_parquet(out)
    assert list(result.columns) == [
        "id",
        "prediction_id",
        "model",
        "version",
        "label",
        "probabilities_0",
        "probabilities_1",
    ]
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, frame), check_dtype=False)
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in range(230)]
    assert not (churn.settings.resolved_batch_root() / job.id).exists()  # work folder removed
    assert not (tmp_path / "scores.errors.csv").exists()


def test_prediction_records_are_written_once_per_row_in_batch_mode(
    churn: Berth, tmp_path: Path
) -> None:
    frame = customers(120)
    out = tmp_path / "scores.parquet"
    job = churn.run_batch(spec(write_parquet(frame, tmp_path / "in.parquet"), out))
    records = RecordReader(churn.settings.resolved_records_root()).read("churn").to_pandas()
    assert len(records) == 120
    assert set(records["mode"]) == {"batch"}
    assert sorted(records["prediction_id"]) == sorted(f"{job.id}-{i}" for i in range(120))
    scored = pd.read_parquet(out).set_index("prediction_id")
    joined = records.set_index("prediction_id").join(scored[["id", "probabilities_1"]])
    assert joined["in.age"].tolist() == frame.set_index("id").loc[joined["id"], "age"].tolist()
    np.testing.assert_allclose(
        np.stack(joined["out.probabilities"].to_numpy())[:, 1], joined["probabilities_1"]
    )


def test_no_records_when_asked(churn: Berth, tmp_path: Path) -> None:
    frame = customers(60)
    churn.run_batch(
        spec(write_parquet(frame, tmp_path / "in.parquet"), tmp_path / "o.parquet", record=False)
    )
    assert RecordReader(churn.settings.resolved_records_root()).read("churn").num_rows == 0


# -- inputs ----------------------------------------------------------------------------------


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _jsonl(frame: pd.DataFrame, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    return path


def _folder(frame: pd.DataFrame, path: Path) -> Path:
    path.mkdir()
    for i, start in enumerate(range(0, len(frame), 70)):
        write_parquet(frame.iloc[start : start + 70], path / f"part-{i:03d}.parquet")
    return path


@pytest.mark.parametrize("write", [_csv, _jsonl, _folder], ids=["csv", "jsonl", "parquet-folder"])
def test_file_inputs_give_the_same_scores(churn: Berth, tmp_path: Path, write: object) -> None:
    frame = customers(175)
    suffix = {"_csv": ".csv", "_jsonl": ".jsonl", "_folder": ""}[write.__name__]  # type: ignore[attr-defined]
    path = write(frame, tmp_path / f"in{suffix}")  # type: ignore[operator]
    out = tmp_path / "scores.parquet"
    job = churn.run_batch(spec(path, out))
    assert (job.rows, job.errors) == (175, 0)
    result = without_ids(pd.read_parquet(out))
    result["id"] = result["id"].astype(np.int64)  # CSV passes columns through as text
    pd.testing.assert_frame_equal(result, expected(churn, frame), check_dtype=False)


def test_sql_query_input_on_sqlite_and_postgres(any_churn: Berth, tmp_path: Path) -> None:
    frame = customers(140)
    url = (
        any_churn.db.url if any_churn.db.dialect == "postgresql" else f"sqlite:///{tmp_path}/in.db"
    )
    engine = sa.create_engine(url)
    frame.to_sql("customers", engine, index=False, if_exists="replace")
    engine.dispose()
    out = tmp_path / "scores.parquet"
    job = any_churn.run_batch(spec(url, out, query="SELECT * FROM customers ORDER BY id"))
    assert (job.rows, job.errors, job.chunks) == (140, 0, 3)
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(out)), expected(any_churn, frame), check_dtype=False
    )


def test_duckdb_query_input(churn: Berth, tmp_path: Path) -> None:
    frame = customers(90)
    parquet = write_parquet(frame, tmp_path / "in.parquet")
    out = tmp_path / "scores.parquet"
    query = f"SELECT * FROM read_parquet('{parquet}') ORDER BY id"
    job = churn.run_batch(spec("duckdb:///:memory:", out, query=query))
    assert job.rows == 90
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(out)), expected(churn, frame), check_dtype=False
    )


# -- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scores", "scores.csv", "scores.jsonl"])
def test_file_outputs_hold_the_same_rows(churn: Berth, tmp_path: Path, name: str) -> None:
    frame = customers(130)
    out = tmp_path / name
    churn.run_batch(spec(write_parquet(frame, tmp_path / "in.parquet"), out))
    if name.endswith(".csv"):
        result = pd.read_csv(out)
    elif name.endswith(".jsonl"):
        result = pd.read_json(out, lines=True)
    else:
        assert len(list(out.glob("part-*.parquet"))) == 3
        result = pd.read_parquet(out)
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, frame), check_dtype=False)


def test_sql_table_output_on_sqlite_and_postgres(any_churn: Berth, tmp_path: Path) -> None:
    frame = customers(110)
    url = any_churn.db.url if any_churn.db.dialect == "postgresql" else f"sqlite:///{tmp_path}/o.db"
    job = any_churn.run_batch(
        spec(write_parquet(frame, tmp_path / "in.parquet"), url, table="churn_scores")
    )
    engine = sa.create_engine(url)
    result = pd.read_sql("SELECT * FROM churn_scores ORDER BY id", engine)
    pd.testing.assert_frame_equal(
        without_ids(result), expected(any_churn, frame), check_dtype=False
    )
    assert set(result["prediction_id"]) == {f"{job.id}-{i}" for i in range(110)}

    with pytest.raises(ConflictError, match="output table 'churn_scores' exists"):
        any_churn.run_batch(
            spec(write_parquet(frame, tmp_path / "in2.parquet"), url, table="churn_scores")
        )
    any_churn.run_batch(spec(tmp_path / "in2.parquet", url, table="churn_scores", overwrite=True))
    assert pd.read_sql("SELECT count(*) AS n FROM churn_scores", engine)["n"][0] == 110
    engine.dispose()


def test_duckdb_table_output(churn: Berth, tmp_path: Path) -> None:
    frame = customers(80)
    db = tmp_path / "out.duckdb"
    churn.run_batch(
        spec(write_parquet(frame, tmp_path / "in.parquet"), f"duckdb:///{db}", table="s")
    )
    with duckdb.connect(str(db)) as conn:
        result = conn.execute("SELECT * FROM s ORDER BY id").df()
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, frame), check_dtype=False)


# -- bad rows --------------------------------------------------------------------------------


def test_bad_rows_go_to_the_errors_file_with_row_and_reason(churn: Berth, tmp_path: Path) -> None:
    frame = customers(100)
    text = frame.astype(object)
    text.loc[3, "age"] = "old"
    text.loc[50, "plan"] = "gold"
    text.loc[77, "income"] = None
    path = tmp_path / "in.csv"
    text.to_csv(path, index=False)
    out = tmp_path / "scores.csv"
    job = churn.run_batch(spec(path, out))

    assert (job.rows, job.errors) == (100, 3)
    errors = pd.read_csv(tmp_path / "scores.errors.csv")
    assert errors["row"].tolist() == [3, 50, 77]
    assert errors["id"].tolist() == [1003, 1050, 1077]
    assert errors["error"].tolist() == [
        "feature 'age' expects int64, got string 'old'",
        "feature 'plan' has unknown category 'gold' (allowed: basic, pro, team)",
        "feature 'income' has a missing value",
    ]
    good = frame.drop(index=[3, 50, 77]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        without_ids(pd.read_csv(out)), expected(churn, good), check_dtype=False
    )


def test_a_malformed_jsonl_line_refuses_its_row_alone(churn: Berth, tmp_path: Path) -> None:
    frame = customers(30)
    lines = [json.dumps(r) for r in frame.to_dict(orient="records")]
    lines[7] = '{"id": 1007, "age": '
    lines[12] = "[1, 2, 3]"
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job = churn.run_batch(spec(path, tmp_path / "o.parquet", chunk_rows=10))
    assert job.errors == 2
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert errors["row"].tolist() == [7, 12]
    assert errors["error"][0].startswith("line 8 is not JSON")
    assert errors["error"][1] == "line 13 is a list, not an object: [1, 2, 3]"
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 28


@pytest.mark.parametrize("limit", ["2", "0.01", "1%"])
def test_max_errors_stops_the_job_and_writes_no_output(
    churn: Berth, tmp_path: Path, limit: str
) -> None:
    from berth.batch.specs import ErrorLimit

    frame = customers(200).astype(object)
    frame.loc[[5, 60, 61, 120], "plan"] = "gold"
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "o.parquet"
    with pytest.raises(StoppedError, match="more than --max-errors allows"):
        churn.run_batch(spec(path, out, max_errors=ErrorLimit.parse(limit), chunk_rows=50))
    assert not out.exists()
    found = pd.read_csv(tmp_path / "o.errors.csv")  # the bad rows so far, to look at
    assert found["row"].tolist()[:1] == [5]
    job = churn.jobs.recent()[0]
    assert job.status == "failed"
    assert "failed validation" in job.message


def test_max_errors_not_reached_lets_the_job_finish(churn: Berth, tmp_path: Path) -> None:
    from berth.batch.specs import ErrorLimit

    frame = customers(200).astype(object)
    frame.loc[[5, 60], "plan"] = "gold"
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    job = churn.run_batch(spec(path, tmp_path / "o.parquet", max_errors=ErrorLimit.parse("2")))
    assert (job.status, job.errors) == ("succeeded", 2)


# -- failing fast ----------------------------------------------------------------------------


def test_a_missing_feature_fails_before_any_job_starts(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(20).drop(columns=["income"]), tmp_path / "in.parquet")
    with pytest.raises(InvalidInputError, match="has no feature 'income'"):
        churn.run_batch(spec(path, tmp_path / "o.parquet"))
    assert churn.jobs.recent() == []


def test_a_missing_passthrough_column_is_named(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(20), tmp_path / "in.parquet")
    with pytest.raises(InvalidInputError, match="has no column 'customer'"):
        churn.run_batch(spec(path, tmp_path / "o.parquet", passthrough=("customer",)))


def test_a_passthrough_column_may_not_shadow_an_output(churn: Berth, tmp_path: Path) -> None:
    frame = customers(20).assign(label=1)
    path = write_parquet(frame, tmp_path / "in.parquet")
    with pytest.raises(InvalidInputError, match="'label' would clash"):
        churn.run_batch(spec(path, tmp_path / "o.parquet", passthrough=("id", "label")))


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"not parquet at all", "in.parquet", "not a readable Parquet file"),
        (b"", "in.csv", "is empty"),
        (b"\xff\xfe\x00garbage\n", "in.jsonl", "line 1 is not JSON"),
    ],
)
def test_an_unreadable_input_fails_fast(
    churn: Berth, tmp_path: Path, content: bytes, name: str, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        churn.run_batch(spec(path, tmp_path / "o.parquet"))
    assert churn.jobs.recent() == []


def test_inputs_that_do_not_exist_or_cannot_be_read(tmp_path: Path) -> None:
    from berth.batch.specs import destination, source

    with pytest.raises(InvalidInputError, match="does not exist"):
        source(str(tmp_path / "nope.parquet"))
    (tmp_path / "in.xlsx").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="cannot tell the format"):
        source(str(tmp_path / "in.xlsx"))
    with pytest.raises(InvalidInputError, match="pass --query"):
        source("postgresql://localhost/db")
    with pytest.raises(InvalidInputError, match="pass --table"):
        destination("sqlite:///x.db")
    with pytest.raises(InvalidInputError, match=r"output folder .* does not exist"):
        destination(str(tmp_path / "missing" / "o.parquet"))


def test_a_bad_query_fails_fast(churn: Berth, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/in.db"
    with pytest.raises(InvalidInputError, match="input query failed: no such table"):
        churn.run_batch(spec(url, tmp_path / "o.parquet", query="SELECT * FROM nowhere"))


def test_an_existing_output_is_kept_unless_overwrite(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(40), tmp_path / "in.parquet")
    out = tmp_path / "o.parquet"
    out.write_bytes(b"precious")
    with pytest.raises(ConflictError, match="exists; pass --overwrite"):
        churn.run_batch(spec(path, out))
    assert out.read_bytes() == b"precious"
    churn.run_batch(spec(path, out, overwrite=True))
    assert len(pd.read_parquet(out)) == 40


def test_an_unknown_model_is_not_found(churn: Berth, tmp_path: Path) -> None:
    from berth.batch.specs import JobSpec, destination, source

    path = write_parquet(customers(5), tmp_path / "in.parquet")
    job = JobSpec(
        reference="nobody",
        input=source(str(path)),
        output=destination(str(tmp_path / "o.parquet")),
    )
    with pytest.raises(NotFoundError, match="model 'nobody' not found"):
        churn.run_batch(job)


def test_a_job_holding_its_lock_is_not_run_twice(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(60), tmp_path / "in.parquet")
    job_spec = spec(path, tmp_path / "o.parquet")

    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfter(1))
    job = churn.jobs.recent()[0]
    lock = churn.settings.resolved_batch_root() / job.id / "lock"
    with lock.open("w") as held:  # as a live process running the job would
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConflictError, match=f"job {job.id} is running"):
            churn.run_batch(job_spec)
    finished = churn.run_batch(job_spec)
    assert (finished.id, finished.status, finished.attempts) == (job.id, "succeeded", 2)


def test_the_parts_of_a_chunk_are_the_checkpoint(churn: Berth, tmp_path: Path) -> None:
    """Stopped after two chunks, the job resumes at the third: the rows of the first two are not
    scored again (their records are not rewritten) and the output is whole."""
    frame = customers(230)
    path = write_parquet(frame, tmp_path / "in.parquet")
    job_spec = spec(path, tmp_path / "o.parquet")
    seen: list[int] = []

    class StopAfterTwo:
        def start(self, job: object, total: int | None, rows: int) -> None:
            seen.append(rows)

        def phase(self, text: str) -> None: ...

        def advance(self, rows: int, errors: int, total: int | None) -> None:
            if rows >= 100 and len(seen) == 1:
                raise Stop

    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfterTwo())
    stopped = churn.jobs.recent()[0]
    assert (stopped.status, stopped.chunks, stopped.rows) == ("failed", 2, 100)

    job = churn.run_batch(job_spec, progress=StopAfterTwo())
    assert seen == [0, 100]  # resumed at row 100
    assert (job.id, job.rows, job.attempts) == (stopped.id, 230, 2)
    result = pd.read_parquet(tmp_path / "o.parquet")
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, frame), check_dtype=False)
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in range(230)]
    records = RecordReader(churn.settings.resolved_records_root()).read("churn")
    assert sorted(records.column("prediction_id").to_pylist()) == sorted(result["prediction_id"])


def test_jobs_are_listed_newest_first_and_found_by_prefix(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(10), tmp_path / "in.parquet")
    a = churn.run_batch(spec(path, tmp_path / "a.parquet"))
    b = churn.run_batch(spec(path, tmp_path / "b.parquet"))
    assert [j.id for j in churn.jobs.recent()] == [b.id, a.id]
    assert churn.jobs.get(a.id[:6]).id == a.id
    with pytest.raises(NotFoundError, match="batch job 'zzzzzz' not found"):
        churn.jobs.get("zzzzzz")
    assert pq.read_metadata(tmp_path / "a.parquet").num_rows == 10


def test_environment_variables_in_a_database_url_are_not_stored(
    churn: Berth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = customers(30)
    engine = sa.create_engine(f"sqlite:///{tmp_path}/secret.db")
    frame.to_sql("customers", engine, index=False)
    engine.dispose()
    monkeypatch.setenv("BATCH_DB_DIR", str(tmp_path))
    url = "sqlite:///${BATCH_DB_DIR}/secret.db"
    job = churn.run_batch(spec(url, tmp_path / "o.parquet", query="SELECT * FROM customers"))
    assert job.rows == 30
    assert churn.jobs.get(job.id).spec.input.target == url  # as given, not expanded


def test_an_input_changed_between_attempts_is_not_mixed_in(churn: Berth, tmp_path: Path) -> None:
    path = write_parquet(customers(120), tmp_path / "in.parquet")
    job_spec = spec(path, tmp_path / "o.parquet")

    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfter(1))
    stopped = churn.jobs.recent()[0]
    changed = customers(150, seed=9)
    write_parquet(changed, path)
    with pytest.raises(ConflictError, match=r"changed since job .* started.*--restart"):
        churn.run_batch(job_spec)

    job = churn.run_batch(job_spec.replace(restart=True))
    assert job.id != stopped.id
    assert (job.rows, job.attempts) == (150, 1)
    assert churn.jobs.get(stopped.id).status == "abandoned"
    assert not (churn.settings.resolved_batch_root() / stopped.id).exists()
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(tmp_path / "o.parquet")),
        expected(churn, changed),
        check_dtype=False,
    )
