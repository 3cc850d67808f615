"""Registration under kill -9 and under concurrent writers, in real separate processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.config import Settings
from berth.errors import ModelNotFoundError

ROOT = Path(__file__).resolve().parents[2]


def _spawn(script: str, home: Path, database_url: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "BERTH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("BERTH_DATABASE_URL", None)
    if database_url:
        env["BERTH_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)  # reaps the process and closes its pipes
    assert proc.returncode == -signal.SIGKILL


def _assert_clean_and_usable(client: Berth) -> None:
    """Nothing of the killed registration is visible, and the registry still works."""
    with pytest.raises(ModelNotFoundError):
        client.get_version("crashy")
    assert client.registry.referenced_digests() == set()
    v = client.register(SumModel(), "crashy", training_data=numbers(), trusted=True)
    assert v.version == 1
    assert client.load("crashy/1").predict(numbers(3))["prediction"].shape == (3,)


def test_kill_while_the_artifact_is_being_written(
    client: Berth, home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "saving"
    proc = _spawn(
        f"""
        import berth
        from tests.models import SlowToSave, numbers
        berth.connect().register(SlowToSave({str(marker)!r}), "crashy",
                                 training_data=numbers(), trusted=True)
        """,
        home,
        None,
    )
    _wait_for(marker.exists, what="the registration to start saving")
    _kill(proc)
    assert client.store.digests() == set()  # only a staging folder, which nothing reads
    _assert_clean_and_usable(client)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, home: Path) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_kill_after_the_artifact_is_sealed_but_before_the_row_commits(
    backend: str | None, home: Path
) -> None:
    with Berth(Settings(home=home, database_url=backend, user="tester")) as client:
        lock = _hold_write_lock(client, backend)
        try:
            proc = _spawn(
                """
                import berth
                from tests.models import SumModel, numbers
                berth.connect().register(SumModel(), "crashy", training_data=numbers(),
                                         trusted=True)
                """,
                home,
                backend,
            )
            _wait_for(lambda: client.store.digests(), what="the artifact to be sealed")
            time.sleep(0.3)  # the writer is now queued on the database lock
            assert proc.poll() is None
            _kill(proc)
        finally:
            lock.close()
        _assert_clean_and_usable(client)


def _hold_write_lock(client: Berth, backend: str | None):
    if backend is None:
        conn = sqlite3.connect(
            client.settings.resolved_database_url().split(":///", 1)[1], isolation_level=None
        )
        conn.execute("BEGIN IMMEDIATE")
        return conn
    engine = sqlalchemy.create_engine(backend)
    conn = engine.connect()
    conn.exec_driver_sql("BEGIN")
    conn.exec_driver_sql("LOCK TABLE models IN EXCLUSIVE MODE")

    class _Held:
        def close(self) -> None:
            conn.rollback()
            conn.close()
            engine.dispose()

    return _Held()


def test_concurrent_registrations_get_distinct_consecutive_versions(
    backend: str | None, home: Path, tmp_path: Path
) -> None:
    writers, each = 4, 5
    go = tmp_path / "go"
    procs = [
        _spawn(
            f"""
            import pathlib, time
            import berth
            from tests.models import SumModel, numbers
            client = berth.connect()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.01)
            for _ in range({each}):
                v = client.register(SumModel(), "race", training_data=numbers(), trusted=True)
                print(v.version, flush=True)
            """,
            home,
            backend,
        )
        for _ in range(writers)
    ]
    time.sleep(1.0)  # let every writer import and wait at the gate
    go.write_text("go")
    got: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        got += [int(line) for line in out.split()]
    assert sorted(got) == list(range(1, writers * each + 1))
    with Berth(Settings(home=home, database_url=backend)) as client:
        assert [v.version for v in client.list_versions("race")] == list(range(1, 21))


def test_gc_removes_what_a_killed_registration_left(client: Berth, home: Path) -> None:
    lock = _hold_write_lock(client, None)
    try:
        proc = _spawn(
            """
            import berth
            from tests.models import SumModel, numbers
            berth.connect().register(SumModel(), "crashy", training_data=numbers(), trusted=True)
            """,
            home,
            None,
        )
        _wait_for(lambda: client.store.digests(), what="the artifact to be sealed")
        _kill(proc)
    finally:
        lock.close()
    orphan = next(iter(client.store.digests()))

    class Other(SumModel):  # different bytes, so a different artifact
        pass

    kept = client.register(Other(), "kept", training_data=numbers(), trusted=True)
    assert client.collect_garbage(older_than_s=3600)["orphans_removed"] == 0  # too young
    assert client.collect_garbage(older_than_s=0) == {"staging_removed": 0, "orphans_removed": 1}
    assert client.store.digests() == {kept.digest}
    assert orphan != kept.digest
    assert client.registry.audit_log(action="artifacts.collect")[0].details["orphans_removed"] == [
        orphan
    ]


def _stages_by_pid(client: Berth) -> dict[int, Path]:
    return {
        left.owner.pid: left.path
        for left in client.store.leftovers()
        if left.owner is not None and left.path.name.startswith("stage-")
    }


def test_gc_removes_a_killed_registrations_staging_at_once_and_keeps_a_live_one(
    client: Berth, home: Path, tmp_path: Path
) -> None:
    """The leftover of a registration killed mid-save goes on the next gc, whatever its age;
    the staging folder of a registration still saving stays, even with --older-than 0."""
    procs = {}
    for who in ("killed", "alive"):
        marker = tmp_path / who
        procs[who] = _spawn(
            f"""
            import berth
            from tests.models import SlowToSave, numbers
            berth.connect().register(SlowToSave({str(marker)!r}), "crashy",
                                     training_data=numbers(), trusted=True)
            """,
            home,
            None,
        )
        _wait_for(marker.exists, what=f"the {who} registration to start saving")
    try:
        stages = _stages_by_pid(client)
        killed, alive = stages[procs["killed"].pid], stages[procs["alive"].pid]
        _kill(procs["killed"])
        assert killed.is_dir()  # kill -9: nothing cleaned up after itself

        assert client.collect_garbage(older_than_s=3600)["staging_removed"] == 1
        assert not killed.exists()
        assert not killed.with_name(killed.name + ".owner").exists()
        assert alive.is_dir()
        assert client.collect_garbage(older_than_s=0)["staging_removed"] == 0
        assert alive.is_dir()
    finally:
        if procs["alive"].poll() is None:
            _kill(procs["alive"])
    assert client.collect_garbage(older_than_s=3600)["staging_removed"] == 1
    assert client.store.leftovers() == []
