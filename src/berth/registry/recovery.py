"""Checking a Berth home, and rebuilding a lost registry from the version records.

``diagnose`` looks without changing anything: the database opens and its schema is current,
every version's artifact is there and passes its SHA-256 check, every version has its record
beside the artifacts, which artifacts no version references, what interrupted writers left in
``tmp/``. ``rebuild`` moves a damaged SQLite file aside (renamed, never deleted), creates a fresh
database and restores the models, versions (under their own numbers) and aliases that the records
hold, through :meth:`Registry.restore`.

What a rebuild cannot bring back: artifacts registered before Berth wrote version records (their
model, number and signature were only in the database), alias moves after the last one recorded,
the audit history, batch jobs and schedules (those stay in the file kept aside).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import text

from berth.errors import ArtifactIntegrityError, BerthError, ConflictError
from berth.registry.artifacts import ArtifactStore
from berth.registry.db import SCHEMA_HEAD, DamagedDatabaseError, Database, check_sqlite_file
from berth.registry.service import Registry

Level = Literal["ok", "warn", "problem"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str


@dataclass
class RebuildReport:
    models: int = 0
    versions: int = 0
    aliases: int = 0
    kept_aside: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Versions whose record exists but whose artifact is missing or fails its check."""
    without_record: list[str] = field(default_factory=list)
    """Artifacts no version record names: registered before Berth wrote records."""
    without_aliases: list[str] = field(default_factory=list)
    """Models with no aliases record: their aliases (if any) are unknown."""
    unreadable: list[str] = field(default_factory=list)


def diagnose(url: str, store: ArtifactStore) -> list[Finding]:
    """Every check, in order; later checks that need the database are skipped when it fails."""
    findings: list[Finding] = []
    db = _open(url, store, findings)
    if db is None:
        findings.extend(_records_outlook(store))
    else:
        try:
            findings.extend(_check_versions(db, store))
        except BerthError as exc:  # damage past the pages the first checks read
            findings.append(Finding("database", "problem", str(exc)))
        finally:
            db.dispose()
    findings.append(_check_staging(store))
    return findings


def _open(url: str, store: ArtifactStore, findings: list[Finding]) -> Database | None:
    db = Database(url, migrate=False)
    label = db.label
    try:
        if db.sqlite_path is not None:
            state = check_sqlite_file(db.sqlite_path)
            if state != "ok":
                db.dispose()
                findings.append(_absent(label, state, store))
                return None
        revision = db.revision()
        if revision is None:
            db.dispose()
            findings.append(_absent(label, "has no Berth schema", store))
            return None
        if db.sqlite_path is not None:
            _quick_check(db)
    except BerthError as exc:
        db.dispose()
        findings.append(Finding("database", "problem", str(exc)))
        return None
    if revision == SCHEMA_HEAD:
        findings.append(Finding("database", "ok", f"{label} opens; schema {revision} (current)"))
    elif revision < SCHEMA_HEAD:
        findings.append(
            Finding(
                "database",
                "warn",
                f"{label} opens; schema {revision}, this Berth's is {SCHEMA_HEAD}: "
                "the next berth command migrates it",
            )
        )
    else:
        db.dispose()
        findings.append(
            Finding(
                "database",
                "problem",
                f"{label} has schema {revision}, newer than this Berth's {SCHEMA_HEAD}: "
                "upgrade Berth",
            )
        )
        return None
    return db


def _absent(label: str, state: str, store: ArtifactStore) -> Finding:
    held = len(store.digests())
    if not held and not store.versions.count():
        return Finding("database", "ok", f"{label} {state}: a new registry, nothing to check")
    return Finding(
        "database",
        "problem",
        f"{label} {state} while the artifact store holds {held} artifact(s): the registry was "
        "lost; `berth doctor --rebuild` rebuilds it from the version records",
    )


