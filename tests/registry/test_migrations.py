"""Alembic migrations produce exactly the tables the code declares, on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from berth.app import Berth
from berth.registry.db import SCHEMA_HEAD, Database
from berth.registry.tables import Base


def test_migrated_schema_matches_the_models(any_client: Berth) -> None:
    with any_client.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


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
