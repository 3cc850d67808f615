"""Cron schedules for batch jobs, and the loop that starts each due run exactly once.

Any number of schedulers may watch one metadata database (a ``berth scheduler`` process, a
``berth serve --scheduler``, on one machine or several). Each run is claimed by moving the
schedule's ``next_run_at`` forward with a compare-and-set: the one scheduler whose update matches
starts the job, the others see zero rows changed and move on.

Runs missed while no scheduler was up are handled by the schedule's ``missed`` policy:

- ``once`` (default): all missed runs collapse into one, started as soon as a scheduler is up;
  then the schedule goes on from the current time.
- ``skip``: a run more than ``grace`` late is skipped; the schedule waits for its next time.

Outputs may name the scheduled time, so that each run writes its own file:
``--output 'scores/{date}.parquet'`` (``{date}`` is ``2026-11-26``; ``{time}`` is ``0200``;
``{stamp}`` is ``20261126T020000``), in the schedule's time zone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from berth.batch.jobs import JobInfo, JobStore, ScheduleInfo
from berth.batch.specs import JobSpec
from berth.errors import InvalidInputError
from berth.registry import access
from berth.registry.tables import utcnow

log = logging.getLogger("berth.scheduler")

RunJob = Callable[[JobSpec, int], JobInfo]


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInputError(f"unknown time zone {name!r}; e.g. UTC, Europe/Berlin") from None


def next_run(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` names, in ``timezone``, as UTC."""
    from croniter import croniter

    tz = zone(timezone)
    try:
        it = croniter(cron, after.astimezone(tz))
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"invalid cron expression {cron!r}: {exc}; e.g. '0 2 * * *' (02:00 every day)"
        ) from None
    found: datetime = it.get_next(datetime)
    return found.astimezone(ZoneInfo("UTC"))


def render(spec: JobSpec, scheduled_for: datetime, timezone: str) -> JobSpec:
    """The spec of one run: ``{date}``, ``{time}``, ``{stamp}`` in the output filled in."""
    local = scheduled_for.astimezone(zone(timezone))
    values = {
        "date": local.strftime("%Y-%m-%d"),
        "time": local.strftime("%H%M"),
        "stamp": local.strftime("%Y%m%dT%H%M%S"),
    }

    def fill(text: str | None) -> str | None:
        if text is None:
            return None
        try:
            return text.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidInputError(
                f"{text!r}: only {{date}}, {{time}} and {{stamp}} can be filled in ({exc})"
            ) from None

    output = spec.output
    filled = output.model_copy(
        update={"target": fill(output.target) or output.target, "table": fill(output.table)}
    )
    errors = fill(spec.errors_path)
    # Each run is its own: an earlier run that failed or was interrupted is given up, not
    # resumed on what is by now other data.
    return spec.replace(output=filled, errors_path=errors, restart=True)


class Scheduler:
    """Starts due runs. ``tick`` is one look at the table; ``run_forever`` ticks until stopped.

    Jobs run on up to ``max_running`` threads, so a long job does not hold up other schedules,
    each as the principal that started the scheduler (who needs the ``deploy`` permission).
    """

    def __init__(
        self,
        jobs: JobStore,
        run: RunJob,
        *,
        interval_s: float = 30.0,
        grace: timedelta = timedelta(minutes=5),
        max_running: int = 2,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.principal = access.require("deploy")
        self.jobs = jobs
        self.run = run
        self.interval_s = interval_s
        self.grace = grace
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="berth-scheduled")
        self.started: list[Future[JobInfo | None]] = []

    def tick(self) -> list[ScheduleInfo]:
        """Claim every due run; start those not skipped. Returns the schedules started."""
        now = self.clock()
        started = []
        for schedule in self.jobs.due(now):
            following = next_run(schedule.cron, schedule.timezone, now)
            if not self.jobs.claim_run(schedule, following, now):
                continue  # another scheduler claimed it
            late = now - schedule.next_run_at
            if schedule.missed == "skip" and late > self.grace:
                log.warning(
                    "schedule %s: skipped the run due %s (%s late; policy skip)",
                    schedule.name,
                    schedule.next_run_at.isoformat(),
                    late,
                )
                continue
            spec = render(schedule.spec, schedule.next_run_at, schedule.timezone)
            self.started.append(self._pool.submit(self._start, schedule, spec, now))
            started.append(schedule)
        return started

    def _start(self, schedule: ScheduleInfo, spec: JobSpec, claimed: datetime) -> JobInfo | None:
        log.info(
            "schedule %s: starting %s -> %s",
            schedule.name,
            spec.reference,
            spec.output.describe(),
        )
        try:
            # A thread starts with no principal: the run acts as whoever started the scheduler.
            with access.acting_as(self.principal):
                job = self.run(spec, schedule.id)
        except Exception as exc:  # the scheduler goes on; the schedule keeps the reason
            log.error("schedule %s: the run failed: %s", schedule.name, exc)
            failed = self.jobs.recent(limit=1, schedule_id=schedule.id)
            job_id = failed[0].id if failed and failed[0].created_at >= claimed else None
            self.jobs.ran(schedule.id, job_id, str(exc))
            return None
        self.jobs.ran(schedule.id, job.id)
        log.info("schedule %s: job %s %s (%d rows)", schedule.name, job.id, job.status, job.rows)
        return job

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a database hiccup must not end the scheduler
                log.exception("scheduler tick failed")
            stop.wait(self.interval_s)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