def _quick_check(db: Database) -> None:
    """SQLite's own check of every page (``quick_check``: b-trees, not index contents)."""
    with db.read() as s:
        answer = [str(r[0]) for r in s.execute(text("PRAGMA quick_check(5)"))]
    if answer != ["ok"]:
        raise DamagedDatabaseError(
            f"metadata database {db.label} is damaged ({'; '.join(answer)}): run "
            "`berth doctor --rebuild` to rebuild the registry from the artifacts"
        )


def _check_versions(db: Database, store: ArtifactStore) -> Iterator[Finding]:
    registry = Registry(db, store)
    versions = [v for m in registry.list_models() for v in registry.list_versions(m.name)]
    broken: dict[str, str] = {}
    for digest in sorted({v.digest for v in versions}):
        try:
            store.verify(digest)
        except ArtifactIntegrityError as exc:
            broken[digest] = str(exc).split(": ", 1)[-1]
    bad = [f"{v.ref} ({broken[v.digest]})" for v in versions if v.digest in broken]
    if bad:
        yield Finding(
            "artifacts",
            "problem",
            f"{len(bad)} of {len(versions)} version(s) fail: {', '.join(bad)}; re-register "
            "them from the original model, or delete them (berth models delete)",
        )
    else:
        yield Finding(
            "artifacts",
            "ok",
            f"{len(versions)} version(s), each artifact present and matching its SHA-256",
        )
    missing = [v.ref for v in versions if not store.versions.path(v.model, v.version).exists()]
    if missing:
        yield Finding(
            "records",
            "warn",
            f"{len(missing)} version(s) have no version record beside the artifacts "
            f"({_few(missing)}), so a rebuild could not restore them: "
            "`berth doctor --write-records` writes them",
        )
    else:
        yield Finding("records", "ok", "every version has its record beside the artifacts")
    referenced = {v.digest for v in versions}
    orphans = sorted(store.digests() - referenced)
    if orphans:
        size = sum(_folder_size(store.path(d)) for d in orphans)
        yield Finding(
            "orphans",
            "warn",
            f"{len(orphans)} artifact(s) ({_mb(size)}) referenced by no version "
            f"({_few([d[:12] for d in orphans])}): left by interrupted registrations; "
            "`berth gc` removes those older than an hour",
        )
    else:
        yield Finding("orphans", "ok", "no artifact without a version")


def _records_outlook(store: ArtifactStore) -> Iterator[Finding]:
    """With the database lost: what a rebuild would restore."""
    records, aliases, unreadable = store.versions.read()
    live = [r for r in records if not r.get("deleted_at")]
    models = {str(r["model"]) for r in live}
    named = {str(r["digest"]) for r in records if "digest" in r}
    unnamed = sorted(store.digests() - named)
    if not store.digests() and not records:
        return
    yield Finding(
        "records",
        "warn" if unnamed or unreadable else "ok",
        f"a rebuild would restore {len(live)} version(s) of {len(models)} model(s) and the "
        f"aliases of {len(set(aliases) & models)}"
        + (
            f"; {len(unnamed)} artifact(s) have no version record (registered before Berth "
            "wrote them) and cannot be restored as versions"
            if unnamed
            else ""
        )
        + (f"; unreadable: {_few(unreadable)}" if unreadable else ""),
    )


def _check_staging(store: ArtifactStore) -> Finding:
    left = store.leftovers()
    if not left:
        return Finding("staging", "ok", "no leftovers in the staging folder")
    parts = []
    for state, what in (
        ("gone", "from processes that are gone (`berth gc` removes them now)"),
        ("running", "of registrations still running (kept)"),
        ("unknown", "without a live owner on this host (`berth gc` removes them after an hour)"),
    ):
        group = [entry for entry in left if entry.state == state]
        if group:
            size = sum(entry.size_bytes() for entry in group)
            parts.append(f"{len(group)} ({_mb(size)}) {what}")
    level: Level = "ok" if all(entry.state == "running" for entry in left) else "warn"
    return Finding(
        "staging", level, f"{len(left)} entr(ies) in {store.root / 'tmp'}: " + "; ".join(parts)
    )


