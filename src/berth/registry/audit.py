"""The audit log's hash chain: appending, verifying, exporting.

Every audit event has a place in one chain per database: ``seq`` 1, 2, 3 ... and

    hash = sha256(canonical JSON of {seq, at, actor, action, subject, details} + prev_hash)

where ``prev_hash`` is the hash of event ``seq - 1`` (64 zeros for the first). An event edited,
deleted, inserted or moved after it was written no longer matches its hash or its neighbour's
link, and :func:`verify` names the first such event. What a chain cannot show by itself is the
newest events cut off (the rest is still a valid chain) or the whole chain rewritten from some
point on by someone who recomputes the hashes: both are caught by an *anchor*, a head hash kept
outside the database (``berth audit verify`` prints it; ``--expect-head`` checks it is still in
the chain).

Appending happens when the transaction that makes the change commits (a ``before_commit`` hook
registered by :mod:`berth.registry.tables`): the chain head is read and the new events numbered
under a lock, so two concurrent writers never take the same place. On SQLite a write
transaction already holds the database's write lock (``BEGIN IMMEDIATE``, see
:class:`berth.registry.db.Database`); on PostgreSQL a transaction-scoped advisory lock
serializes appends and is released by the commit. Taking it at commit time, after every other
change of the transaction is written, means a writer holding it never waits for a row lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Table, select, text
from sqlalchemy.orm import Session

from berth.errors import InvalidInputError, UnavailableError
from berth.registry import access
from berth.registry.tables import AuditRow, utcnow

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""

_PG_CHAIN_LOCK = int.from_bytes(b"berthaud", "big")
"""Any constant: the same in every process appending to a database (not the migration's)."""

FORMAT = "berth-audit/1"
"""The export's format, written in its head line."""


class AuditChainError(UnavailableError):
    """The audit log does not verify: an event was edited, deleted, inserted or reordered, or
    the anchored head is gone. ``problem`` names the first bad event."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"audit log does not verify: {problem.describe()}")
        self.problem = problem


@dataclass(frozen=True)
class Event:
    """One audit event as the chain sees it (``at`` in the canonical ISO form)."""

    seq: int | None
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str | None
    hash: str | None

    def computed_hash(self) -> str:
        assert self.seq is not None
        return event_hash(
            self.seq, self.at, self.actor, self.action, self.subject, self.details, self.prev_hash
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @property
    def label(self) -> str:
        place = f"seq {self.seq}" if self.seq is not None else "an unchained event"
        return f"{place} ({self.action} {self.subject})"


@dataclass(frozen=True)
class Problem:
    """The first event that breaks the chain, and how."""

    event: Event | None
    reason: str

    def describe(self) -> str:
        return f"{self.event.label}: {self.reason}" if self.event is not None else self.reason

    def to_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "seq": e.seq if e else None,
            "action": e.action if e else None,
            "subject": e.subject if e else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found: the events walked, the head, and the first problem if any."""

    events: int
    head_seq: int | None
    head_hash: str
    anchor_seq: int | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "anchor_seq": self.anchor_seq,
            "problem": self.problem.to_dict() if self.problem else None,
        }


# -- hashing ---------------------------------------------------------------------------------


def canonical_time(at: datetime) -> str:
    """The one text of an event's time that is hashed: UTC, microseconds, ISO-8601."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def plain(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` as JSON gives it back (tuples as lists, keys as strings): what is stored is
    what is hashed."""
    loaded = json.loads(json.dumps(details, allow_nan=False, default=str))
    if not isinstance(loaded, dict):
        raise InvalidInputError("audit details must be a JSON object")
    return loaded


def canonical(
    seq: int, at: str, actor: str, action: str, subject: str, details: dict[str, Any]
) -> bytes:
    """Sorted keys, no spaces, UTF-8; an integral float as its integer (PostgreSQL's JSONB
    gives ``1e20`` back as ``100000000000000000000``)."""
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": _numbers(details),
    }
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def event_hash(
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any],
    prev_hash: str | None,
) -> str:
    content = canonical(seq, at, actor, action, subject, details)
    return hashlib.sha256(content + (prev_hash or "").encode()).hexdigest()


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


# -- appending -------------------------------------------------------------------------------


