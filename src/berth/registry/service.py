"""The registry service: every read and change of models, versions and aliases.

Each change of state is one function here that also writes its audit event in the same
transaction, so the audit log can never miss a change that happened or record one that did not.
Each also checks that the current principal (``access.current()``: a request's key or token,
the CLI's or the Python API's) has the right (:func:`audit_actor`), and the reads a route serves
require ``read``: so authorization holds for every entry point without a check per route.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.errors import (
    AliasNotFoundError,
    ConflictError,
    InvalidInputError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from berth.registry import access
from berth.registry.artifacts import ArtifactStore
from berth.registry.db import Database
from berth.registry.references import (
    LATEST,
    Reference,
    check_alias,
    check_model_name,
    parse_reference,
    pick_version,
)
from berth.registry.signature import Signature
from berth.registry.tables import (
    AliasRow,
    AuditRow,
    ModelRow,
    ProfileRow,
    VersionRow,
    utcnow,
    write_audit,
)

_RETRIES = 5
MAX_VERSION = 2**31 - 1

log = logging.getLogger("berth.registry")


def audit_actor(
    permission: access.Permission, subject: str | None = None, *, actor: str | None = None
) -> str:
    """Check that the current principal may do ``permission`` (raises 401/403) and return the
    name its audit event records: the principal's (a key's name, a token's subject). ``actor``
    is kept only for the local principal (the ``user`` setting, a rebuild's operator): a caller
    acting with a key cannot put another name in the log."""
    who = access.require(permission, subject)
    return actor if actor is not None and who.via == "local" else who.name


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    digest: str
    size_bytes: int
    flavor: str
    flavor_options: dict[str, Any]
    signature: Signature
    metrics: dict[str, Any]
    params: dict[str, Any]
    lineage: dict[str, Any]
    tags: dict[str, Any]
    description: str
    trusted: bool
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class ModelSummary:
    name: str
    description: str
    tags: dict[str, Any]
    versions: int
    latest_version: int | None
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


@dataclass(frozen=True)
class NewVersion:
    """Everything a version is made of, once its artifact is sealed in the store."""

    model: str
    digest: str
    size_bytes: int
    flavor: str
    signature: Signature
    flavor_options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    trusted: bool = False


class Registry:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self.db = db
        self.store = store

    # -- changes -----------------------------------------------------------------------------

    def create_version(self, new: NewVersion, *, actor: str | None = None) -> VersionInfo:
        """Insert the version row for an artifact already sealed in the store.

        The number comes from an atomic increment of the model's counter, so concurrent
        registrations of one model get distinct consecutive numbers on every backend.
        """
        actor = audit_actor("admin" if new.trusted else "register", new.model, actor=actor)
        check_model_name(new.model)
        if not self.store.exists(new.digest):
            raise InvalidInputError(f"artifact {new.digest[:12]} is not in the store")
        for attempt in range(_RETRIES):
            try:
                with self.db.write() as s:
                    model_id = self._ensure_model(s, new.model, new.description)
                    number = s.execute(
                        update(ModelRow)
                        .where(ModelRow.id == model_id)
                        .values(last_version=ModelRow.last_version + 1, updated_at=utcnow())
                        .returning(ModelRow.last_version)
                    ).scalar_one()
                    row = VersionRow(
                        model_id=model_id,
                        version=number,
                        digest=new.digest,
                        size_bytes=new.size_bytes,
                        flavor=new.flavor,
                        flavor_options=new.flavor_options,
                        signature=new.signature.to_dict(),
                        metrics=new.metrics,
                        params=new.params,
                        lineage=new.lineage,
                        tags=new.tags,
                        description=new.description,
                        trusted=new.trusted,
                        created_at=utcnow(),
                        created_by=actor,
                    )
                    s.add(row)
                    s.flush()
                    if new.profile is not None:
                        s.add(ProfileRow(version_id=row.id, profile=new.profile))
                    write_audit(
                        s,
                        actor,
                        "version.create",
                        f"{new.model}/{number}",
                        {"digest": new.digest, "flavor": new.flavor, "trusted": new.trusted},
                    )
                    info = _version_info(new.model, row, ())
                    model_description = s.scalar(
                        select(ModelRow.description).where(ModelRow.id == model_id)
                    )
                break
            except IntegrityError:
                # Two writers created the same new model at once; the loser retries and finds it.
                if attempt == _RETRIES - 1:
                    raise
        else:
            raise AssertionError("unreachable")
        self._keep_record(
            info.ref,
            lambda: self.store.versions.write(
                version_record(info, new.profile, model_description or "")
            ),
        )
        return info

    def set_alias(
        self, name: str, alias: str, version: int, *, actor: str | None = None
    ) -> int | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before, if any."""
        actor = audit_actor("alias", name, actor=actor)
        check_alias(alias)
        if alias == LATEST:
            raise InvalidInputError(f"alias {LATEST!r} is reserved: it always means the newest")
        with self.db.write() as s:
            model = _model(s, name)
            _version_row(s, model, version)
            row = s.get(AliasRow, (model.id, alias))
            previous = row.version if row else None
            if row is None:
                s.add(
                    AliasRow(
                        model_id=model.id,
                        alias=alias,
                        version=version,
                        updated_at=utcnow(),
                        updated_by=actor,
                    )
                )
            else:
                row.version, row.updated_at, row.updated_by = version, utcnow(), actor
            write_audit(s, actor, "alias.set", f"{name}@{alias}", {"from": previous, "to": version})
        self._record_aliases(name)
        return previous

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> int:
        actor = audit_actor("alias", name, actor=actor)
        with self.db.write() as s:
            model = _model(s, name)
            row = s.get(AliasRow, (model.id, alias))
            if row is None:
                raise AliasNotFoundError(name, alias, _aliases(s, model.id))
            previous = row.version
            s.delete(row)
            write_audit(s, actor, "alias.delete", f"{name}@{alias}", {"from": previous, "to": None})
        self._record_aliases(name)
        return previous

    def delete_version(self, name: str, version: int, *, actor: str | None = None) -> VersionInfo:
        """Delete a version; refused while an alias points at it. Its number is never reused."""
        actor = audit_actor("delete", name, actor=actor)
        with self.db.write() as s:
            model = _model(s, name)
            row = _version_row(s, model, version)
            pointing = sorted(a for a, v in _aliases(s, model.id).items() if v == version)
            if pointing:
                raise ConflictError(
                    f"{name}/{version} is still the target of alias(es) {', '.join(pointing)}; "
                    "move or delete them first"
                )
            info = _version_info(name, row, ())
            s.delete(row)
            write_audit(s, actor, "version.delete", f"{name}/{version}", {"digest": row.digest})
            shared = s.scalar(select(func.count()).where(VersionRow.digest == row.digest))
        self._keep_record(
            info.ref,
            lambda: self.store.versions.mark_deleted(name, version, utcnow().isoformat()),
        )
        if not shared and self.store.exists(info.digest):
            self.store.delete(info.digest)
        return info

    def restore(
        self,
        records: Sequence[Mapping[str, Any]],
        aliases: Mapping[str, Mapping[str, int]],
        *,
        actor: str | None = None,
        details: Mapping[str, Any],
    ) -> dict[str, int]:
        """Fill an empty registry from version records (see ``VersionRecords``): the models,
        each version under its own number, and the aliases whose version is restored. Records
        marked deleted restore no version but keep their number from being handed out again.
        One transaction with its audit event; refused unless the registry has no model.
        Needs the ``admin`` permission."""
        actor = audit_actor("admin", actor=actor)
        by_model: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            by_model.setdefault(str(record["model"]), []).append(record)
        restored = aliases_restored = 0
        with self.db.write() as s:
            held = s.scalar(select(func.count()).select_from(ModelRow))
            if held:
                raise ConflictError(
                    f"metadata database {self.db.label} already holds {held} model(s): a "
                    "registry is restored only into an empty database"
                )
            for name, group in sorted(by_model.items()):
                group = sorted(group, key=lambda r: int(r["version"]))
                live = [r for r in group if not r.get("deleted_at")]
                first = live[0] if live else group[0]
                created = _when(first.get("created_at"))
                model = ModelRow(
                    name=name,
                    description=str(first.get("model_description", "")),
                    tags={},
                    last_version=max(int(r["version"]) for r in group),
                    created_at=created,
                    updated_at=_when(group[-1].get("created_at")),
                )
                s.add(model)
                s.flush()
                numbers = set()
                for record in live:
                    row = _row_from_record(model.id, record)
                    s.add(row)
                    s.flush()
                    if record.get("profile") is not None:
                        s.add(ProfileRow(version_id=row.id, profile=record["profile"]))
                    numbers.add(row.version)
                    restored += 1
                for alias, version in sorted(aliases.get(name, {}).items()):
                    if version in numbers:
                        s.add(
                            AliasRow(
                                model_id=model.id,
                                alias=alias,
                                version=version,
                                updated_at=utcnow(),
                                updated_by=actor,
                            )
                        )
                        aliases_restored += 1
            write_audit(
                s,
                actor,
                "registry.restore",
                "registry",
                {**details, "versions": restored, "aliases": aliases_restored},
            )
        return {"models": len(by_model), "versions": restored, "aliases": aliases_restored}

    def write_missing_records(self) -> int:
        """Write the version record of every version that has none (registered before Berth
        wrote them), and every model's aliases; returns how many version records were written."""
        access.require("admin")
        written = 0
        for summary in self.list_models():
            for info in self.list_versions(summary.name):
                if not self.store.versions.path(info.model, info.version).exists():
                    profile = self.get_profile(info.model, info.version)
                    self.store.versions.write(version_record(info, profile, summary.description))
                    written += 1
            self.store.versions.write_aliases(summary.name, summary.aliases)
        return written

    def _keep_record(self, what: str, write: Any) -> None:
        """The database committed: a record that fails to write costs only a rebuild's view
        of this version, so it is logged (and ``berth doctor`` reports it), never raised."""
        try:
            write()
        except OSError as exc:
            log.warning(
                "%s: the version record beside the artifacts was not written (%s); "
                "`berth doctor --write-records` writes it",
                what,
                exc,
            )

    def _record_aliases(self, name: str) -> None:
        with self.db.read() as s:
            aliases = _aliases(s, _model(s, name).id)
        self._keep_record(
            f"{name} aliases", lambda: self.store.versions.write_aliases(name, aliases)
        )

    def collect_garbage(
        self, *, older_than_s: float = 3600.0, actor: str | None = None
    ) -> dict[str, int]:
        """Remove what crashed registrations left: staging folders, and sealed artifacts that no
        version references. Only entries older than ``older_than_s`` go, so a registration still
        between sealing its artifact and committing its row is never robbed."""
        actor = audit_actor("delete", actor=actor)
        staged = self.store.sweep_tmp(older_than_s)
        referenced = self.referenced_digests()
        orphans = [
            d for d in self.store.digests() - referenced if self.store.age_seconds(d) > older_than_s
        ]
        for digest in orphans:
            self.store.delete(digest)
        if staged or orphans:
            with self.db.write() as s:
                write_audit(
                    s,
                    actor,
                    "artifacts.collect",
                    "artifacts",
                    {"staging_removed": staged, "orphans_removed": sorted(orphans)},
                )
        return {"staging_removed": staged, "orphans_removed": len(orphans)}

    # -- reads -------------------------------------------------------------------------------

    def resolve(self, ref: str | Reference) -> VersionInfo:
        """The version a reference means, by the one rule of :func:`pick_version`."""
        access.require("read")
        reference = parse_reference(ref)
        with self.db.read() as s:
            model = _model(s, reference.name)
            aliases = _aliases(s, model.id)
            latest = None
            if reference.version is None:
                latest = s.scalar(
                    select(func.max(VersionRow.version)).where(VersionRow.model_id == model.id)
                )
            number = pick_version(reference, aliases, latest)
            row = _version_row(s, model, number)
            return _version_info(model.name, row, _aliases_of(aliases, number))

    def get_version(self, name: str, version: int) -> VersionInfo:
        return self.resolve(Reference(name, version=version))

    def get_profile(self, name: str, version: int) -> dict[str, Any] | None:
        access.require("read")
        with self.db.read() as s:
            row = _version_row(s, _model(s, name), version)
            return s.scalar(select(ProfileRow.profile).where(ProfileRow.version_id == row.id))

    def list_versions(
        self, name: str, *, tags: Mapping[str, Any] | None = None
    ) -> list[VersionInfo]:
        access.require("read")
        with self.db.read() as s:
            model = _model(s, name)
            aliases = _aliases(s, model.id)
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version)
            ).all()
            out = [_version_info(name, r, _aliases_of(aliases, r.version)) for r in rows]
        if tags:
            out = [v for v in out if all(v.tags.get(k) == val for k, val in tags.items())]
        return out

    def list_models(self, search: str | None = None) -> list[ModelSummary]:
        """All models with their version counts and aliases, in two queries whatever the size."""
        access.require("read")
        with self.db.read() as s:
            query = (
                select(ModelRow, func.count(VersionRow.id), func.max(VersionRow.version))
                .outerjoin(VersionRow, VersionRow.model_id == ModelRow.id)
                .group_by(ModelRow.id)
                .order_by(ModelRow.name)
            )
            if search:
                pattern = f"%{search.lower()}%"
                query = query.where(
                    func.lower(ModelRow.name).like(pattern)
                    | func.lower(ModelRow.description).like(pattern)
                )
            rows = s.execute(query).all()
            alias_rows = s.execute(
                select(AliasRow.model_id, AliasRow.alias, AliasRow.version)
            ).all()
        by_model: dict[int, dict[str, int]] = {}
        for model_id, alias, version in alias_rows:
            by_model.setdefault(model_id, {})[alias] = version
        return [
            ModelSummary(
                name=m.name,
                description=m.description,
                tags=m.tags,
                versions=count,
                latest_version=latest,
                aliases=dict(sorted(by_model.get(m.id, {}).items())),
                created_at=m.created_at,
                updated_at=m.updated_at,
            )
            for m, count, latest in rows
        ]

    def audit_log(self, subject_prefix: str = "", action: str | None = None) -> list[AuditEvent]:
        access.require("read")
        with self.db.read() as s:
            # The chain's order: ids are handed out before commit, seq when the event commits.
            query = select(AuditRow).order_by(AuditRow.seq.nulls_first(), AuditRow.id)
            if subject_prefix:
                query = query.where(AuditRow.subject.startswith(subject_prefix, autoescape=True))
            if action:
                query = query.where(AuditRow.action == action)
            return [
                AuditEvent(r.at, r.actor, r.action, r.subject, r.details) for r in s.scalars(query)
            ]

    def alias_history(self, name: str) -> list[AuditEvent]:
        """Every alias move of a model: who, when, from which version to which."""
        return [e for e in self.audit_log(f"{name}@") if e.action in ("alias.set", "alias.delete")]

    def referenced_digests(self) -> set[str]:
        with self.db.read() as s:
            return set(s.scalars(select(VersionRow.digest).distinct()))

    # -- helpers -----------------------------------------------------------------------------

    def _ensure_model(self, s: Session, name: str, description: str) -> int:
        model_id = s.scalar(select(ModelRow.id).where(ModelRow.name == name))
        if model_id is not None:
            return model_id
        existing = s.scalar(select(ModelRow.name).where(func.lower(ModelRow.name) == name.lower()))
        if existing is not None:
            raise ConflictError(
                f"model name {name!r} collides with the existing model {existing!r}: names that "
                f"differ only in case are one name; register under {existing!r} or choose "
                "another name"
            )
        with s.begin_nested():
            row = ModelRow(
                name=name,
                description=description,
                tags={},
                last_version=0,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            s.add(row)
            s.flush()
        return row.id


def _model(s: Session, name: str) -> ModelRow:
    row = s.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        known = s.scalars(select(ModelRow.name).order_by(ModelRow.name).limit(21)).all()
        raise ModelNotFoundError(name, known)
    return row


def _version_row(s: Session, model: ModelRow, version: int) -> VersionRow:
    row = None
    if 0 < version <= MAX_VERSION:  # beyond the column's range no row can match
        row = s.scalar(
            select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.version == version)
        )
    if row is None:
        known = s.scalars(
            select(VersionRow.version)
            .where(VersionRow.model_id == model.id)
            .order_by(VersionRow.version)
        ).all()
        raise VersionNotFoundError(model.name, version, known)
    return row


