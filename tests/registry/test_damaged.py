"""Damaged state: a damaged metadata database is named with what to do, a lost one is never
re-created empty beside its artifacts, and a registry rebuilt from the version records answers
as the lost one did."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.config import Settings
from berth.errors import ConflictError
from berth.registry.artifacts import ArtifactStore
from berth.registry.db import DamagedDatabaseError
from berth.registry.recovery import diagnose, rebuild


class Scaled(SumModel):
    """A row sum times ``k``: versions whose answers differ, so a mix-up shows."""

    def __init__(self, k: float) -> None:
        self.k = k

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return super().predict(frame) * self.k


def _settings(home: Path, url: str | None) -> Settings:
    return Settings(home=home, database_url=url, user="tester")


def _db_file(home: Path) -> Path:
    return home / "berth.db"


def _register_some(client: Berth) -> None:
    """3 versions of 2 models, aliases on both, one deleted version (its number stays taken)."""
    for k in (1.0, 2.0, 3.0):
        client.register(Scaled(k), "alpha", training_data=numbers(), trusted=True)
    for k in (10.0, 20.0, 30.0):
        client.register(
            Scaled(k),
            "beta",
            training_data=numbers(seed=1),
            trusted=True,
            metrics={"auc": k / 100},
            description="the second model",
        )
    client.set_alias("alpha", "production", 2)
    client.set_alias("beta", "staging", 1)
    client.set_alias("beta", "production", 2)
    client.delete_alias("beta", "production")
    client.delete_version("alpha", 3)


def _truncate_to_half(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)


def _registered_home(home: Path) -> None:
    with Berth(_settings(home, None)) as client:
        for k in range(3):
            client.register(Scaled(float(k)), "m", training_data=numbers(), trusted=True)


# -- errors on a damaged database --------------------------------------------------------------


def test_a_truncated_database_names_the_file_and_the_way_out(home: Path) -> None:
    _registered_home(home)
    _truncate_to_half(_db_file(home))
    with pytest.raises(DamagedDatabaseError) as caught:
        Berth(_settings(home, None))
    message = str(caught.value)
    assert str(_db_file(home)) in message
    assert "truncated" in message
    assert "berth doctor --rebuild" in message


def test_a_malformed_database_is_reported_not_raised_from_sqlalchemy(home: Path) -> None:
    """Damage the header check cannot see (pages overwritten, size unchanged) is still a
    one-line error, when SQLite meets it."""
    _registered_home(home)
    path = _db_file(home)
    data = bytearray(path.read_bytes())
    for offset in range(2 * 4096, len(data), 4096):
        data[offset : offset + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))
    with (
        pytest.raises(DamagedDatabaseError, match=r"berth\.db is damaged \(.*malformed"),
        Berth(_settings(home, None)) as client,
    ):
        client.list_versions("m")


def test_a_file_that_is_not_sqlite_is_named(home: Path) -> None:
    _registered_home(home)
    _db_file(home).write_bytes(b"not a database at all" * 10)
    with pytest.raises(DamagedDatabaseError, match=r"is not a SQLite database"):
        Berth(_settings(home, None))


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_a_lost_database_beside_artifacts_is_refused_not_recreated(home: Path, state: str) -> None:
    _registered_home(home)
    path = _db_file(home)
    for extra in home.glob("berth.db*"):
        extra.unlink()
    if state == "empty":
        path.write_bytes(b"")
    with pytest.raises(DamagedDatabaseError) as caught:
        Berth(_settings(home, None))
    message = str(caught.value)
    assert "the registry was lost" in message
    assert "berth doctor --rebuild" in message
    assert str(home / "artifacts") in message
    # Nothing was created in its place: the next command refuses the same way.
    assert (path.stat().st_size == 0) if state == "empty" else not path.exists()
    assert not list(home.glob("berth.db-*"))


def test_an_empty_database_in_a_home_without_artifacts_is_a_new_registry(home: Path) -> None:
    home.mkdir(parents=True)
    _db_file(home).write_bytes(b"")
    with Berth(_settings(home, None)) as client:
        assert client.register(SumModel(), "m", training_data=numbers(), trusted=True).version == 1


@pytest.mark.postgres
def test_an_empty_postgres_database_beside_artifacts_is_refused(home: Path, pg_url: str) -> None:
    with Berth(_settings(home, pg_url)) as client:
        client.register(SumModel(), "m", training_data=numbers(), trusted=True)
    _empty_postgres(pg_url)
    with pytest.raises(DamagedDatabaseError, match="has no Berth schema, but the artifact store"):
        Berth(_settings(home, pg_url))


def _empty_postgres(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


# -- rebuild -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def _snapshot(client: Berth) -> dict[str, object]:
    """Everything a user sees of the registry: versions with every field, what references
    resolve to, profiles, and the answers of every version."""
    sample = numbers(5, seed=9)
    versions = {}
    for model in client.list_models():
        for v in client.list_versions(model.name):
            versions[v.ref] = (
                v,
                client.get_profile(v.ref),
                client.load(v.ref).predict(sample)["prediction"].tolist(),
            )
    refs = ["alpha", "alpha@production", "alpha@latest", "beta", "beta@staging", "beta/3"]
    return {
        "models": [
            (m.name, m.description, m.versions, m.latest_version, m.aliases)
            for m in client.list_models()
        ],
        "versions": versions,
        "resolved": {r: client.get_version(r).ref for r in refs},
    }


def test_rebuild_restores_versions_numbers_aliases_and_answers(
    home: Path, backend: str | None
) -> None:
    settings = _settings(home, backend)
    with Berth(settings) as client:
        _register_some(client)
        before = _snapshot(client)
    url = settings.resolved_database_url()
    if backend is None:
        for file in home.glob("berth.db*"):
            file.unlink()
    else:
        _empty_postgres(backend)
    with pytest.raises(DamagedDatabaseError):
        Berth(settings)

    report = rebuild(url, _store(settings), actor="doctor")

    assert (report.models, report.versions, report.aliases) == (2, 5, 2)
    assert report.skipped == report.without_record == report.without_aliases == []
    with Berth(settings) as client:
        assert _snapshot(client) == before
        # Numbers are never handed out twice, even the deleted alpha/3's.
        assert (
            client.register(Scaled(4.0), "alpha", training_data=numbers(), trusted=True).version
            == 4
        )
        assert client.registry.audit_log(action="registry.restore")[0].details["versions"] == 5


def _store(settings: Settings) -> ArtifactStore:
    """The store a client of these settings uses, without a client (which refuses a lost
    database)."""
    return ArtifactStore(settings.resolved_artifact_root())


def test_rebuild_keeps_the_damaged_file_aside(home: Path) -> None:
    _registered_home(home)
    _truncate_to_half(_db_file(home))
    damaged = _db_file(home).read_bytes()
    settings = _settings(home, None)
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    assert [p.name.split(".damaged-")[0] for p in report.kept_aside] == ["berth.db"]
    assert report.kept_aside[0].read_bytes() == damaged
    with Berth(settings) as client:
        assert [v.version for v in client.list_versions("m")] == [1, 2, 3]


def test_rebuild_refuses_a_healthy_registry_unless_forced(home: Path) -> None:
    _registered_home(home)
    settings = _settings(home, None)
    with pytest.raises(ConflictError, match="opens and holds 1 model"):
        rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor", force=True)
    assert report.versions == 3
    assert len(report.kept_aside) >= 1


def test_a_version_whose_artifact_is_gone_is_reported_and_keeps_its_number(home: Path) -> None:
    settings = _settings(home, None)
    with Berth(settings) as client:
        kept = client.register(Scaled(1.0), "m", training_data=numbers(), trusted=True)
        lost = client.register(Scaled(2.0), "m", training_data=numbers(), trusted=True)
        client.store.delete(lost.digest)
    for file in home.glob("berth.db*"):
        file.unlink()
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    assert report.versions == 1
    assert report.skipped == [f"m/2 (artifact {lost.digest[:12]} is missing from the store)"]
    with Berth(settings) as client:
        assert [v.digest for v in client.list_versions("m")] == [kept.digest]
        assert client.register(Scaled(3.0), "m", training_data=numbers(), trusted=True).version == 3


def test_artifacts_registered_before_version_records_are_named_not_invented(home: Path) -> None:
    """What an older home can recover: nothing of a version whose record was never written
    (its model, number and signature were only in the database); the rebuild says so."""
    settings = _settings(home, None)
    with Berth(settings) as client:
        old = client.register(Scaled(1.0), "old", training_data=numbers(), trusted=True)
        client.register(Scaled(2.0), "new", training_data=numbers(), trusted=True)
    for file in (home / "artifacts" / "versions" / "old").iterdir():
        file.unlink()
    (home / "artifacts" / "versions" / "old").rmdir()
    for file in home.glob("berth.db*"):
        file.unlink()
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    assert report.versions == 1
    assert report.without_record == [old.digest]
    with Berth(settings) as client:
        assert [m.name for m in client.list_models()] == ["new"]


def test_write_records_makes_older_versions_recoverable(home: Path) -> None:
    from berth.registry.recovery import write_records

    settings = _settings(home, None)
    with Berth(settings) as client:
        client.register(Scaled(1.0), "old", training_data=numbers(), trusted=True)
        client.set_alias("old", "production", 1)
    records = home / "artifacts" / "versions" / "old"
    for file in records.iterdir():
        file.unlink()
    findings = {f.check: f for f in diagnose(settings.resolved_database_url(), _store(settings))}
    assert findings["records"].level == "warn"
    assert "old/1" in findings["records"].message
    assert write_records(settings.resolved_database_url(), _store(settings)) == 1
    for file in home.glob("berth.db*"):
        file.unlink()
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    assert (report.versions, report.aliases) == (1, 1)


# -- diagnose ------------------------------------------------------------------------------------


def test_diagnose_finds_each_kind_of_damage(home: Path) -> None:
    settings = _settings(home, None)
    with Berth(settings) as client:
        good = client.register(Scaled(1.0), "m", training_data=numbers(), trusted=True)
        bad = client.register(Scaled(2.0), "m", training_data=numbers(), trusted=True)
        url = settings.resolved_database_url()
        assert {f.level for f in diagnose(url, client.store)} == {"ok"}

        artifact = client.store.path(bad.digest) / "model.cloudpickle"
        artifact.write_bytes(artifact.read_bytes() + b"x")
        with client.store.staging() as stage:  # an orphan: sealed, never registered
            (stage / "f").write_bytes(b"orphan")
            orphan = client.store.commit(stage)
        leftover = client.store.root / "tmp" / "stage-dead"
        leftover.mkdir()
        (leftover.with_name("stage-dead.owner")).write_bytes(
            b'{"pid": %d, "host": "%s", "started": null}'
            % (_dead_pid(), os.uname().nodename.encode())
        )
        findings = {f.check: f for f in diagnose(url, client.store)}
    assert findings["database"].level == "ok"
    assert findings["artifacts"].level == "problem"
    assert (
        "m/2 (artifact file 'model.cloudpickle' fails its SHA-256 check"
        in findings["artifacts"].message
    )
    assert f"m/{good.version} " not in findings["artifacts"].message
    assert findings["orphans"].level == "warn"
    assert orphan.digest[:12] in findings["orphans"].message
    assert findings["staging"].level == "warn"
    assert "1 (0.0 MB) from processes that are gone" in findings["staging"].message


def test_diagnose_of_a_truncated_database_says_what_a_rebuild_would_restore(home: Path) -> None:
    _registered_home(home)
    _truncate_to_half(_db_file(home))
    settings = _settings(home, None)
    findings = diagnose(settings.resolved_database_url(), _store(settings))
    assert [(f.check, f.level) for f in findings] == [
        ("database", "problem"),
        ("records", "ok"),
        ("staging", "ok"),
    ]
    assert "truncated" in findings[0].message
    assert "would restore 3 version(s) of 1 model(s)" in findings[1].message


def _dead_pid() -> int:
    """A pid that was a process of ours and has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_unreadable_record_is_named_and_the_rest_restored(home: Path) -> None:
    _registered_home(home)
    records = home / "artifacts" / "versions" / "m"
    (records / "2.json").write_bytes(b'{"model": "m", "version": 2}')
    (records / "3.json").write_bytes(b"{half a reco")
    for file in home.glob("berth.db*"):
        file.unlink()
    settings = _settings(home, None)
    report = rebuild(settings.resolved_database_url(), _store(settings), actor="doctor")
    assert report.versions == 1
    assert [line.split(": ")[1] for line in report.unreadable] == [
        "lacks digest, flavor, signature, size_bytes",
        "unexpected character, expected a string key",
    ]
    with Berth(settings) as client:  # the lost versions' numbers stay taken
        assert client.register(Scaled(9.0), "m", training_data=numbers(), trusted=True).version == 4
