"""Batch jobs and schedules in the metadata database: the one place that writes their tables.

Statuses: ``running`` (a process holds the job), ``interrupted`` (stopped by a signal or Ctrl-C,
or its process is gone), ``failed`` (an error; resumable when the cause is fixed), ``succeeded``,
``abandoned`` (given up for a new start with ``--restart``). A process killed with kill -9 leaves
its job ``running`` in the table; read back on the same host, such a job is shown
``interrupted`` (see ``owner``), with no write. A job of another host cannot be judged from here
and stays ``running``. Whatever the table says, the process that resumes a job takes its lock
file first, which only a live process can hold.

Longer than an adapter module should be: it is the jobs' and schedules' store (queries and
their row mapping), with no scoring in it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from berth.batch.owner import gone
from berth.batch.specs import JobSpec
from berth.errors import ConflictError, InvalidInputError, NotFoundError
from berth.registry import access
from berth.registry.db import Database
from berth.registry.service import audit_actor
from berth.registry.tables import JobRow, ScheduleRow, utcnow, write_audit

RESUMABLE = ("running", "interrupted", "failed")
LIVE_OR_NOT = ("running", "interrupted")
MISSED_POLICIES = ("once", "skip")


@dataclass(frozen=True)
class JobInfo:
    id: str
    reference: str
    model: str
    version: int
    source: str
    source_stamp: str
    destination: str
    spec: JobSpec
    engine: str
    status: str
    rows: int
    errors: int
    chunks: int
    total_rows: int | None
    message: str
    schedule_id: int | None
    host: str
    pid: int | None
    attempts: int
    seconds: float
    created_at: datetime
    created_by: str
    updated_at: datetime
    finished_at: datetime | None

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class ScheduleInfo:
    id: int
    name: str
    reference: str
    cron: str
    timezone: str
    spec: JobSpec
    missed: str
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_job_id: str | None
    last_message: str
    created_at: datetime
    created_by: str


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- jobs ----------------------------------------------------------------------------------

    def create(
        self,
        spec: JobSpec,
        *,
        model: str,
        version: int,
        actor: str | None = None,
        total_rows: int | None = None,
        schedule_id: int | None = None,
        source_stamp: str = "",
    ) -> JobInfo:
        actor = audit_actor("deploy", actor=actor)
        row = JobRow(
            id=uuid.uuid4().hex[:12],
            fingerprint=spec.fingerprint(),
            reference=spec.reference,
            model=model,
            version=version,
            source=spec.input.describe(),
            source_stamp=source_stamp,
            destination=spec.output.describe(),
            spec=spec.to_dict(),
            engine=spec.engine,
            status="running",
            rows=0,
            errors=0,
            chunks=0,
            total_rows=total_rows,
            message="",
            schedule_id=schedule_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            attempts=1,
            seconds=0.0,
            created_by=actor,
        )
        with self.db.write() as s:
            s.add(row)
            write_audit(
                s,
                actor,
                "batch.start",
                f"{model}/{version}",
                {"job": row.id, "input": row.source, "output": row.destination},
            )
            s.flush()
            return _job(row)

    def resumable(self, spec: JobSpec) -> JobInfo | None:
        """The newest unfinished job doing exactly this work, if any."""
        with self.db.read() as s:
            row = s.scalars(
                select(JobRow)
                .where(JobRow.fingerprint == spec.fingerprint())
                .order_by(JobRow.created_at.desc())
                .limit(1)
            ).first()
            return _job(row) if row is not None and row.status in RESUMABLE else None

    def claim(self, job_id: str, *, actor: str | None = None) -> JobInfo:
        """Mark a job as run again by this process (its lock file is already held)."""
        actor = audit_actor("deploy", actor=actor)
        with self.db.write() as s:
            row = _job_row(s, job_id)
            if row.status == "succeeded":
                raise ConflictError(f"job {row.id} already succeeded; nothing to resume")
            row.status = "running"
            row.host = socket.gethostname()
            row.pid = os.getpid()
            row.attempts += 1
            row.message = ""
            row.updated_at = utcnow()
            write_audit(s, actor, "batch.resume", f"{row.model}/{row.version}", {"job": row.id})
            s.flush()
            return _job(row)

    def progress(
        self,
        job_id: str,
        *,
        rows: int,
        errors: int,
        chunks: int,
        seconds: float,
        total_rows: int | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "rows": rows,
            "errors": errors,
            "chunks": chunks,
            "seconds": seconds,
            "updated_at": utcnow(),
        }
        if total_rows is not None:
            values["total_rows"] = total_rows
        with self.db.write() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def finish(self, job_id: str, status: str, message: str = "", *, seconds: float) -> JobInfo:
        with self.db.write() as s:
            row = _job_row(s, job_id)
            row.status = status
            row.message = message
            row.seconds = seconds
            row.pid = None
            row.updated_at = utcnow()
            row.finished_at = utcnow() if status == "succeeded" else None
            s.flush()
            return _job(row)

    def get(self, job_id: str) -> JobInfo:
        """A job by id, or by a prefix of its id that only it has."""
        access.require("read")
        with self.db.read() as s:
            return _job(_job_row(s, job_id))

    def recent(
        self, *, limit: int = 50, status: str | None = None, schedule_id: int | None = None
    ) -> list[JobInfo]:
        access.require("read")
        with self.db.read() as s:
            query = select(JobRow).order_by(JobRow.created_at.desc())
            if schedule_id is not None:
                query = query.where(JobRow.schedule_id == schedule_id)
            if status in LIVE_OR_NOT:  # a running row may read back as interrupted
                query = query.where(JobRow.status.in_(LIVE_OR_NOT))
                jobs = (_job(r) for r in s.scalars(query))
                return [j for j in jobs if j.status == status][:limit]
            if status is not None:
                query = query.where(JobRow.status == status)
            return [_job(r) for r in s.scalars(query.limit(limit))]

    # -- schedules -----------------------------------------------------------------------------

    def create_schedule(
        self,
        name: str,
        spec: JobSpec,
        *,
        cron: str,
        timezone: str,
        missed: str,
        next_run_at: datetime,
        actor: str | None = None,
    ) -> ScheduleInfo:
        actor = audit_actor("deploy", actor=actor)
        if missed not in MISSED_POLICIES:
            raise InvalidInputError(f"--missed {missed!r}: use {' or '.join(MISSED_POLICIES)}")
        row = ScheduleRow(
            name=name,
            reference=spec.reference,
            cron=cron,
            timezone=timezone,
            spec=spec.to_dict(),
            missed=missed,
            enabled=True,
            last_message="",
            next_run_at=next_run_at,
            created_by=actor,
        )
        try:
            with self.db.write() as s:
                s.add(row)
                s.flush()
                details = {"cron": cron, "ref": spec.reference}
                write_audit(s, actor, "schedule.create", f"schedule/{name}", details)
                return _schedule(row)
        except IntegrityError:
            raise ConflictError(f"schedule {name!r} exists; delete it first") from None

    def delete_schedule(self, name: str, *, actor: str | None = None) -> ScheduleInfo:
        actor = audit_actor("deploy", actor=actor)
        with self.db.write() as s:
            row = _schedule_row(s, name)
            info = _schedule(row)
            s.delete(row)
            write_audit(s, actor, "schedule.delete", f"schedule/{name}", {"cron": row.cron})
            return info

    def set_enabled(self, name: str, enabled: bool, *, actor: str | None = None) -> ScheduleInfo:
        actor = audit_actor("deploy", actor=actor)
        with self.db.write() as s:
            row = _schedule_row(s, name)
            row.enabled = enabled
            action = "schedule.resume" if enabled else "schedule.pause"
            write_audit(s, actor, action, f"schedule/{name}", {})
            s.flush()
            return _schedule(row)

    def get_schedule(self, name: str) -> ScheduleInfo:
        access.require("read")
        with self.db.read() as s:
            return _schedule(_schedule_row(s, name))

    def schedules(self) -> list[ScheduleInfo]:
        access.require("read")
        with self.db.read() as s:
            return [_schedule(r) for r in s.scalars(select(ScheduleRow).order_by(ScheduleRow.name))]

    def due(self, now: datetime) -> list[ScheduleInfo]:
        with self.db.read() as s:
            rows = s.scalars(
                select(ScheduleRow)
                .where(ScheduleRow.enabled.is_(True), ScheduleRow.next_run_at <= now)
                .order_by(ScheduleRow.next_run_at)
            )
            return [_schedule(r) for r in rows]

    def claim_run(self, schedule: ScheduleInfo, next_run_at: datetime, now: datetime) -> bool:
        """Take the schedule's due run: a compare-and-set of ``next_run_at``, so of several
        schedulers that saw the same due run exactly one gets True."""
        with self.db.write() as s:
            done = s.execute(
                update(ScheduleRow)
                .where(
                    ScheduleRow.id == schedule.id,
                    ScheduleRow.next_run_at == schedule.next_run_at,
                    ScheduleRow.enabled.is_(True),
                )
                .values(next_run_at=next_run_at, last_run_at=now)
            )
            return bool(getattr(done, "rowcount", 0) == 1)

    def ran(self, schedule_id: int, job_id: str | None, message: str = "") -> None:
        """What a run became: its job, and why it failed when it failed before becoming one."""
        with self.db.write() as s:
            s.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == schedule_id)
                .values(last_job_id=job_id, last_message=message)
            )


def _job_row(s: Any, job_id: str) -> JobRow:
    row = s.get(JobRow, job_id)
    if row is not None:
        assert isinstance(row, JobRow)
        return row
    if len(job_id) >= 4 and job_id.isalnum():
        query = select(JobRow).where(JobRow.id.startswith(job_id)).limit(2)
        found: list[JobRow] = list(s.scalars(query))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidInputError(f"job id {job_id!r} is ambiguous; give more of it")
    raise NotFoundError(f"batch job {job_id!r} not found; see berth batch list")


def _schedule_row(s: Any, name: str) -> ScheduleRow:
    row = s.scalars(select(ScheduleRow).where(ScheduleRow.name == name)).first()
    if row is None:
        raise NotFoundError(f"schedule {name!r} not found; see berth batch schedules")
    return row  # type: ignore[no-any-return]


def _job(row: JobRow) -> JobInfo:
    status, message = row.status, row.message
    if status == "running" and gone(row.host, row.pid, row.updated_at):
        status = "interrupted"
        message = (
            f"its process ({row.pid} on {row.host}) is gone: killed, or the machine stopped; "
            f"run the same command or berth batch resume {row.id} to finish"
        )
    return JobInfo(
        id=row.id,
        reference=row.reference,
        model=row.model,
        version=row.version,
        source=row.source,
        source_stamp=row.source_stamp,
        destination=row.destination,
        spec=JobSpec.from_dict(row.spec),
        engine=row.engine,
        status=status,
        rows=row.rows,
        errors=row.errors,
        chunks=row.chunks,
        total_rows=row.total_rows,
        message=message,
        schedule_id=row.schedule_id,
        host=row.host,
        pid=row.pid,
        attempts=row.attempts,
        seconds=row.seconds,
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _schedule(row: ScheduleRow) -> ScheduleInfo:
    return ScheduleInfo(
        id=row.id,
        name=row.name,
        reference=row.reference,
        cron=row.cron,
        timezone=row.timezone,
        spec=JobSpec.from_dict(row.spec),
        missed=row.missed,
        enabled=row.enabled,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_job_id=row.last_job_id,
        last_message=row.last_message,
        created_at=row.created_at,
        created_by=row.created_by,
    )
