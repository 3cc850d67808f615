"""Two processes on one SQLite registry: a long-lived one (a server) keeps reading while CLI
commands change aliases. Found by the soak run: a process that opened the database file to
check its header while it already had SQLite connections to it lost its POSIX locks (closing
any descriptor of a file drops them all); a CLI command then took itself for the last user and
deleted the write-ahead log, and the server, still reading the deleted log, answered from a
stale snapshot forever (alias moves ignored)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.models import SumModel, numbers

from berth.app import Berth
from berth.config import Settings


def berth(home: Path, *args: str) -> None:
    script = Path(sys.executable).parent / "berth"
    subprocess.run([str(script), "--home", str(home), *args], check=True, capture_output=True)


def deleted_files(home: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(home)) and target.endswith("(deleted)"):
            out.append(target)
    return out


def test_a_reader_sees_every_alias_move_made_by_other_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = Berth(Settings(home=home))
    try:
        for _ in range(2):
            client.register(SumModel(), "shared", training_data=numbers(), trusted=True)
        client.set_alias("shared", "production", 1)
        assert client.registry.list_models()[0].aliases == {"production": 1}
        # A second client of the same registry in this process (a server builds several):
        # opening it must not disturb the first one's locks.
        Berth(Settings(home=home)).close()
        for version in (2, 1, 2):
            berth(home, "models", "alias", "shared", "production", str(version))
            assert client.registry.list_models()[0].aliases == {"production": version}
            assert deleted_files(home) == []
    finally:
        client.close()