def _aliases(s: Session, model_id: int) -> dict[str, int]:
    rows = s.execute(select(AliasRow.alias, AliasRow.version).where(AliasRow.model_id == model_id))
    return {alias: version for alias, version in rows}


def _aliases_of(aliases: Mapping[str, int], version: int) -> tuple[str, ...]:
    return tuple(sorted(a for a, v in aliases.items() if v == version))


def version_record(
    info: VersionInfo, profile: Mapping[str, Any] | None, model_description: str
) -> dict[str, Any]:
    """What a version record holds: every column of the version, its profile, and its model's
    description (a model row holds nothing else a rebuild needs)."""
    return {
        "model": info.model,
        "version": info.version,
        "model_description": model_description,
        "digest": info.digest,
        "size_bytes": info.size_bytes,
        "flavor": info.flavor,
        "flavor_options": info.flavor_options,
        "signature": info.signature.to_dict(),
        "metrics": info.metrics,
        "params": info.params,
        "lineage": info.lineage,
        "tags": info.tags,
        "description": info.description,
        "trusted": info.trusted,
        "created_at": info.created_at.isoformat(),
        "created_by": info.created_by,
        "profile": dict(profile) if profile is not None else None,
    }


def _row_from_record(model_id: int, record: Mapping[str, Any]) -> VersionRow:
    return VersionRow(
        model_id=model_id,
        version=int(record["version"]),
        digest=str(record["digest"]),
        size_bytes=int(record["size_bytes"]),
        flavor=str(record["flavor"]),
        flavor_options=dict(record.get("flavor_options") or {}),
        signature=dict(record["signature"]),
        metrics=dict(record.get("metrics") or {}),
        params=dict(record.get("params") or {}),
        lineage=dict(record.get("lineage") or {}),
        tags=dict(record.get("tags") or {}),
        description=str(record.get("description", "")),
        trusted=bool(record.get("trusted", False)),
        created_at=_when(record.get("created_at")),
        created_by=str(record.get("created_by", "unknown")),
    )


def _when(value: object) -> datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is not None:
                return parsed
    return utcnow()


def _version_info(model: str, row: VersionRow, aliases: Iterable[str]) -> VersionInfo:
    return VersionInfo(
        model=model,
        version=row.version,
        digest=row.digest,
        size_bytes=row.size_bytes,
        flavor=row.flavor,
        flavor_options=row.flavor_options,
        signature=Signature.from_dict(row.signature),
        metrics=row.metrics,
        params=row.params,
        lineage=row.lineage,
        tags=row.tags,
        description=row.description,
        trusted=row.trusted,
        created_at=row.created_at,
        created_by=row.created_by,
        aliases=tuple(aliases),
    )
