"""The metadata database: engine set-up per backend, write transactions, migrations on open."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from berth.errors import InvalidInputError, MissingExtraError, UnavailableError

_MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0002"
"""The newest migration; a test checks it against the migrations folder. Knowing it here lets an
up-to-date database open without importing Alembic (a few hundred ms of every CLI call)."""
# Any constant works: it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x62657274


class Database:
    """An engine plus two session factories: one for reads, one whose transactions take the
    write lock up front (``BEGIN IMMEDIATE`` on SQLite), so that concurrent writers queue instead of
    failing half-way with "database is locked"."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self.dialect = self.engine.dialect.name
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(berth_write=True), expire_on_commit=False
        )
        if migrate:
            self.migrate()

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._translate(), self._reads() as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction that commits on success and rolls back on any error."""
        with self._translate(), self._writes() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise UnavailableError(
                f"metadata database {self.engine.url.render_as_string(hide_password=True)} "
                f"is unavailable: {exc.orig}"
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest migration; cheap when it is already there."""
        with self._translate():
            if self._revision() == SCHEMA_HEAD:
                return
            from alembic.runtime.migration import MigrationContext

            head = SCHEMA_HEAD
            with self.engine.execution_options(berth_write=True).begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                # Checked again under the lock: another process may have migrated meanwhile.
                if MigrationContext.configure(conn).get_current_revision() != head:
                    _upgrade(conn)

    def _revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except (OperationalError, ProgrammingError):
                return None  # a new database: no version table yet


def _upgrade(conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _create_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            return _sqlite_engine(url)
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise InvalidInputError(f"unsupported database URL {url!r}: {exc}") from exc
    except ArgumentError as exc:
        raise InvalidInputError(f"invalid database URL {url!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise MissingExtraError(exc.name or "psycopg", "postgres", f"database URL {url!r}") from exc


def _sqlite_engine(url: str) -> Engine:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own BEGIN defers locks and breaks SAVEPOINTs; we issue BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("berth_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