def chain(s: Session, rows: Sequence[AuditRow]) -> None:
    """Give ``rows`` (this transaction's new events, in the order written) the next places in
    the chain. Called by the commit hook, inside the transaction, under the append lock."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CHAIN_LOCK})
    head = s.execute(
        select(AuditRow.seq, AuditRow.hash)
        .where(AuditRow.seq.is_not(None))
        .order_by(AuditRow.seq.desc())
        .limit(1)
    ).first()
    seq: int = (head[0] or 0) if head is not None else 0
    prev: str = (head[1] or "") if head is not None else GENESIS
    for row in rows:
        seq += 1
        row.at = utcnow()  # times follow the chain: the moment the change commits
        row.details = plain(row.details or {})
        row.seq = seq
        row.prev_hash = prev
        row.hash = event_hash(
            seq, canonical_time(row.at), row.actor, row.action, row.subject, row.details, prev
        )
        prev = row.hash


def backfill(conn: Connection) -> int:
    """Chain the events written before the chain existed (``seq`` NULL), in the order they were
    written (their id), after any chained ones. The 0004 migration runs it; returns how many."""
    from sqlalchemy import update

    table = AuditRow.__table__
    assert isinstance(table, Table)
    cols = table.c
    head = conn.execute(
        select(cols.seq, cols.hash).where(cols.seq.is_not(None)).order_by(cols.seq.desc()).limit(1)
    ).first()
    seq, prev = (head[0], head[1]) if head is not None else (0, GENESIS)
    pending = conn.execute(
        select(cols.id, cols.at, cols.actor, cols.action, cols.subject, cols.details)
        .where(cols.seq.is_(None))
        .order_by(cols.id)
    ).all()
    for row in pending:
        seq += 1
        details = plain(row.details or {})
        digest = event_hash(
            seq, canonical_time(row.at), row.actor, row.action, row.subject, details, prev
        )
        conn.execute(
            update(table)
            .where(cols.id == row.id)
            .values(seq=seq, prev_hash=prev, hash=digest, details=details)
        )
        prev = digest
    return len(pending)


# -- reading ---------------------------------------------------------------------------------


def _event(row: AuditRow) -> Event:
    return Event(
        seq=row.seq,
        at=canonical_time(row.at),
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=row.details if isinstance(row.details, dict) else {},
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def events(
    s: Session,
    *,
    since: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    limit: int | None = None,
) -> Generator[Event]:
    """Events in chain order (unchained ones last), filtered. ``action`` ending in ``*`` is a
    prefix (``alias.*``); ``subject`` is a prefix (``credit-risk``). Reading the log needs the
    ``read`` right (checked now, not at the first event)."""
    access.require("read")
    return _walk(s, since=since, actor=actor, action=action, subject=subject, limit=limit)


def _walk(
    s: Session,
    *,
    since: datetime | None,
    actor: str | None,
    action: str | None,
    subject: str | None,
    limit: int | None,
) -> Generator[Event]:
    query = select(AuditRow).order_by(AuditRow.seq.is_(None), AuditRow.seq, AuditRow.id)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if actor is not None:
        query = query.where(AuditRow.actor == actor)
    if action is not None:
        if action.endswith("*"):
            query = query.where(AuditRow.action.startswith(action[:-1], autoescape=True))
        else:
            query = query.where(AuditRow.action == action)
    if subject is not None:
        query = query.where(AuditRow.subject.startswith(subject, autoescape=True))
    if limit is not None:
        query = query.limit(limit)
    result = s.scalars(query.execution_options(yield_per=1000))
    try:
        for row in result:
            yield _event(row)
    finally:  # a walk that stops at the first problem closes the server-side cursor now
        result.close()


# -- verifying -------------------------------------------------------------------------------


class Walker:
    """Verifies events fed in chain order, keeping the first problem (and going on counting, so
    an export still writes every event)."""

    def __init__(self, expect_head: str | None = None) -> None:
        self.expect_head = expect_head
        self.expected_seq = 1
        self.prev = GENESIS
        self.count = 0
        self.head_seq: int | None = None
        self.anchor_seq: int | None = None
        self.problem: Problem | None = None

    def feed(self, event: Event) -> None:
        self.count += 1
        if self.problem is not None:
            return
        self.problem = _check(event, self.expected_seq, self.prev)
        if self.problem is not None:
            return
        assert event.seq is not None
        assert event.hash is not None
        if event.hash == self.expect_head:
            self.anchor_seq = event.seq
        self.expected_seq, self.prev, self.head_seq = event.seq + 1, event.hash, event.seq

    def result(self) -> Verification:
        problem = self.problem
        if problem is None and self.expect_head is not None and self.anchor_seq is None:
            problem = Problem(
                None,
                f"the anchored head {self.expect_head} is not in the chain (whose head is "
                f"{_head_label(self.head_seq, self.prev)}): the newest events were removed, or "
                "the chain was rewritten",
            )
        return Verification(
            events=self.count,
            head_seq=self.head_seq,
            head_hash=self.prev,
            anchor_seq=self.anchor_seq,
            problem=problem,
        )


def verify(walked: Iterable[Event], expect_head: str | None = None) -> Verification:
    """Walk events in chain order and name the first that breaks it.

    ``expect_head``: a head hash kept from an earlier verify (an anchor). It must still be in
    the chain: if it is not, the newest events were cut off or the chain was rewritten."""
    walker = Walker(expect_head)
    for event in walked:
        walker.feed(event)
        if walker.problem is not None:
            break
    return walker.result()


def _check(event: Event, expected_seq: int, prev: str) -> Problem | None:
    if event.seq is None or event.hash is None:
        return Problem(event, "it is not in the chain (written outside Berth: inserted)")
    if event.seq < expected_seq:
        return Problem(event, f"it comes after seq {expected_seq - 1}: events are out of order")
    if event.seq > expected_seq:
        missing = (
            f"seq {expected_seq}"
            if event.seq == expected_seq + 1
            else f"seq {expected_seq} to {event.seq - 1}"
        )
        return Problem(event, f"the event(s) before it ({missing}) are missing: deleted")
    if event.prev_hash != prev:
        before = f"seq {expected_seq - 1}" if expected_seq > 1 else "the start"
        return Problem(
            event,
            f"it does not link to {before} (its prev_hash differs): an event before it was "
            "changed, inserted or moved",
        )
    if event.computed_hash() != event.hash:
        return Problem(event, "its content does not match its hash: edited")
    return None


def _head_label(seq: int | None, digest: str) -> str:
    return f"seq {seq} {digest}" if seq is not None else "empty"


def verify_database(s: Session, expect_head: str | None = None) -> Verification:
    with contextlib.closing(events(s)) as walked:
        return verify(walked, expect_head)


# -- exporting -------------------------------------------------------------------------------


def export(s: Session, out: Path) -> Verification:
    """Write every event (with its hashes) as JSON Lines, then a head line, to ``out``
    (a temporary file renamed at the end: never half an export). The export is verified while it
    is written, and what that found is returned; an auditor checks a copy offline with
    ``berth audit verify --file``."""
    out = out.expanduser()
    if not out.parent.is_dir():
        raise InvalidInputError(f"output folder {str(out.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            walker = Walker()
            last: Event | None = None
            for last in events(s):
                fh.write(orjson.dumps(last.to_dict()) + b"\n")
                walker.feed(last)
            result = walker.result()
            head = {
                "head": {
                    "format": FORMAT,
                    "seq": last.seq if last else None,
                    "hash": last.hash if last else GENESIS,
                    "events": result.events,
                    "exported_at": canonical_time(utcnow()),
                }
            }
            fh.write(orjson.dumps(head) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def read_export(path: Path) -> tuple[list[Event], dict[str, Any] | None]:
    """The events of an export and its head line (None when the file has none: truncated)."""
    try:
        lines = path.expanduser().read_bytes().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"cannot read audit export {str(path)!r}: {exc}") from exc
    found: list[Event] = []
    head: dict[str, Any] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if head is not None:
            raise InvalidInputError(f"{path}: line {number} comes after the head line")
        try:
            data = orjson.loads(line)
            if "head" in data:
                head = dict(data["head"])
                continue
            found.append(
                Event(
                    seq=data["seq"],
                    at=data["at"],
                    actor=data["actor"],
                    action=data["action"],
                    subject=data["subject"],
                    details=dict(data["details"]),
                    prev_hash=data["prev_hash"],
                    hash=data["hash"],
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path}: line {number} is not an audit event: {exc}") from exc
    return found, head


def verify_export(path: Path, expect_head: str | None = None) -> Verification:
    """Verify an export offline: its chain, then that its head line names the last event (a
    file cut short, or one whose last events were removed, does not)."""
    found, head = read_export(path)
    result = verify(found, expect_head)
    if result.problem is not None:
        return result
    if head is None:
        problem = Problem(None, f"{path} has no head line: the export is cut short")
    elif head.get("hash") != result.head_hash or head.get("seq") != result.head_seq:
        problem = Problem(
            None,
            f"{path}'s head line names {_head_label(head.get('seq'), str(head.get('hash')))} "
            f"but its events end at {_head_label(result.head_seq, result.head_hash)}: events "
            "were removed from the end",
        )
    else:
        return result
    return dataclasses.replace(result, problem=problem)