def write_records(url: str, store: ArtifactStore) -> int:
    """Write the missing version records from a healthy database (see
    :meth:`Registry.write_missing_records`)."""
    db = Database(url, artifacts=store)
    try:
        return Registry(db, store).write_missing_records()
    finally:
        db.dispose()


def rebuild(url: str, store: ArtifactStore, *, actor: str, force: bool = False) -> RebuildReport:
    """Rebuild the registry from the version records into a fresh database.

    SQLite: a damaged, empty or (with ``force``) healthy file is renamed to
    ``NAME.damaged-TIMESTAMP`` (with its ``-wal``/``-shm``), never deleted. Another backend: the
    database must hold no model (point the URL at a new database). Raises ``ConflictError`` for a
    healthy registry without ``force`` and for a non-empty database."""
    report = RebuildReport()
    db = Database(url, migrate=False)
    path = db.sqlite_path
    healthy = _holds_models(db)
    db.dispose()
    if healthy and not force:
        raise ConflictError(
            f"metadata database {db.label} opens and holds {healthy} model(s): nothing to "
            "rebuild; `berth doctor --rebuild --force` rebuilds it anyway (the file is kept "
            "aside)"
            if path is not None
            else f"metadata database {db.label} holds {healthy} model(s): a registry is rebuilt "
            "only into an empty database (point BERTH_DATABASE_URL at a new one)"
        )
    if path is not None and path.exists():
        report.kept_aside = _move_aside(path)
    records, aliases, report.unreadable = store.versions.read()
    skip: set[tuple[str, int]] = set()
    checked: dict[str, str | None] = {}
    for record in records:
        if record.get("deleted_at"):
            continue
        digest = str(record["digest"])
        if digest not in checked:
            try:
                store.verify(digest)
                checked[digest] = None
            except ArtifactIntegrityError as exc:
                checked[digest] = str(exc).split(": ", 1)[-1]
        if checked[digest] is not None:
            skip.add((str(record["model"]), int(record["version"])))
            report.skipped.append(f"{record['model']}/{record['version']} ({checked[digest]})")
    restorable = [r for r in records if (str(r["model"]), int(r["version"])) not in skip]
    models = {str(r["model"]) for r in restorable if not r.get("deleted_at")}
    report.without_aliases = sorted(models - set(aliases))
    named = {str(r["digest"]) for r in records if "digest" in r}
    report.without_record = sorted(store.digests() - named)
    fresh = Database(url)  # no artifact guard: this is the one place that rebuilds
    try:
        done = Registry(fresh, store).restore(
            [
                r if (str(r["model"]), int(r["version"])) not in skip else _numbered(r)
                for r in records
            ],
            aliases,
            actor=actor,
            details={
                "source": str(store.versions.root),
                "kept_aside": [str(p) for p in report.kept_aside],
                "skipped": report.skipped,
                "artifacts_without_record": len(report.without_record),
            },
        )
    finally:
        fresh.dispose()
    report.models, report.versions, report.aliases = (
        done["models"],
        done["versions"],
        done["aliases"],
    )
    return report


def _numbered(record: dict[str, Any]) -> dict[str, Any]:
    """A record that restores no version but keeps its number taken."""
    return {**record, "deleted_at": record.get("deleted_at") or "artifact unavailable"}


def _holds_models(db: Database) -> int:
    """How many models a database holds; 0 when it is damaged, empty or has no schema."""
    try:
        if db.sqlite_path is not None and check_sqlite_file(db.sqlite_path) != "ok":
            return 0
        if db.revision() is None:
            return 0
        with db.read() as s:
            return int(s.execute(text("SELECT count(*) FROM models")).scalar_one())
    except BerthError:
        return 0


def _move_aside(path: Path) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.damaged-{stamp}")
    moved = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            target = base.with_name(base.name + suffix)
            os.rename(source, target)
            moved.append(target)
    return moved


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
