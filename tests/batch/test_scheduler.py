"""Schedules: cron times, output names per run, one start per due run however many schedulers
watch, and the policies for runs missed while none was up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from tests.batch.data import customers, spec, write_parquet

from berth.app import Berth
from berth.batch.jobs import JobInfo
from berth.batch.scheduler import Scheduler, next_run, render
from berth.batch.specs import JobSpec
from berth.config import Settings
from berth.errors import ConflictError, InvalidInputError, NotFoundError

T0 = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)


def test_next_run_follows_cron_in_its_time_zone() -> None:
    assert next_run("0 2 * * *", "UTC", T0) == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert next_run("0 2 * * *", "UTC", T0.replace(hour=2)) == datetime(
        2026, 11, 27, 2, 0, tzinfo=UTC
    )
    # 02:00 in Berlin (UTC+1 in November) is 01:00 UTC: already past at 01:30 UTC.
    assert next_run("0 2 * * *", "Europe/Berlin", T0) == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert next_run("*/15 * * * *", "UTC", T0) == datetime(2026, 11, 26, 1, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "zone", "message"),
    [
        ("0 25 * * *", "UTC", "invalid cron expression '0 25 \\* \\* \\*'"),
        ("every night", "UTC", "invalid cron expression"),
        ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_schedules_are_named(cron: str, zone: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        next_run(cron, zone, T0)


def test_render_fills_the_scheduled_time_into_the_output(tmp_path: Path) -> None:
    source = write_parquet(customers(5), tmp_path / "in.parquet")
    job = spec(source, tmp_path / "scores-{date}-{time}.parquet")
    run = render(job, datetime(2026, 11, 27, 1, 0, tzinfo=UTC), "Europe/Berlin")
    assert run.output.target == str(tmp_path / "scores-2026-11-27-0200.parquet")
    assert run.input == job.input
    with pytest.raises(InvalidInputError, match=r"only \{date\}, \{time\} and \{stamp\}"):
        render(spec(source, tmp_path / "x-{day}.parquet"), T0, "UTC")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _schedule(client: Berth, tmp_path: Path, *, missed: str = "once", at: datetime = T0) -> None:
    source = write_parquet(customers(40), tmp_path / "in.parquet")
    client.jobs.create_schedule(
        "nightly",
        spec(source, tmp_path / "scores-{stamp}.parquet"),
        cron="0 2 * * *",
        timezone="UTC",
        missed=missed,
        next_run_at=next_run("0 2 * * *", "UTC", at),
        actor="tester",
    )


def _scheduler(client: Berth, clock: Clock) -> Scheduler:
    def run(job: JobSpec, schedule_id: int) -> JobInfo:
        return client.run_batch(job, schedule_id=schedule_id)

    return Scheduler(client.jobs, run, clock=clock)


def _wait(scheduler: Scheduler) -> list[JobInfo | None]:
    scheduler.close(wait=True)
    return [f.result() for f in scheduler.started]


def test_a_due_run_starts_once_and_writes_its_own_output(any_churn: Berth, tmp_path: Path) -> None:
    _schedule(any_churn, tmp_path)
    clock = Clock(T0)
    scheduler = _scheduler(any_churn, clock)
    assert scheduler.tick() == []  # 01:30: not due yet

    clock.now = T0 + timedelta(minutes=31)  # 02:01
    assert [s.name for s in scheduler.tick()] == ["nightly"]
    assert scheduler.tick() == []  # claimed: the same run does not start twice
    (job,) = _wait(scheduler)
    assert job is not None
    assert (job.status, job.rows, job.schedule_id) == ("succeeded", 40, job.schedule_id)
    assert len(pd.read_parquet(tmp_path / "scores-20261126T020000.parquet")) == 40
    schedule = any_churn.jobs.get_schedule("nightly")
    assert schedule.last_job_id == job.id
    assert schedule.next_run_at == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def test_two_schedulers_start_each_run_once(any_churn: Berth, tmp_path: Path) -> None:
    """Two schedulers with their own database connections tick at the same moments, night after
    night: each due run starts exactly once."""
    _schedule(any_churn, tmp_path)
    other = Berth(
        Settings(home=any_churn.settings.home, database_url=any_churn.settings.database_url)
    )
    clock = Clock(T0)
    runs: list[str] = []
    lock = threading.Lock()

    def run(job: JobSpec, schedule_id: int) -> SimpleNamespace:
        with lock:
            runs.append(job.output.target)
        return SimpleNamespace(id=None, status="succeeded", rows=0)

    schedulers = [Scheduler(c.jobs, run, clock=clock) for c in (any_churn, other)]
    barrier = threading.Barrier(2)

    def watch(scheduler: Scheduler) -> None:
        for night in range(6):
            barrier.wait()
            clock.now = T0 + timedelta(days=night, minutes=31)
            barrier.wait()
            scheduler.tick()

    threads = [threading.Thread(target=watch, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in schedulers:
        s.close(wait=True)
    other.close()
    nights = [T0.replace(hour=2, minute=0) + timedelta(days=d) for d in range(6)]
    assert sorted(runs) == [
        str(tmp_path / f"scores-{n.strftime('%Y%m%dT%H%M%S')}.parquet") for n in nights
    ]


def test_missed_runs_collapse_into_one_by_default(churn: Berth, tmp_path: Path) -> None:
    _schedule(churn, tmp_path)
    clock = Clock(T0 + timedelta(days=3, hours=5))  # three nights missed
    scheduler = _scheduler(churn, clock)
    assert len(scheduler.tick()) == 1
    assert scheduler.tick() == []
    assert len([j for j in _wait(scheduler) if j is not None]) == 1
    assert churn.jobs.get_schedule("nightly").next_run_at == datetime(
        2026, 11, 30, 2, 0, tzinfo=UTC
    )


def test_missed_runs_are_skipped_under_skip(churn: Berth, tmp_path: Path) -> None:
    _schedule(churn, tmp_path, missed="skip")
    clock = Clock(T0 + timedelta(days=1, hours=5))
    scheduler = _scheduler(churn, clock)
    assert scheduler.tick() == []
    assert churn.jobs.recent() == []
    assert churn.jobs.get_schedule("nightly").next_run_at == datetime(
        2026, 11, 28, 2, 0, tzinfo=UTC
    )
    clock.now = datetime(2026, 11, 28, 2, 1, tzinfo=UTC)  # on time: runs
    assert len(scheduler.tick()) == 1
    _wait(scheduler)


def test_a_run_that_fails_leaves_its_reason_on_the_schedule(churn: Berth, tmp_path: Path) -> None:
    _schedule(churn, tmp_path)
    (tmp_path / "in.parquet").unlink()  # the input is gone by 02:00
    clock = Clock(T0 + timedelta(minutes=31))
    scheduler = _scheduler(churn, clock)
    scheduler.tick()
    assert _wait(scheduler) == [None]
    schedule = churn.jobs.get_schedule("nightly")
    assert schedule.last_job_id is None
    assert "does not exist" in schedule.last_message


def test_schedule_names_are_unique_and_deletable(churn: Berth, tmp_path: Path) -> None:
    _schedule(churn, tmp_path)
    with pytest.raises(ConflictError, match="schedule 'nightly' exists"):
        _schedule(churn, tmp_path)
    churn.jobs.set_enabled("nightly", False, actor="tester")
    assert churn.jobs.due(T0 + timedelta(days=9)) == []
    churn.jobs.delete_schedule("nightly", actor="tester")
    with pytest.raises(NotFoundError, match="schedule 'nightly' not found"):
        churn.jobs.get_schedule("nightly")
    actions = [e.action for e in churn.registry.audit_log("schedule/")]
    assert actions == ["schedule.create", "schedule.pause", "schedule.delete"]


def test_a_run_after_a_failed_run_starts_over_on_the_new_input(
    churn: Berth, tmp_path: Path
) -> None:
    """Nightly runs with one fixed output: a run that failed (bad rows) does not block or get
    resumed by the next run on fixed data."""
    from berth.batch.specs import ErrorLimit

    source = tmp_path / "in.csv"
    bad = customers(60).astype(object)
    bad.loc[5, "plan"] = "gold"
    bad.to_csv(source, index=False)
    job = spec(source, tmp_path / "latest.csv", max_errors=ErrorLimit.parse("0"), overwrite=True)
    churn.jobs.create_schedule(
        "fixed",
        job,
        cron="0 2 * * *",
        timezone="UTC",
        missed="once",
        next_run_at=next_run("0 2 * * *", "UTC", T0),
        actor="tester",
    )
    clock = Clock(T0 + timedelta(minutes=31))
    scheduler = _scheduler(churn, clock)
    scheduler.tick()
    assert _wait(scheduler) == [None]  # stopped by --max-errors 0

    customers(60).to_csv(source, index=False)  # fixed for the next night
    clock.now += timedelta(days=1)
    scheduler = _scheduler(churn, clock)
    scheduler.tick()
    (done,) = _wait(scheduler)
    assert done is not None
    assert (done.status, done.rows, done.errors) == ("succeeded", 60, 0)
    assert [j.status for j in churn.jobs.recent()] == ["succeeded", "abandoned"]


def test_a_run_after_a_killed_run_is_not_held_up_by_it(churn: Berth, tmp_path: Path) -> None:
    """Last night's job was killed with kill -9 (its row still says running): tonight's run sees
    it interrupted, gives it up and starts over."""
    import signal
    import subprocess
    import sys

    from sqlalchemy import update

    from berth.registry.tables import JobRow

    source = write_parquet(customers(30), tmp_path / "in.parquet")
    job = spec(source, tmp_path / "latest.parquet", overwrite=True)
    churn.jobs.create_schedule(
        "fixed",
        job,
        cron="0 2 * * *",
        timezone="UTC",
        missed="once",
        next_run_at=next_run("0 2 * * *", "UTC", T0),
        actor="tester",
    )
    killed = churn.jobs.create(render(job, T0, "UTC"), model="churn", version=1, actor="tester")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    with churn.db.write() as s:
        s.execute(update(JobRow).where(JobRow.id == killed.id).values(pid=owner.pid))
    assert churn.jobs.get(killed.id).status == "interrupted"

    scheduler = _scheduler(churn, Clock(T0 + timedelta(minutes=31)))
    scheduler.tick()
    (done,) = _wait(scheduler)
    assert done is not None
    assert (done.status, done.rows) == ("succeeded", 30)
    assert churn.jobs.get(killed.id).status == "abandoned"
    assert churn.jobs.get_schedule("fixed").last_message == ""
