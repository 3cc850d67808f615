"""The audit log's hash chain on SQLite and PostgreSQL: every change chained in its transaction,
tampering with the rows by SQL caught and named, concurrent writers kept in one chain, events
from before the chain chained by the migration, exports verified offline."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import orjson
import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from tests.models import SumModel, numbers

import berth.registry.db as db_module
from berth.app import Berth
from berth.config import Settings
from berth.errors import NotFoundError, UnauthorizedError
from berth.registry import audit
from berth.registry.access import ANONYMOUS, Principal, acting_as
from berth.registry.db import Database
from berth.registry.tables import write_audit


def _verify(client: Berth, expect_head: str | None = None) -> audit.Verification:
    with client.db.read() as s:
        return audit.verify_database(s, expect_head)


def _events(client: Berth) -> list[audit.Event]:
    with client.db.read() as s:
        return list(audit.events(s))


def _history(client: Berth) -> None:
    """Five events: a registration, two alias moves, an alias delete, a version delete."""
    client.register(SumModel(), "m", training_data=numbers(), trusted=True)
    client.register(SumModel(), "m", training_data=numbers(), trusted=True)
    client.set_alias("m", "production", 1)
    client.set_alias("m", "production", 2)
    client.delete_alias("m", "production")


def _sql(client: Berth, statement: str, **params: object) -> None:
    with client.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_every_change_is_chained_in_order(any_client: Berth) -> None:
    _history(any_client)
    events = _events(any_client)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.action for e in events] == [
        "version.create",
        "version.create",
        "alias.set",
        "alias.set",
        "alias.delete",
    ]
    assert events[0].prev_hash == audit.GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
        assert before.at <= after.at
    assert all(e.computed_hash() == e.hash for e in events)
    result = _verify(any_client)
    assert result.ok, result.problem
    assert (result.events, result.head_seq, result.head_hash) == (5, 5, events[-1].hash)


def test_a_rolled_back_change_takes_no_place_in_the_chain(any_client: Berth) -> None:
    any_client.register(SumModel(), "m", training_data=numbers(), trusted=True)

    def failing_change() -> None:
        with any_client.db.write() as s:
            write_audit(s, "tester", "alias.set", "m@x", {})
            raise RuntimeError("the change fails after its event was written")

    with pytest.raises(RuntimeError):
        failing_change()
    with pytest.raises(NotFoundError):
        any_client.set_alias("m", "production", 9)
    any_client.set_alias("m", "production", 1)
    assert [e.seq for e in _events(any_client)] == [1, 2]
    assert _verify(any_client).ok


def test_details_verify_as_the_database_gives_them_back(any_client: Berth) -> None:
    """Tuples, integer keys, big and integral floats: what JSON (and JSONB) store and return
    differs from what was passed, and the hash is over what is stored."""
    details = {"t": (1, 2), 3: "int key", "big": 1e20, "one": 1.0, "x": 0.1, "u": "é ✓", "n": None}
    with any_client.db.write() as s:
        write_audit(s, "tester", "odd.details", "m", details)
    (event,) = _events(any_client)
    assert event.details["t"] == [1, 2]
    assert event.details["3"] == "int key"
    assert _verify(any_client).ok


# -- tampering, by SQL on the rows -----------------------------------------------------------


def test_an_edited_event_is_named(any_client: Berth) -> None:
    _history(any_client)
    _sql(any_client, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert (problem.event.seq, problem.event.action, problem.event.subject) == (
        3,
        "alias.set",
        "m@production",
    )
    assert "edited" in problem.reason


def test_edited_details_are_named(any_client: Berth) -> None:
    _history(any_client)
    with any_client.db.write() as s:
        from berth.registry.tables import AuditRow

        row = s.query(AuditRow).filter(AuditRow.seq == 4).one()
        row.details = {**row.details, "to": 1}  # through the ORM: valid JSON on both backends
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert problem.event.seq == 4
    assert "edited" in problem.reason


def test_an_edited_time_is_named(any_client: Berth) -> None:
    _history(any_client)
    _sql(any_client, "UPDATE audit_events SET at = :at WHERE seq = 2", at="2020-01-01 00:00:00")
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert problem.event.seq == 2


def test_a_deleted_event_is_named_by_the_one_after_it(any_client: Berth) -> None:
    _history(any_client)
    _sql(any_client, "DELETE FROM audit_events WHERE seq = 2")
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert (problem.event.seq, problem.event.action) == (3, "alias.set")
    assert "seq 2" in problem.reason
    assert "deleted" in problem.reason


def test_an_event_inserted_outside_berth_is_named(any_client: Berth) -> None:
    _history(any_client)
    _sql(
        any_client,
        "INSERT INTO audit_events (at, actor, action, subject, details) "
        "VALUES (CURRENT_TIMESTAMP, 'mallory', 'alias.set', 'm@backdoor', '{}')",
    )
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert (problem.event.seq, problem.event.subject) == (None, "m@backdoor")
    assert "inserted" in problem.reason


def test_an_event_inserted_into_the_middle_is_caught(any_client: Berth) -> None:
    """The forger renumbers the events after seq 2 and writes a well-hashed event at seq 3:
    the event that was 3 (now 4) no longer links to its predecessor."""
    _history(any_client)
    events = _events(any_client)
    _sql(any_client, "UPDATE audit_events SET seq = -(seq + 1) WHERE seq >= 3")
    _sql(any_client, "UPDATE audit_events SET seq = -seq WHERE seq < 0")
    at = events[1].at
    forged = audit.event_hash(3, at, "mallory", "alias.set", "m@backdoor", {}, events[1].hash)
    _sql(
        any_client,
        "INSERT INTO audit_events (at, actor, action, subject, details, seq, prev_hash, hash) "
        "VALUES (CURRENT_TIMESTAMP, 'mallory', 'alias.set', 'm@backdoor', '{}', 3, :p, :h)",
        p=events[1].hash,
        h=forged,
    )
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    # The forged row's time is not the one it hashed, so it is named first; had the forger
    # matched it, the next event would be (its prev_hash is the old seq 2's).
    assert problem.event.seq == 3
    assert problem.event.subject == "m@backdoor"


def test_a_well_forged_insertion_breaks_the_next_link(any_client: Berth) -> None:
    _history(any_client)
    events = _events(any_client)
    _sql(any_client, "UPDATE audit_events SET seq = -(seq + 1) WHERE seq >= 3")
    _sql(any_client, "UPDATE audit_events SET seq = -seq WHERE seq < 0")
    with any_client.db.read() as s:
        from berth.registry.tables import AuditRow

        at = s.query(AuditRow).filter(AuditRow.seq == 2).one().at  # the exact stored time
    forged = audit.event_hash(
        3, audit.canonical_time(at), "mallory", "alias.set", "m@backdoor", {}, events[1].hash
    )
    _sql(
        any_client,
        "INSERT INTO audit_events (at, actor, action, subject, details, seq, prev_hash, hash) "
        "SELECT at, 'mallory', 'alias.set', 'm@backdoor', '{}', 3, :p, :h FROM audit_events "
        "WHERE seq = 2",
        p=events[1].hash,
        h=forged,
    )
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    assert (problem.event.seq, problem.event.action, problem.event.subject) == (
        4,
        events[2].action,
        events[2].subject,
    )
    assert "does not link" in problem.reason


def test_reordered_events_are_named(any_client: Berth) -> None:
    _history(any_client)
    events = _events(any_client)
    _sql(any_client, "UPDATE audit_events SET seq = -1 WHERE seq = 2")
    _sql(any_client, "UPDATE audit_events SET seq = 2 WHERE seq = 3")
    _sql(any_client, "UPDATE audit_events SET seq = 3 WHERE seq = -1")
    problem = _verify(any_client).problem
    assert problem is not None
    assert problem.event is not None
    # Seq 2 now holds what was event 3: it links to event 2, not to event 1.
    assert (problem.event.seq, problem.event.action) == (2, events[2].action)


def test_removing_the_newest_events_is_caught_only_with_an_anchored_head(
    any_client: Berth,
) -> None:
    _history(any_client)
    anchor = _verify(any_client).head_hash
    any_client.set_alias("m", "staging", 1)  # the log grows after the anchor was taken
    assert _verify(any_client, expect_head=anchor).anchor_seq == 5
    _sql(any_client, "DELETE FROM audit_events WHERE seq >= 5")
    assert _verify(any_client).ok  # a shorter chain is still a chain
    problem = _verify(any_client, expect_head=anchor).problem
    assert problem is not None
    assert anchor in problem.reason
    assert "removed" in problem.reason


def test_a_rewritten_chain_is_caught_by_the_anchor(any_client: Berth) -> None:
    """A rogue operator who edits an event and recomputes every hash after it leaves a chain
    that verifies; the head kept elsewhere is no longer in it."""
    _history(any_client)
    anchor = _verify(any_client).head_hash
    _sql(any_client, "UPDATE audit_events SET actor = 'mallory', seq = NULL WHERE seq >= 2")
    _sql(any_client, "UPDATE audit_events SET prev_hash = NULL, hash = NULL WHERE seq IS NULL")
    with any_client.db.write() as s:
        audit.backfill(s.connection())
    assert _verify(any_client).ok
    assert not _verify(any_client, expect_head=anchor).ok


# -- concurrent writers ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest, home: Path) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_concurrent_writers_keep_one_chain(shared_url: str | None, home: Path) -> None:
    """Eight clients (each its own engine and connections) change state at once: every change
    succeeds and the events form one unbroken chain. On PostgreSQL, without the append lock,
    two transactions read the same head and the second fails on the unique seq (seven of eight
    writers did); SQLite's write transactions take the database's lock up front."""
    pg_url = shared_url
    with Berth(Settings(home=home, database_url=pg_url, user="setup")) as setup:
        setup.register(SumModel(), "m", training_data=numbers(), trusted=True)
    writers, rounds = 8, 15
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with Berth(Settings(home=home, database_url=pg_url, user=f"w{n}")) as c:
                start.wait()
                for i in range(rounds):
                    if n % 4 == 0 and i % 5 == 0:
                        c.register(SumModel(), f"m{n}", training_data=numbers(), trusted=True)
                    else:
                        c.set_alias("m", f"a{n}", 1)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    with Berth(Settings(home=home, database_url=pg_url, user="check")) as check:
        events = _events(check)
        assert [e.seq for e in events] == list(range(1, 2 + writers * rounds))
        result = _verify(check)
        assert result.ok, result.problem


# -- events written before the chain ---------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, home: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'old.db'}"


def test_the_migration_chains_events_written_before_the_chain(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(db_module.__file__).parent / "migrations"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        for n, action in enumerate(["version.create", "alias.set", "alias.delete"]):
            conn.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, subject, details) "
                    "VALUES (:at, 'old', :a, 'm', :d)"
                ),
                {
                    "at": f"2026-01-0{n + 1} 10:00:00.123456",
                    "a": action,
                    "d": orjson.dumps({"n": n}).decode(),
                },
            )
    engine.dispose()
    db = Database(url)
    try:
        with db.read() as s:
            events = list(audit.events(s))
            assert [(e.seq, e.action, e.details) for e in events] == [
                (1, "version.create", {"n": 0}),
                (2, "alias.set", {"n": 1}),
                (3, "alias.delete", {"n": 2}),
            ]
            assert audit.verify_database(s).ok
        with db.write() as s:
            write_audit(s, "new", "alias.set", "m@production", {})
        with db.read() as s:
            assert [e.seq for e in audit.events(s)] == [1, 2, 3, 4]
            assert audit.verify_database(s).ok
    finally:
        db.dispose()


# -- exports ---------------------------------------------------------------------------------


def _export(client: Berth, out: Path) -> list[bytes]:
    with client.db.read() as s:
        assert audit.export(s, out).ok
    return out.read_bytes().splitlines()


def test_an_export_verifies_offline_and_catches_edits_of_the_copy(
    any_client: Berth, tmp_path: Path
) -> None:
    _history(any_client)
    out = tmp_path / "audit.jsonl"
    lines = _export(any_client, out)
    assert len(lines) == 6
    head = orjson.loads(lines[-1])["head"]
    assert (head["seq"], head["hash"]) == (5, _verify(any_client).head_hash)
    assert audit.verify_export(out).ok
    assert audit.verify_export(out, expect_head=head["hash"]).anchor_seq == 5

    edited = orjson.loads(lines[1])
    edited["details"]["digest"] = "0" * 64
    out.write_bytes(b"\n".join([lines[0], orjson.dumps(edited), *lines[2:]]) + b"\n")
    problem = audit.verify_export(out).problem
    assert problem is not None
    assert problem.event is not None
    assert problem.event.seq == 2

    out.write_bytes(b"\n".join([*lines[:4], lines[-1]]) + b"\n")  # the newest event cut
    problem = audit.verify_export(out).problem
    assert problem is not None
    assert "removed from the end" in problem.reason

    out.write_bytes(b"\n".join(lines[:-1]) + b"\n")  # the head line cut
    problem = audit.verify_export(out).problem
    assert problem is not None
    assert "cut short" in problem.reason


def test_an_export_of_a_broken_chain_holds_every_event(any_client: Berth, tmp_path: Path) -> None:
    _history(any_client)
    _sql(any_client, "UPDATE audit_events SET subject = 'n' WHERE seq = 2")
    out = tmp_path / "audit.jsonl"
    with any_client.db.read() as s:
        result = audit.export(s, out)
    assert result.problem is not None
    assert len(out.read_bytes().splitlines()) == 6
    problem = audit.verify_export(out).problem
    assert problem is not None
    assert problem.event is not None
    assert problem.event.seq == 2


def test_reading_the_log_needs_the_read_right(client: Berth, tmp_path: Path) -> None:
    _history(client)
    with client.db.read() as s:
        with acting_as(ANONYMOUS), pytest.raises(UnauthorizedError):
            audit.verify_database(s)
        with acting_as(ANONYMOUS), pytest.raises(UnauthorizedError):
            audit.export(s, tmp_path / "audit.jsonl")
        assert not (tmp_path / "audit.jsonl").exists()
        with acting_as(Principal("auditor", "viewer", via="key")):
            assert audit.verify_database(s).events == 5
