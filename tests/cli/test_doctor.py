"""``berth doctor`` and what every command says about a damaged or lost registry: one line
naming the file and what to do, never a SQLAlchemy traceback, never a silent fresh registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.test_cli import CLEAN_ENV, Invoke, assert_error, ok
from tests.models import SumModel, numbers
from typer.testing import CliRunner

from berth.app import Berth
from berth.cli.main import app
from berth.config import Settings
from berth.registry.db import SCHEMA_HEAD


@pytest.fixture
def cli(home: Path) -> Invoke:
    runner = CliRunner(env=CLEAN_ENV)

    def invoke(*args: str) -> object:
        return runner.invoke(app, ["--home", str(home), *args])

    return invoke  # type: ignore[return-value]


@pytest.fixture
def registered(home: Path) -> Path:
    """Three versions of ``m`` (one aliased) in ``home``; returns the database file."""
    with Berth(Settings(home=home, user="tester")) as client:
        for seed in range(3):
            client.register(SumModel(), "m", training_data=numbers(seed=seed), trusted=True)
        client.set_alias("m", "production", 2)
    return home / "berth.db"


def _truncate_to_half(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)


COMMANDS = [
    ("models", "list"),
    ("models", "versions", "m"),
    ("models", "show", "m"),
    ("models", "alias", "m", "staging", "1"),
    ("batch", "list"),
    ("gc",),
    ("serve", "--port", "0"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_on_a_truncated_database_says_so_in_one_line(
    cli: Invoke, registered: Path, command: tuple[str, ...]
) -> None:
    _truncate_to_half(registered)
    assert_error(
        cli(*command), "unavailable", str(registered), "truncated", "berth doctor --rebuild"
    )


def test_a_zero_byte_database_beside_artifacts_is_refused(cli: Invoke, registered: Path) -> None:
    for file in registered.parent.glob("berth.db*"):
        file.unlink()
    registered.write_bytes(b"")
    for command in (("models", "list"), ("serve", "--port", "0")):
        assert_error(cli(*command), "unavailable", "is empty (0 bytes)", "berth doctor --rebuild")
    assert registered.stat().st_size == 0  # not re-created as an empty registry


def test_doctor_on_a_healthy_home(cli: Invoke, registered: Path) -> None:
    out = ok(cli("doctor")).stdout
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["ok", "database"],
        ["ok", "artifacts"],
        ["ok", "records"],
        ["ok", "orphans"],
        ["ok", "staging"],
    ]
    assert f"schema {SCHEMA_HEAD} (current)" in out


def test_doctor_finds_rebuilds_and_keeps_the_damaged_file(cli: Invoke, registered: Path) -> None:
    _truncate_to_half(registered)
    damaged = registered.read_bytes()
    result = cli("doctor")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0].split()[:2] == ["problem", "database"]
    assert "a rebuild would restore 3 version(s) of 1 model(s)" in result.stdout

    out = ok(cli("doctor", "--rebuild")).stdout
    assert "rebuilt the registry: 1 model(s), 3 version(s), 1 alias(es)" in out
    aside = [p for p in registered.parent.iterdir() if ".damaged-" in p.name]
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [damaged]
    assert str(aside[0]) in out

    versions = ok(cli("models", "versions", "m", "--json")).stdout
    assert '"version": 3' in versions
    assert '"production"' in versions
    ok(cli("doctor"))
    rows = registered.parent / "rows.json"
    rows.write_text('[{"a": 1.0, "b": 2.0}]')
    assert '"prediction":3.0' in ok(cli("predict", "m@production", "-i", str(rows))).stdout


def test_doctor_rebuild_of_a_healthy_registry_needs_force(cli: Invoke, registered: Path) -> None:
    assert_error(cli("doctor", "--rebuild"), "conflict", "opens and holds 1 model", "--force")
    ok(cli("doctor", "--rebuild", "--force"))


def test_the_real_berth_serve_on_a_truncated_database(registered: Path) -> None:
    """The installed script, as a user runs it: one line, exit 7, no traceback."""
    _truncate_to_half(registered)
    script = Path(sys.executable).with_name("berth")
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.run(
        [str(script), "--home", str(registered.parent), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: metadata database {registered} is damaged (truncated: "
        f"{registered.stat().st_size} of {registered.stat().st_size * 2} bytes): run "
        "`berth doctor` to see what is wrong and `berth doctor --rebuild` to rebuild the "
        "registry from the artifacts (the damaged file is kept aside)"
    ]
