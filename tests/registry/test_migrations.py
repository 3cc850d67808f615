"""Alembic migrations produce exactly the tables the code declares, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

import berth.registry.db as db_module
from berth.app import Berth
from berth.errors import ConflictError
from berth.registry.db import SCHEMA_HEAD, Database
from berth.registry.tables import Base


# SQLite's reflection skips expression indexes (uq_models_name_lower), so the comparison cannot
# see it there; test_names_are_unique_without_case_in_the_database checks that it exists.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_migrated_schema_matches_the_models(any_client: Berth) -> None:
    with any_client.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_names_are_unique_without_case_in_the_database(any_client: Berth) -> None:
    """Below the service's check: a writer that skipped it still cannot add the twin."""
    insert = text(
        "INSERT INTO models (name, description, tags, last_version, created_at, updated_at) "
        "VALUES (:n, '', '{}', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    with any_client.db.engine.begin() as conn:
        conn.execute(insert, {"n": "credit-risk"})
    with pytest.raises(IntegrityError), any_client.db.engine.begin() as conn:
        conn.execute(insert, {"n": "Credit-Risk"})
    with any_client.db.engine.begin() as conn:
        conn.execute(insert, {"n": "credit-risk-2"})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, home: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'old.db'}"


def _at_0002(url: str, names: list[str]) -> None:
    """A database as Berth before 0003 left it, holding models of these names."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(db_module.__file__).parent / "migrations"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        for name in names:
            conn.execute(
                text(
                    "INSERT INTO models (name, description, tags, last_version, created_at, "
                    "updated_at) VALUES (:n, '', '{}', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"n": name},
            )
    engine.dispose()


def test_0003_upgrades_a_registry_whose_names_differ_in_more_than_case(url: str) -> None:
    _at_0002(url, ["credit-risk", "sentiment"])
    db = Database(url)
    assert db.revision() == SCHEMA_HEAD
    if db.dialect == "sqlite":  # its reflection skips expression indexes: ask the catalogue
        with db.engine.connect() as conn:
            query = text("SELECT name FROM sqlite_master WHERE type = 'index'")
            indexes = set(conn.execute(query).scalars())
    else:
        indexes = {str(i["name"]) for i in inspect(db.engine).get_indexes("models")}
    assert "uq_models_name_lower" in indexes
    db.dispose()


def test_0003_refuses_names_that_already_collide_naming_them(url: str) -> None:
    _at_0002(url, ["credit-risk", "Credit-Risk", "other"])
    with pytest.raises(
        ConflictError, match=r"'credit-risk', 'Credit-Risk'|'Credit-Risk', 'credit-risk'"
    ):
        Database(url)
    db = Database(url, migrate=False)
    assert db.revision() == "0002"  # the failed upgrade changed nothing
    db.dispose()


def test_migrating_twice_is_a_no_op(home: Path) -> None:
    url = f"sqlite:///{home / 'twice.db'}"
    Database(url).dispose()
    db = Database(url)
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == SCHEMA_HEAD
    assert set(inspect(db.engine).get_table_names()) >= {
        "models",
        "versions",
        "version_profiles",
        "aliases",
        "audit_events",
        "batch_jobs",
        "batch_schedules",
        "alembic_version",
    }
    db.dispose()


def test_the_code_knows_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    import berth.registry.db as db

    folder = Path(db.__file__).parent / "migrations"
    assert ScriptDirectory(str(folder)).get_current_head() == db.SCHEMA_HEAD
