"""The metadata database: engine set-up per backend, write transactions, migrations on open."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session, sessionmaker

from berth.errors import InvalidInputError, MissingExtraError, UnavailableError
from berth.registry.redaction import hide_password, scrub

if TYPE_CHECKING:
    from berth.registry.artifacts import ArtifactStore

_MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0004"
"""The newest migration; a test checks it against the migrations folder. Knowing it here lets an
up-to-date database open without importing Alembic (a few hundred ms of every CLI call)."""
# Any constant works: it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x62657274


REBUILD_HINT = (
    "run `berth doctor` to see what is wrong and `berth doctor --rebuild` to rebuild the "
    "registry from the artifacts (the damaged file is kept aside)"
)


class DamagedDatabaseError(UnavailableError):
    """The metadata database is damaged or lost: unreadable, truncated, or empty beside an
    artifact store that still holds versions. Never repaired silently: re-creating it empty would
    restart version numbers at 1 while the old artifacts remain."""


class Database:
    """An engine plus two session factories: one for reads, one whose transactions take the
    write lock up front (``BEGIN IMMEDIATE`` on SQLite), so that concurrent writers queue instead of
    failing half-way with "database is locked".

    ``artifacts``: the store this database indexes. Given, a database without Berth's schema (a
    missing or zero-byte SQLite file, an empty PostgreSQL database) is created only while the
    store holds no artifact; otherwise :class:`DamagedDatabaseError` says how to recover.
    """

    def __init__(
        self, url: str, *, migrate: bool = True, artifacts: ArtifactStore | None = None
    ) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self.dialect = self.engine.dialect.name
        self.sqlite_path = sqlite_file(url)
        self._artifacts = artifacts
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(berth_write=True), expire_on_commit=False
        )
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.engine.dispose()  # no pooled connection outlives a refused open
                raise

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

    @property
    def label(self) -> str:
        """The database as a message names it: the file on SQLite, the URL without password."""
        if self.sqlite_path is not None:
            return str(self.sqlite_path)
        return self.engine.url.render_as_string(hide_password=True)

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            if _is_corruption(exc):
                raise DamagedDatabaseError(
                    f"metadata database {self.label} is damaged ({exc.orig}): {REBUILD_HINT}"
                ) from exc
            raise UnavailableError(
                scrub(f"metadata database {self.label} is unavailable: {exc.orig}", [self.url])
            ) from exc
        except IntegrityError:
            raise  # a constraint doing its job: the caller decides what it means
        except DatabaseError as exc:
            # sqlite3.DatabaseError itself: "file is not a database", "database disk image is
            # malformed"; nothing a retry or the user's input can change.
            raise DamagedDatabaseError(
                f"metadata database {self.label} is damaged ({exc.orig}): {REBUILD_HINT}"
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest migration; cheap when it is already there.

        Refuses (:class:`DamagedDatabaseError`) a damaged SQLite file, and a database without
        the schema while the artifact store holds artifacts (see the class docstring)."""
        if self.sqlite_path is not None:
            state = check_sqlite_file(self.sqlite_path)
            if state != "ok":
                self._refuse_new(state)  # before connecting: a connection creates the file
        with self._translate():
            revision = self._revision()
            if revision == SCHEMA_HEAD:
                return
            if revision is None and not self._has_tables():
                self._refuse_new("has no Berth schema")
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

    def revision(self) -> str | None:
        """The schema's migration, None for a database without Berth's schema."""
        with self._translate():
            return self._revision()

    def _revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except (OperationalError, ProgrammingError) as exc:
                if _is_corruption(exc):
                    raise
                return None  # a new database: no version table yet

    def _has_tables(self) -> bool:
        with self.engine.connect() as conn:
            return "models" in inspect(conn).get_table_names()

    def _refuse_new(self, state: str) -> None:
        if self._artifacts is None:
            return
        held = len(self._artifacts.digests()) + self._artifacts.versions.count()
        if not held:
            return
        raise DamagedDatabaseError(
            f"metadata database {self.label} {state}, but the artifact store "
            f"{self._artifacts.root} holds registered artifacts: the registry was lost, not "
            "new (a new one would number versions from 1 again). Rebuild it from the artifacts "
            "with `berth doctor --rebuild`, or use another BERTH_HOME (or BERTH_ARTIFACT_ROOT) "
            "for a new registry"
        )


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another backend or an in-memory database."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def check_sqlite_file(path: Path) -> str:
    """``"ok"``, ``"is missing"`` or ``"is empty (0 bytes)"``; raises
    :class:`DamagedDatabaseError` for a file that is not a SQLite database or was truncated.

    The truncation check reads the header's page count (valid when its "version-valid-for"
    field matches the change counter) against the file's size: SQLite itself would open a
    half-truncated file and fail on the first page past the end, or answer from the pages it
    still has. Skipped while a write-ahead log holds pages (a checkpoint may be under way)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size == 0:
        return "is empty (0 bytes)"
    if _CONNECTED[_key(path)] > 0:
        # Never open a file SQLite has open in this process: closing any descriptor of it
        # drops every POSIX lock the process holds on it (SQLite's among them), so another
        # process took itself for the last user and deleted the write-ahead log this one still
        # read: a server then answered from a stale snapshot forever (alias moves ignored).
        return "ok"
    with path.open("rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_HEADER):
        raise DamagedDatabaseError(
            f"metadata database {path} is not a SQLite database ({size} bytes, no SQLite "
            f"header): {REBUILD_HINT}"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter = header[24:28]
    pages = int.from_bytes(header[28:32], "big")
    expected = pages * page_size
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if pages and header[92:96] == change_counter and size < expected and not wal_pending:
        raise DamagedDatabaseError(
            f"metadata database {path} is damaged (truncated: {size} of {expected} bytes): "
            f"{REBUILD_HINT}"
        )
    return "ok"


def _is_corruption(exc: DatabaseError) -> bool:
    """SQLite reports some damage as an OperationalError; none of these is transient."""
    text_ = str(exc.orig).lower()
    return any(mark in text_ for mark in ("malformed", "not a database", "corrupt"))


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
        message = f"unsupported database URL {hide_password(url)!r}: {exc}"
        raise InvalidInputError(scrub(message, [url])) from exc
    except ArgumentError as exc:
        message = f"invalid database URL {hide_password(url)!r}: {exc}"
        raise InvalidInputError(scrub(message, [url])) from exc
    except ModuleNotFoundError as exc:
        shown = f"database URL {hide_password(url)!r}"
        raise MissingExtraError(exc.name or "psycopg", "postgres", shown) from exc


_CONNECTED: collections.Counter[str] = collections.Counter()
"""Open SQLite connections of this process, by file (see ``check_sqlite_file``)."""


def _key(path: Path) -> str:
    return str(path.resolve())


def _sqlite_engine(url: str) -> Engine:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        if path is not None:
            _CONNECTED[_key(path)] += 1
        # pysqlite's own BEGIN defers locks and breaks SAVEPOINTs; we issue BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "close")
    @event.listens_for(engine, "close_detached")
    def _on_close(_dbapi_conn: Any, *_args: Any) -> None:
        if path is not None:
            _CONNECTED[_key(path)] -= 1

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("berth_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
