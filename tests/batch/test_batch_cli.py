"""``berth batch`` and ``berth scheduler`` as a user runs them: progress, summaries, JSON for
scripts, and one-line errors with the right exit code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from sqlalchemy import text
from tests.batch.data import Stop, StopAfter, customers, expected, without_ids, write_parquet
from tests.cli.test_cli import CLEAN_ENV, assert_error, ok
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app


@pytest.fixture
def cli(home: Path) -> CliRunner:
    return CliRunner(env=CLEAN_ENV)


def run(runner: CliRunner, home: Path, *args: str) -> Result:
    return runner.invoke(app, ["--home", str(home), *args])


def test_run_prints_progress_and_a_summary(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    frame = customers(300)
    source = write_parquet(frame, tmp_path / "in.parquet")
    out = tmp_path / "scores.csv"
    result = ok(
        run(cli, home, "batch", "run", "churn@production", "-i", str(source), "-o", str(out),
            "-p", "id", "--chunk-rows", "100")
    )  # fmt: skip
    job = churn.jobs.recent()[0]
    assert f"job {job.id} succeeded: 300 rows scored with churn/1" in result.stdout
    assert "rows/s" in result.stderr  # plain progress lines: stderr is not a terminal here
    assert f"job {job.id}: 300/300 rows (100%), 0 bad" in result.stderr
    pd.testing.assert_frame_equal(
        without_ids(pd.read_csv(out)), expected(churn, frame), check_dtype=False
    )


def test_list_and_show(churn: Berth, cli: CliRunner, home: Path, tmp_path: Path) -> None:
    source = write_parquet(customers(20), tmp_path / "in.parquet")
    ok(
        run(
            cli, home, "batch", "run", "churn", "-i", str(source), "-o", str(tmp_path / "o.parquet")
        )
    )
    job = churn.jobs.recent()[0]
    assert job.id in ok(run(cli, home, "batch", "list")).stdout
    listed = json.loads(ok(run(cli, home, "batch", "list", "--json")).stdout)
    assert [(j["id"], j["status"], j["rows"]) for j in listed] == [(job.id, "succeeded", 20)]
    shown = ok(run(cli, home, "batch", "show", job.id[:6])).stdout
    assert "succeeded" in shown
    assert "20 of 20 (0 bad)" in shown
    assert "churn -> churn/1" in shown
    assert json.loads(ok(run(cli, home, "batch", "show", job.id, "--json")).stdout)["id"] == job.id


def test_bad_rows_are_reported_with_their_file(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    frame = customers(50).astype(object)
    frame.loc[[4, 9], "plan"] = "gold"
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    result = ok(
        run(
            cli, home, "batch", "run", "churn", "-i", str(source), "-o", str(tmp_path / "o.parquet")
        )
    )
    assert f"2 row(s) failed validation: {tmp_path / 'o.errors.csv'}" in result.stdout


def test_too_many_bad_rows_end_in_one_error_line(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    frame = customers(50).astype(object)
    frame.loc[[4, 9], "plan"] = "gold"
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    result = run(
        cli, home, "batch", "run", "churn", "-i", str(source), "-o", str(tmp_path / "o.parquet"),
        "--max-errors", "1",
    )  # fmt: skip
    assert result.exit_code == EXIT_CODES["invalid_input"]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: stopped after 50 rows: 2 failed validation, more than")
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("args", "kind", "fragment"),
    [
        (["-i", "{tmp}/nope.parquet", "-o", "{tmp}/o.parquet"], "invalid_input", "does not exist"),
        (["-i", "{tmp}/in.parquet", "-o", "{tmp}/in.parquet"], "conflict", "pass --overwrite"),
        (["-i", "{tmp}/in.parquet", "-o", "{tmp}/o.xlsx"], "invalid_input", "cannot tell"),
        (["-i", "{tmp}/in.parquet", "-o", "{tmp}/o.parquet", "-p", "nope"], "invalid_input",
         "has no column 'nope'"),
        (["-i", "{tmp}/in.parquet", "-o", "{tmp}/o.parquet", "--max-errors", "lots"],
         "invalid_input", "--max-errors 'lots'"),
        (["-i", "{tmp}/in.parquet", "-o", "{tmp}/o.parquet", "--engine", "spark"],
         "invalid_input", "unknown engine 'spark'"),
        (["-i", "sqlite:///{tmp}/x.db", "-o", "{tmp}/o.parquet"], "invalid_input",
         "pass --query"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_errors(
    churn: Berth,
    cli: CliRunner,
    home: Path,
    tmp_path: Path,
    args: list[str],
    kind: str,
    fragment: str,
) -> None:
    write_parquet(customers(10), tmp_path / "in.parquet")
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_error(run(cli, home, "batch", "run", "churn", *filled), kind, fragment)


def test_unknown_job_is_not_found(churn: Berth, cli: CliRunner, home: Path) -> None:
    assert_error(run(cli, home, "batch", "show", "abcdef"), "not_found", "batch job 'abcdef'")
    assert_error(run(cli, home, "batch", "resume", "abcdef"), "not_found", "batch job 'abcdef'")


def test_resume_by_id_finishes_a_stopped_job(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    frame = customers(90)
    source = write_parquet(frame, tmp_path / "in.parquet")
    out = tmp_path / "o.parquet"
    from berth.batch.specs import JobSpec, destination
    from berth.batch.specs import source as src

    spec = JobSpec(
        reference="churn",
        input=src(str(source)),
        output=destination(str(out)),
        passthrough=("id",),
        chunk_rows=30,
    )

    with pytest.raises(Stop):
        churn.run_batch(spec, progress=StopAfter(1))
    job = churn.jobs.recent()[0]
    result = ok(run(cli, home, "batch", "resume", job.id))
    assert f"job {job.id}: churn (90 rows, resuming at row 30)" in result.stderr
    assert f"job {job.id} succeeded: 90 rows" in result.stdout
    assert_error(run(cli, home, "batch", "resume", job.id), "conflict", "already succeeded")


def test_schedule_then_scheduler_once_runs_the_due_job(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    source = write_parquet(customers(25), tmp_path / "in.parquet")
    result = ok(
        run(cli, home, "batch", "schedule", "churn@production", "--cron", "0 2 * * *",
            "-i", str(source), "-o", str(tmp_path / "s-{date}.parquet"), "-p", "id")
    )  # fmt: skip
    assert "schedule churn-production: 0 2 * * * (UTC), next run" in result.stdout
    assert "churn-production" in ok(run(cli, home, "batch", "schedules")).stdout
    assert_error(
        run(cli, home, "batch", "schedule", "churn@production", "--cron", "0 2 * * *",
            "-i", str(source), "-o", str(tmp_path / "s.parquet")),
        "conflict", "schedule 'churn-production' exists",
    )  # fmt: skip
    assert_error(
        run(cli, home, "batch", "schedule", "churn", "--cron", "99 * * * *",
            "-i", str(source), "-o", str(tmp_path / "s.parquet")),
        "invalid_input", "invalid cron expression '99 * * * *'",
    )  # fmt: skip

    nothing = ok(run(cli, home, "scheduler", "--once"))
    assert "started 0 scheduled run(s)" in nothing.stdout
    with churn.db.write() as s:  # as if 02:00 had come
        s.execute(text("UPDATE batch_schedules SET next_run_at = '2026-11-26 02:00:00.000000'"))
    done = ok(run(cli, home, "scheduler", "--once"))
    assert "started 1 scheduled run(s)" in done.stdout
    assert len(pd.read_parquet(tmp_path / "s-2026-11-26.parquet")) == 25
    (job,) = churn.jobs.recent()
    assert (job.status, job.schedule_id) == ("succeeded", churn.jobs.schedules()[0].id)

    ok(run(cli, home, "batch", "unschedule", "churn-production"))
    assert "No schedules" in ok(run(cli, home, "batch", "schedules")).stdout


def test_serve_with_scheduler_runs_due_jobs(churn: Berth, home: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    source = write_parquet(customers(30), tmp_path / "in.parquet")
    from berth.batch.specs import JobSpec, destination
    from berth.batch.specs import source as src

    spec = JobSpec(
        reference="churn@production",
        input=src(str(source)),
        output=destination(str(tmp_path / "s.parquet")),
    )
    churn.jobs.create_schedule(
        "due",
        spec,
        cron="0 2 * * *",
        timezone="UTC",
        missed="once",
        next_run_at=datetime(2026, 1, 1, 2, tzinfo=UTC),  # long due
        actor="tester",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    exe = Path(sys.executable).parent / "berth"
    proc = subprocess.Popen(
        [str(exe), "--home", str(home), "serve", "--port", "0", "--poll-interval", "0",
         "--scheduler", "--scheduler-interval", "0.2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not churn.jobs.recent() or churn.jobs.recent()[0].status != "succeeded":
            assert proc.poll() is None, "the server stopped"
            assert time.monotonic() < deadline, "the scheduled job did not run"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(30)
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 30
    assert churn.jobs.get_schedule("due").last_job_id == churn.jobs.recent()[0].id


def test_the_terminal_bar_shows_rows_rate_and_errors() -> None:
    import io

    from rich.console import Console

    from berth.batch.specs import JobSpec
    from berth.cli import progress as batch_cli

    screen = io.StringIO()
    bar = batch_cli.BarProgress(Console(file=screen, force_terminal=True, width=120))
    job = SimpleNamespace(id="3f2a9c1b7d4e", reference="churn", spec=JobSpec)
    with bar:
        bar.start(job, 1_000, 200)  # type: ignore[arg-type]
        bar.phase("scoring with churn/1")
        bar.advance(600, 7, 1_000)
    text = screen.getvalue()
    assert "scoring with churn/1" in text
    assert "600/1,000 rows, 7 bad" in text
    assert "rows/s" in text


def test_json_output_masks_a_password_in_a_database_url(
    churn: Berth, cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    source = write_parquet(customers(5), tmp_path / "in.parquet")
    url = "postgresql+psycopg://app:s3cret@127.0.0.1:5432/scores"
    ok(
        run(cli, home, "batch", "schedule", "churn", "--cron", "0 2 * * *",
            "-i", str(source), "-o", url, "--table", "t")
    )  # fmt: skip
    shown = ok(run(cli, home, "batch", "schedules", "--json")).stdout
    assert "s3cret" not in shown
    assert "app@127.0.0.1" in shown  # the password was never stored: nothing left to mask
