"""``berth audit log | verify | export`` in process: what people and scripts read, one-line
errors naming the first bad event with a non-zero exit, and an export verified offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.models import SumModel, numbers
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.cli.errors import EXIT_CODES
from berth.cli.main import app
from berth.config import Settings

CLEAN_ENV: dict[str, str | None] = {
    "BERTH_HOME": None,
    "BERTH_DATABASE_URL": None,
    "BERTH_ARTIFACT_ROOT": None,
    "BERTH_USER": "cli-tester",
    "FORCE_COLOR": None,
    "COLUMNS": "160",
}
BROKEN = EXIT_CODES["unavailable"]


@pytest.fixture
def history(home: Path) -> Path:
    """A home whose audit log holds two registrations and three alias changes by two actors."""
    with Berth(Settings(home=home, user="alice")) as c:
        c.register(SumModel(), "m", training_data=numbers(), trusted=True)
        c.register(SumModel(), "m", training_data=numbers(), trusted=True)
        c.set_alias("m", "production", 1)
    with Berth(Settings(home=home, user="bob")) as c:
        c.set_alias("m", "production", 2)
        c.delete_alias("m", "production")
    return home


def _run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--home", str(home), *args], env=CLEAN_ENV)


def _sql(home: Path, statement: str) -> None:
    with Berth(Settings(home=home)) as c, c.db.engine.begin() as conn:
        for one in statement.split(";"):
            conn.execute(text(one))


def test_log_lists_events_in_chain_order_with_filters(history: Path) -> None:
    shown = _run(history, "audit", "log")
    assert shown.exit_code == 0, shown.output
    for word in ("version.create", "alias.set", "alias.delete", "alice", "bob", "m@production"):
        assert word in shown.output

    data = json.loads(_run(history, "audit", "log", "--json").output)
    assert [e["seq"] for e in data] == [1, 2, 3, 4, 5]
    assert all(len(e["hash"]) == 64 for e in data)

    by_bob = json.loads(_run(history, "audit", "log", "--actor", "bob", "--json").output)
    assert [(e["seq"], e["action"]) for e in by_bob] == [(4, "alias.set"), (5, "alias.delete")]
    aliases = json.loads(_run(history, "audit", "log", "--action", "alias.*", "--json").output)
    assert [e["seq"] for e in aliases] == [3, 4, 5]
    exact = json.loads(_run(history, "audit", "log", "--action", "alias.set", "--json").output)
    assert [e["seq"] for e in exact] == [3, 4]
    newest = json.loads(_run(history, "audit", "log", "--limit", "2", "--json").output)
    assert [e["seq"] for e in newest] == [4, 5]
    recent = json.loads(_run(history, "audit", "log", "--since", "1h", "--json").output)
    assert len(recent) == 5
    future = _run(history, "audit", "log", "--since", "2999-01-01T00:00")
    assert future.exit_code == 0
    assert "no audit events match" in future.output


def test_log_refuses_a_bad_since_in_one_line(history: Path) -> None:
    bad = _run(history, "audit", "log", "--since", "yesterday-ish")
    assert bad.exit_code == EXIT_CODES["invalid_input"]
    assert "yesterday-ish" in bad.output
    assert "Traceback" not in bad.output


def test_verify_prints_the_head_and_checks_an_anchor(history: Path) -> None:
    done = _run(history, "audit", "verify")
    assert done.exit_code == 0, done.output
    result = json.loads(_run(history, "audit", "verify", "--json").output)
    assert result["ok"] is True
    assert (result["events"], result["head_seq"]) == (5, 5)
    head = result["head_hash"]
    assert head in done.output

    anchored = _run(history, "audit", "verify", "--expect-head", head)
    assert anchored.exit_code == 0, anchored.output
    assert "event 5" in anchored.output

    _sql(history, "DELETE FROM audit_events WHERE seq = 5")  # the newest event removed
    assert _run(history, "audit", "verify").exit_code == 0
    cut = _run(history, "audit", "verify", "--expect-head", head)
    assert cut.exit_code == BROKEN
    assert head in cut.output
    assert len(cut.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2", "seq 2 (version.create m/2)"),
        ("DELETE FROM audit_events WHERE seq = 3", "seq 4 (alias.set m@production)"),
        (
            "INSERT INTO audit_events (at, actor, action, subject, details) VALUES "
            "(CURRENT_TIMESTAMP, 'mallory', 'alias.set', 'm@evil', '{}')",
            "an unchained event (alias.set m@evil)",
        ),
        (
            "UPDATE audit_events SET seq = -4 WHERE seq = 4; "
            "UPDATE audit_events SET seq = 4 WHERE seq = 5; "
            "UPDATE audit_events SET seq = 5 WHERE seq = -4",
            "seq 4 (alias.delete m@production)",
        ),
    ],
    ids=["edited", "deleted", "inserted", "reordered"],
)
def test_verify_names_the_first_bad_event_and_exits_non_zero(
    history: Path, tamper: str, named: str
) -> None:
    _sql(history, tamper)
    bad = _run(history, "audit", "verify")
    assert bad.exit_code == BROKEN
    assert named in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert "Traceback" not in bad.output
    as_json = _run(history, "audit", "verify", "--json")
    assert as_json.exit_code == BROKEN
    assert json.loads(as_json.output)["ok"] is False


def test_export_then_verify_the_copy_offline(history: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    done = _run(history, "audit", "export", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "wrote 5 events" in done.output
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    head = json.loads(lines[-1])["head"]

    # The copy verifies without the database: another home, no registry at all.
    offline = _run(tmp_path / "nowhere", "audit", "verify", "--file", str(out))
    assert offline.exit_code == 0, offline.output
    assert head["hash"] in offline.output
    anchored = _run(tmp_path / "x", "audit", "verify", "--file", str(out), "--expect-head", "ab")
    assert anchored.exit_code == BROKEN

    event = json.loads(lines[2])
    event["actor"] = "mallory"
    out.write_text("\n".join([*lines[:2], json.dumps(event), *lines[3:]]) + "\n")
    bad = _run(tmp_path / "x", "audit", "verify", "--file", str(out))
    assert bad.exit_code == BROKEN
    assert "seq 3 (alias.set m@production)" in bad.output

    out.write_text("\n".join(lines[:-1]) + "\n")
    cut = _run(tmp_path / "x", "audit", "verify", "--file", str(out))
    assert cut.exit_code == BROKEN
    assert "cut short" in cut.output


def test_export_and_verify_refuse_bad_paths_in_one_line(history: Path, tmp_path: Path) -> None:
    nowhere = _run(history, "audit", "export", "--out", str(tmp_path / "no" / "audit.jsonl"))
    assert nowhere.exit_code == EXIT_CODES["invalid_input"]
    assert "does not exist" in nowhere.output
    missing = _run(history, "audit", "verify", "--file", str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == EXIT_CODES["invalid_input"]
    assert "missing.jsonl" in missing.output
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    read = _run(history, "audit", "verify", "--file", str(garbage))
    assert read.exit_code == EXIT_CODES["invalid_input"]
    assert "line 1" in read.output
    for result in (nowhere, missing, read):
        assert len(result.output.strip().splitlines()) == 1
