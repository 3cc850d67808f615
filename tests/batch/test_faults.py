"""Damaged inputs: a row the reader cannot take is refused alone (with its line and its text),
and a part that cannot be read ends the job in one line naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from tests.batch.data import Stop, StopAfter, customers, expected, spec, without_ids, write_parquet
from tests.batch.test_batch_cli import run
from tests.cli.test_cli import CLEAN_ENV, assert_error, ok
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.errors import InvalidInputError


def _csv_lines(frame: pd.DataFrame) -> list[str]:
    """The CSV's lines, header first, so that ``lines[i + 1]`` is data row ``i`` (line i + 2)."""
    return frame.to_csv(index=False).splitlines()


def _ended_in_one_line(result: Result, kind: str, *fragments: str) -> None:
    """A job that started: progress lines on stderr, then the one error line, no traceback."""
    assert result.exit_code == EXIT_CODES[kind], result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.splitlines()[-1]], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _write(lines: list[str], path: Path) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# -- CSV rows with the wrong number of fields -----------------------------------------------


def test_one_ragged_row_in_50k_goes_to_the_errors_file_and_the_rest_is_scored(
    churn: Berth, tmp_path: Path
) -> None:
    frame = customers(50_000)
    lines = _csv_lines(frame)
    bad = 31_337
    lines[bad + 1] = "32,4100.5,pro"  # the id is missing: 3 fields where the header has 4
    path = _write(lines, tmp_path / "in.csv")
    out = tmp_path / "scores.parquet"

    job = churn.run_batch(spec(path, out, chunk_rows=10_000))

    assert (job.status, job.rows, job.errors) == ("succeeded", 50_000, 1)
    errors = pd.read_csv(tmp_path / "scores.errors.csv")
    assert errors["row"].tolist() == [bad]
    assert errors["error"].tolist() == [
        f"line {bad + 2} has 3 fields where the header has 4: 32,4100.5,pro"
    ]
    assert errors["id"].isna().all()  # the row's own text is all there is
    result = pd.read_parquet(out)
    assert len(result) == 49_999
    good = frame.drop(index=[bad]).reset_index(drop=True)
    assert result["id"].astype(np.int64).tolist() == good["id"].tolist()
    # Row numbers after the ragged row are still the input's: the ids trace back to their rows.
    numbers = [i for i in range(50_000) if i != bad]
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in numbers]
    scored = without_ids(result)
    scored["id"] = scored["id"].astype(np.int64)
    pd.testing.assert_frame_equal(scored, expected(churn, good), check_dtype=False)


@pytest.mark.parametrize(
    "bad",
    [[0], [9, 10], [0, 1, 2], [49], [19, 39, 48, 49]],
    ids=["first-row", "chunk-boundary", "consecutive", "last-row", "several"],
)
def test_ragged_rows_anywhere_keep_every_other_row_in_its_place(
    churn: Berth, tmp_path: Path, bad: list[int]
) -> None:
    frame = customers(50)
    lines = _csv_lines(frame)
    for i in bad:
        lines[i + 1] = lines[i + 1] + ",extra"  # one field too many
    path = _write(lines, tmp_path / "in.csv")
    job = churn.run_batch(spec(path, tmp_path / "o.csv", chunk_rows=10))
    assert (job.rows, job.errors) == (50, len(bad))
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert errors["row"].tolist() == bad
    assert [e.split(" has ")[0] for e in errors["error"]] == [f"line {i + 2}" for i in bad]
    assert all("has 5 fields where the header has 4" in e for e in errors["error"])
    good = frame.drop(index=bad).reset_index(drop=True)
    result = pd.read_csv(tmp_path / "o.csv")
    assert result["id"].tolist() == good["id"].tolist()
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in range(50) if i not in bad]
    pd.testing.assert_frame_equal(without_ids(result), expected(churn, good), check_dtype=False)


