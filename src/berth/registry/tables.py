"""The metadata schema. Migrations in ``migrations/`` must produce exactly these tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite forgets the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


_PENDING_AUDIT = "berth.audit.pending"


def write_audit(s: Session, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
    """Add the audit event of a change to the session that makes the change, so both commit or
    neither does. Its place in the hash chain (seq, prev_hash, hash) is given when the
    transaction commits, under the chain's append lock (:func:`berth.registry.audit.chain`)."""
    row = AuditRow(at=utcnow(), actor=actor, action=action, subject=subject, details=details)
    s.add(row)
    s.info.setdefault(_PENDING_AUDIT, []).append(row)


@event.listens_for(Session, "before_commit")
def _chain_audit(s: Session) -> None:
    """Chain the events of the committing transaction. A savepoint's release is not the commit:
    its events wait for the outer one. Events of a rolled-back transaction left the session."""
    pending: list[AuditRow] = s.info.get(_PENDING_AUDIT) or []
    if not pending or s.in_nested_transaction():
        return
    s.info[_PENDING_AUDIT] = []
    rows = [r for r in pending if r in s and r.seq is None]
    if rows:
        from berth.registry.audit import chain  # it builds on this module's tables

        chain(s, rows)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # Highest number ever handed out: numbers are never reused, even after a delete, so a
    # prediction record that names "credit-risk/3" always means one artifact.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


# Names that differ only in case are one name (``Credit-Risk`` beside ``credit-risk`` would be two
# models a user cannot tell apart, and two folders of version records on a case-blind disk). The
# service refuses them with a message; this index holds against concurrent writers too.
Index("uq_models_name_lower", func.lower(ModelRow.name), unique=True)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    flavor: Mapped[str] = mapped_column(String(64))
    flavor_options: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    signature: Mapped[dict[str, Any]] = mapped_column(JsonType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class ProfileRow(Base):
    """The training data's reference profile, apart from the version row: listing stays light."""

    __tablename__ = "version_profiles"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    profile: Mapped[dict[str, Any]] = mapped_column(JsonType)


class AliasRow(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class AuditRow(Base):
    """Every change of state, written in the same transaction as the change itself."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_subject_at", "subject", "at"),
        Index("uq_audit_seq", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Position in the hash chain (1, 2, ...); None on events written before the chain."""
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 over this event's content and ``prev_hash``: an edit, a deletion, an insertion
    or a reordering breaks the chain from there on."""


class ApiKeyRow(Base):
    """An API key: only a keyed hash of its secret is kept; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The key's public id (its prefix, also in the key itself), to find the row to compare."""
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JsonType, default=list)
    digest: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class JobRow(Base):
    """One batch job: what it scores with, from where to where, and how far it got."""

    __tablename__ = "batch_jobs"
    __table_args__ = (Index("ix_batch_jobs_fingerprint", "fingerprint"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """The same command (reference, input, output, options) gives the same fingerprint: running it
    again finds this job and resumes it."""
    reference: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    """Pinned when the job starts: a resumed job scores with the version it started with."""
    source: Mapped[str] = mapped_column(Text)
    source_stamp: Mapped[str] = mapped_column(String(128), default="")
    """Size and modification time of an input file or folder when the job started: a resume on
    an input that changed since would mix two inputs."""
    destination: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    engine: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    total_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    schedule_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    """Time spent running, summed over attempts."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ScheduleRow(Base):
    """A batch job to start on a cron schedule. ``next_run_at`` is also the schedulers' lock: a
    scheduler claims a run by moving it forward with a compare-and-set, so each run starts once
    however many schedulers watch the table."""

    __tablename__ = "batch_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    reference: Mapped[str] = mapped_column(String(256))
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    missed: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_message: Mapped[str] = mapped_column(Text, default="")
    """Why the last run failed, when it failed before it became a job (an input missing)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