def test_a_ragged_row_in_the_first_block_does_not_fail_the_header_check(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    lines = _csv_lines(customers(20))
    lines[3] = "1,2"
    path = _write(lines, tmp_path / "in.csv")
    out = tmp_path / "o.parquet"
    result = ok(
        run(cli, home, "batch", "run", "churn", "-i", str(path), "-o", str(out), "-p", "id")
    )
    assert "1 row(s) failed validation" in result.stdout
    assert len(pd.read_parquet(out)) == 19


def test_a_ragged_row_is_refused_once_across_a_resume(churn: Berth, tmp_path: Path) -> None:
    lines = _csv_lines(customers(100))
    lines[15] = "x"  # in the first chunk, finished before the stop
    lines[75] = "y,y"  # in a chunk scored after the resume
    path = _write(lines, tmp_path / "in.csv")
    job_spec = spec(path, tmp_path / "o.parquet", chunk_rows=20)
    with pytest.raises(Stop):
        churn.run_batch(job_spec, progress=StopAfter(40))
    job = churn.run_batch(job_spec)
    assert (job.status, job.attempts, job.errors) == ("succeeded", 2, 2)
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert errors["row"].tolist() == [14, 74]
    assert errors["error"].tolist() == [
        "line 16 has 1 field where the header has 4: x",
        "line 76 has 2 fields where the header has 4: y,y",
    ]
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 98


def test_a_long_ragged_row_is_shortened_in_the_errors_file(churn: Berth, tmp_path: Path) -> None:
    lines = _csv_lines(customers(10))
    lines[5] = ",".join(["9"] * 500)
    path = _write(lines, tmp_path / "in.csv")
    churn.run_batch(spec(path, tmp_path / "o.parquet"))
    (error,) = pd.read_csv(tmp_path / "o.errors.csv")["error"]
    assert error.startswith("line 6 has 500 fields where the header has 4: 9,9,9")
    assert error.endswith("...")
    assert len(error) < 300


def test_an_unclosed_quote_ends_the_job_instead_of_swallowing_rows(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    """The quote runs to the end of the parser's block: every line in it would be one "row"."""
    lines = _csv_lines(customers(3_000))
    lines[101] = '1100,44,"100.5,basic'
    path = _write(lines, tmp_path / "in.csv")
    out = tmp_path / "o.parquet"
    args = ["batch", "run", "churn", "-i", str(path), "-o", str(out), "-p", "id"]
    _ended_in_one_line(
        run(cli, home, *args), "invalid_input", str(path), "line 102", "quote is not closed"
    )
    assert not out.exists()
    assert churn.jobs.recent()[0].status == "failed"


def test_text_that_is_not_utf8_refuses_its_row_alone(churn: Berth, tmp_path: Path) -> None:
    frame = customers(30)
    body = frame.to_csv(index=False).encode().splitlines()
    body[8] = (
        body[8]
        .replace(b"basic", b"b\xe4sic")
        .replace(b"pro", b"pr\xf6")
        .replace(b"team", b"t\xe9am")
    )
    path = tmp_path / "in.csv"
    path.write_bytes(b"\n".join(body) + b"\n")
    job = churn.run_batch(spec(path, tmp_path / "o.parquet", chunk_rows=10))
    assert (job.rows, job.errors) == (30, 1)
    (error,) = pd.read_csv(tmp_path / "o.errors.csv")["error"]
    assert error.startswith("line 9: column 'plan' is not UTF-8 text")
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 29


# -- JSONL ----------------------------------------------------------------------------------


def test_a_bad_jsonl_line_keeps_its_text_and_invalid_utf8_is_one_bad_row(
    churn: Berth, tmp_path: Path
) -> None:
    lines = [json.dumps(r).encode() for r in customers(10).to_dict(orient="records")]
    lines[2] = b'{"id": 1002, "age": '
    lines[5] = b'{"id": 1005, "plan": "b\xe4sic"}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    job = churn.run_batch(spec(path, tmp_path / "o.parquet"))
    assert (job.rows, job.errors) == (10, 2)
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert errors["row"].tolist() == [2, 5]
    assert errors["error"][0].startswith("line 3 is not JSON (")
    assert errors["error"][0].endswith('): {"id": 1002, "age": ')
    assert errors["error"][1].startswith("line 6 is not JSON (")


# -- Parquet files and folders ----------------------------------------------------------------


def test_a_damaged_page_in_a_parquet_file_is_one_line_naming_the_file(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.Table.from_pandas(customers(4_000), preserve_index=False),
        path,
        row_group_size=1_000,
        compression="snappy",
    )
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x55 for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    out = tmp_path / "o.parquet"
    args = ["batch", "run", "churn", "-i", str(path), "-o", str(out), "-p", "id"]
    _ended_in_one_line(run(cli, home, *args), "invalid_input", f"{path} is damaged")
    assert not out.exists()
    job = churn.jobs.recent()[0]
    assert job.status == "failed"
    assert str(path) in job.message


def test_a_folder_part_that_is_not_parquet_is_named(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_parquet(customers(30), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1 cut short")
    args = ["batch", "run", "churn", "-i", str(folder), "-o", str(tmp_path / "o.parquet")]
    assert_error(
        run(cli, home, *args), "invalid_input", "part-1.parquet", "not a readable Parquet file"
    )


def test_folder_parts_of_different_types(churn: Berth, tmp_path: Path) -> None:
    """Types that widen (int32 beside int64) are read as one; types that do not, fail fast."""
    folder = tmp_path / "in"
    folder.mkdir()
    frame = customers(60)
    write_parquet(frame[:30], folder / "part-0.parquet")
    narrow = frame[30:].astype({"age": np.int32, "id": np.int32})
    write_parquet(narrow, folder / "part-1.parquet")
    job = churn.run_batch(spec(folder, tmp_path / "o.parquet"))
    assert (job.status, job.rows, job.errors) == ("succeeded", 60, 0)
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(tmp_path / "o.parquet")),
        expected(churn, frame),
        check_dtype=False,
    )

    write_parquet(frame[30:].astype({"age": str}), folder / "part-1.parquet")
    with pytest.raises(
        InvalidInputError,
        match=r"part-1.parquet: column 'age' is (large_)?string here but int64 in .*part-0",
    ):
        churn.run_batch(spec(folder, tmp_path / "o2.parquet"))


# -- databases --------------------------------------------------------------------------------


def test_a_query_failing_half_way_is_one_line(
    any_churn: Berth, cli: CliRunner, tmp_path: Path
) -> None:
    postgres = any_churn.db.dialect == "postgresql"
    url = any_churn.db.url if postgres else f"sqlite:///{tmp_path}/in.db"
    engine = sa.create_engine(url)
    customers(140).to_sql("customers", engine, index=False, if_exists="replace")
    engine.dispose()
    # Rows in storage order, evaluated as they are fetched (a sort would evaluate them all first).
    if postgres:
        query = "SELECT id, 1 / (id - 1120) AS age, income, plan FROM customers"
    else:
        failing = "json(CASE WHEN id = 1120 THEN '{' ELSE age END)"
        query = f"SELECT id, {failing} AS age, income, plan FROM customers ORDER BY rowid"
    with pytest.raises(InvalidInputError, match="input query failed after row 100: ") as caught:
        any_churn.run_batch(spec(url, tmp_path / "o.parquet", query=query))
    assert "\n" not in str(caught.value)
    job = any_churn.jobs.recent()[0]
    assert (job.status, job.rows) == ("failed", 100)


def test_a_duckdb_query_failing_half_way_is_one_line(churn: Berth, tmp_path: Path) -> None:
    parquet = write_parquet(customers(300), tmp_path / "in.parquet")
    query = (
        "SELECT id, CASE WHEN id = 1250 THEN error('boom at 1250') ELSE age END AS age, "
        f"income, plan FROM read_parquet('{parquet}')"
    )
    with pytest.raises(InvalidInputError, match=r"input query failed.*boom at 1250") as caught:
        churn.run_batch(spec("duckdb:///:memory:", tmp_path / "o.parquet", query=query))
    assert "\n" not in str(caught.value)
    assert churn.jobs.recent()[0].status == "failed"


@pytest.fixture
def cli(home: Path) -> CliRunner:
    return CliRunner(env=CLEAN_ENV)


# -- outputs ----------------------------------------------------------------------------------


class _RemoveFolder:
    """A progress watcher that removes the output's folder once the job has started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def start(self, *args: object) -> None: ...

    def phase(self, text: str) -> None: ...

    def advance(self, rows: int, errors: int, total: int | None) -> None:
        if self.folder.exists():
            self.folder.rmdir()


def test_an_output_folder_gone_mid_job_is_one_line_and_the_job_resumes(
    churn: Berth, tmp_path: Path
) -> None:
    from berth.errors import UnavailableError

    source = write_parquet(customers(100), tmp_path / "in.parquet")
    folder = tmp_path / "out"
    folder.mkdir()
    job_spec = spec(source, folder / "o.csv")
    with pytest.raises(UnavailableError, match=f"stopped on a file error: .*{folder}") as caught:
        churn.run_batch(job_spec, progress=_RemoveFolder(folder))
    assert "\n" not in str(caught.value)
    assert churn.jobs.recent()[0].status == "failed"
    folder.mkdir()
    job = churn.run_batch(job_spec)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert len(pd.read_csv(folder / "o.csv")) == 100
