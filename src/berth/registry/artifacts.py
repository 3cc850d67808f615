"""A content-addressed artifact store on a local folder.

An artifact is a folder of files (a flavor's saved model). Its address is the SHA-256 of a manifest
that lists every file's relative path, size and SHA-256, so one digest pins every byte. Writes go to
a staging folder under ``tmp/`` and are renamed into ``sha256/ab/cdef...`` only when complete and
flushed; nothing ever reads ``tmp/``, so a crash mid-write leaves nothing that a load would trust.
Each staging folder has an owner record beside it (``stage-….owner``: pid, host, process start)
so that ``berth gc`` can remove a dead registration's leftovers at once and keep a live one's.

One artifact can serve several versions (the same bytes registered twice share it), so what a
version *is* (model, number, signature, metrics, lineage, profile) cannot live in the artifact's
hashed manifest, and its number is only known once the database hands it out. It is written,
after the database commit, to a version record beside the store (:class:`VersionRecords`,
``versions/MODEL/N.json``), with each model's aliases: enough to rebuild a lost registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from berth.errors import ArtifactIntegrityError, NotFoundError

if TYPE_CHECKING:
    from berth.registry.signing import SignatureCheck

MANIFEST = "MANIFEST.json"
OWNER_SUFFIX = ".owner"
RECORD_FORMAT = 1
_CHUNK = 1 << 20

OwnerState = Literal["running", "gone", "unknown"]


@dataclass(frozen=True)
class Owner:
    """The process that made a staging folder. ``started`` (the process's start time in clock
    ticks since boot, Linux) tells a pid the kernel reused for another process apart."""

    pid: int
    host: str
    started: int | None = None

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), socket.gethostname(), _process_start(os.getpid()))

    def state(self) -> OwnerState:
        """``gone`` only when this host can tell: same host and the pid is not that process."""
        if self.host != socket.gethostname():
            return "unknown"
        if not _pid_running(self.pid):
            return "gone"
        if self.started is not None and _process_start(self.pid) not in (None, self.started):
            return "gone"  # the pid now belongs to another process
        return "running"


@dataclass(frozen=True)
class Leftover:
    """An entry of ``tmp/``: what an interrupted writer left, or a live writer's work."""

    path: Path
    owner: Owner | None
    state: OwnerState
    age_s: float

    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class StoredArtifact:
    digest: str
    path: Path
    size_bytes: int


class ArtifactStore:
    """``public_key`` (an ed25519 PEM file) makes :attr:`signatures` check, before each load,
    that a version is signed with its private key (see :mod:`berth.registry.signing`)."""

    def __init__(self, root: Path, public_key: Path | None = None) -> None:
        self.root = root
        self._objects = root / "sha256"
        self._tmp = root / "tmp"
        self.versions = VersionRecords(root / "versions", self._tmp)
        self.signatures: SignatureCheck | None = None
        if public_key is not None:
            from berth.registry.signing import SignatureCheck

            self.signatures = SignatureCheck(public_key, self)

    def manifest(self, digest: str) -> bytes:
        """The manifest of a stored artifact (check it with :meth:`verify` first)."""
        try:
            return (self.path(digest) / MANIFEST).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactIntegrityError(f"artifact {digest[:12]}: manifest is missing") from exc

    def signature_path(self, model: str, version: int) -> Path:
        """Where a version's signature lives: beside the artifacts, not in the sealed folder."""
        return self.root / "signatures" / model / f"{version}.json"

    def write_file(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` under the store whole or not at all (``tmp/``, then a
        rename)."""
        _replace(self._tmp, target, data)

    def path(self, digest: str) -> Path:
        return self._objects / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_dir()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh empty folder to save a model into; removed afterwards unless committed.

        Its owner record is written first, so no sweep ever sees this folder without it."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        stage = self._tmp / f"stage-{uuid.uuid4().hex}"
        owner = stage.with_name(stage.name + OWNER_SUFFIX)
        me = Owner.current()
        owner.write_bytes(orjson.dumps({"pid": me.pid, "host": me.host, "started": me.started}))
        stage.mkdir()
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            owner.unlink(missing_ok=True)

    def commit(self, stage: Path) -> StoredArtifact:
        """Seal a staged folder: hash it, write its manifest, flush, and rename it into place."""
        if (stage / MANIFEST).exists():
            raise ValueError(f"{MANIFEST} is a reserved file name in an artifact")
        files = {rel: _describe(stage / rel) for rel in _walk(stage)}
        manifest = orjson.dumps({"files": files}, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(manifest).hexdigest()
        (stage / MANIFEST).write_bytes(manifest)
        for rel in [*files, MANIFEST]:
            fsync_path(stage / rel)
        size = sum(int(str(f["size"])) for f in files.values())
        target = self.path(digest)
        if target.is_dir():
            self.verify(digest)
            return StoredArtifact(digest, target, size)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            stage.rename(target)  # the staging context's clean-up then finds nothing to remove
        except OSError:
            # Another writer stored the same content first: theirs is as good as ours.
            if not target.is_dir():
                raise
        fsync_folder(target.parent)
        return StoredArtifact(digest, target, size)

    def verify(self, digest: str, *, label: str | None = None) -> Path:
        """Check every byte against the digest; return the folder to load from."""
        what = label or f"artifact {digest[:12]}"
        folder = self.path(digest)
        if not folder.is_dir():
            raise ArtifactIntegrityError(
                f"{what}: artifact {digest[:12]} is missing from the store"
            )
        try:
            manifest = (folder / MANIFEST).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactIntegrityError(f"{what}: artifact manifest is missing") from exc
        if hashlib.sha256(manifest).hexdigest() != digest:
            raise ArtifactIntegrityError(f"{what}: artifact manifest does not match its digest")
        expected: dict[str, dict[str, object]] = orjson.loads(manifest)["files"]
        present = set(_walk(folder)) - {MANIFEST}
        if present != set(expected):
            extra = sorted(present - set(expected))
            missing = sorted(set(expected) - present)
            raise ArtifactIntegrityError(
                f"{what}: artifact files changed (unexpected: {extra or 'none'}; "
                f"missing: {missing or 'none'})"
            )
        for rel, meta in expected.items():
            if _describe(folder / rel) != meta:
                raise ArtifactIntegrityError(
                    f"{what}: artifact file {rel!r} fails its SHA-256 check (tampered or corrupt)"
                )
        return folder

    def age_seconds(self, digest: str) -> float:
        return time.time() - (self.path(digest) / MANIFEST).stat().st_mtime

    def delete(self, digest: str) -> None:
        folder = self.path(digest)
        if not folder.is_dir():
            raise NotFoundError(f"artifact {digest[:12]} is not in the store")
        doomed = self._tmp / f"deleted-{uuid.uuid4().hex}"
        self._tmp.mkdir(parents=True, exist_ok=True)
        folder.rename(doomed)  # atomic: a reader sees the whole artifact or none
        shutil.rmtree(doomed, ignore_errors=True)

    def digests(self) -> set[str]:
        if not self._objects.is_dir():
            return set()
        return {
            prefix.name + rest.name
            for prefix in self._objects.iterdir()
            for rest in prefix.iterdir()
            if rest.is_dir()
        }

    def leftovers(self) -> list[Leftover]:
        """Every staging folder and stray file in ``tmp/`` (owner records aside), with the
        state of its owner: ``unknown`` when it has no record or ran on another host."""
        if not self._tmp.is_dir():
            return []
        now = time.time()
        out = []
        for entry in sorted(self._tmp.iterdir()):
            if entry.name.endswith(OWNER_SUFFIX):
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue  # its writer finished meanwhile
            owner = _read_owner(entry.with_name(entry.name + OWNER_SUFFIX))
            state: OwnerState = owner.state() if owner else "unknown"
            out.append(Leftover(entry, owner, state, age))
        return out

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove what crashed writers left in ``tmp/``; returns how many entries went.

        A leftover whose owner is gone (same host, process not running) goes at once; one whose
        owner runs stays whatever its age (a long save); one without an owner record (older
        Berth, a deleted artifact's remains) or from another host goes past ``older_than_s``."""
        gone = 0
        for left in self.leftovers():
            if left.state == "gone" or (left.state == "unknown" and left.age_s > older_than_s):
                if left.path.is_dir():
                    shutil.rmtree(left.path, ignore_errors=True)
                else:
                    left.path.unlink(missing_ok=True)
                left.path.with_name(left.path.name + OWNER_SUFFIX).unlink(missing_ok=True)
                gone += 1
        self._sweep_owner_records()
        return gone

    def _sweep_owner_records(self) -> None:
        """Owner records whose folder is gone (a crash between the two), once the owner is."""
        for record in self._tmp.glob(f"*{OWNER_SUFFIX}"):
            folder = record.with_name(record.name.removesuffix(OWNER_SUFFIX))
            owner = _read_owner(record)
            if not folder.exists() and (owner is None or owner.state() == "gone"):
                record.unlink(missing_ok=True)


class VersionRecords:
    """What each version is, on disk beside the artifacts: ``versions/MODEL/N.json`` (written
    after the database commit, marked ``deleted_at`` when the version is deleted, so a number is
    never handed out twice) and ``versions/MODEL/aliases.json`` (the model's aliases after its
    latest move). The database stays the truth; these are what ``berth doctor --rebuild`` reads
    when it is lost. Each file is written to ``tmp/`` and renamed into place."""

    ALIASES = "aliases.json"

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self._tmp = tmp

    def path(self, model: str, version: int) -> Path:
        return self.root / model / f"{version}.json"

    def write(self, record: Mapping[str, Any]) -> None:
        body = {"format": RECORD_FORMAT, **record}
        self._replace(self.path(str(record["model"]), int(record["version"])), body)

    def mark_deleted(self, model: str, version: int, at: str) -> None:
        path = self.path(model, version)
        try:
            record = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            record = {"format": RECORD_FORMAT, "model": model, "version": version}
        record["deleted_at"] = at
        self._replace(path, record)

    def write_aliases(self, model: str, aliases: Mapping[str, int]) -> None:
        self._replace(self.root / model / self.ALIASES, {"aliases": dict(sorted(aliases.items()))})

    def count(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for _ in self.root.glob("*/[0-9]*.json"))

    def read(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]], list[str]]:
        """Every version record, every model's aliases, and the files that could not be read
        (named, with why)."""
        records: list[dict[str, Any]] = []
        aliases: dict[str, dict[str, int]] = {}
        unreadable: list[str] = []
        if not self.root.is_dir():
            return records, aliases, unreadable
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for file in sorted(folder.glob("*.json")):
                problem = None
                try:
                    data = orjson.loads(file.read_bytes())
                except (OSError, orjson.JSONDecodeError) as exc:
                    data, problem = {}, str(exc)
                if not isinstance(data, dict):
                    data, problem = {}, "not a JSON object"
                if file.name == self.ALIASES:
                    if problem is None:
                        try:
                            given = data["aliases"].items()
                            aliases[folder.name] = {str(k): int(v) for k, v in given}
                            continue
                        except (AttributeError, KeyError, TypeError, ValueError):
                            problem = "not an aliases record"
                elif problem is None and (
                    data.get("model") != folder.name or data.get("version") != _number(file)
                ):
                    problem = f"not the record of {folder.name}/{file.stem}"
                elif problem is None and not data.get("deleted_at") and not set(data) >= _REQUIRED:
                    problem = f"lacks {', '.join(sorted(_REQUIRED - set(data)))}"
                if problem is None:
                    records.append(data)
                    continue
                unreadable.append(f"{file}: {problem}")
                number = _number(file)
                if number is not None:  # the version is lost, its number stays taken
                    records.append(
                        {"model": folder.name, "version": number, "deleted_at": "unreadable"}
                    )
        return records, aliases, unreadable

    def _replace(self, target: Path, body: Mapping[str, Any]) -> None:
        _replace(self._tmp, target, orjson.dumps(dict(body), option=orjson.OPT_SORT_KEYS))


def _replace(tmp: Path, target: Path, data: bytes) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = tmp / f"record-{uuid.uuid4().hex}.json"
    temp.write_bytes(data)
    fsync_path(temp)
    os.replace(temp, target)
    fsync_folder(target.parent)


_REQUIRED = {"digest", "size_bytes", "flavor", "signature"}
"""What a version cannot be restored without; the rest has defaults."""


def _number(file: Path) -> int | None:
    return int(file.stem) if file.stem.isdigit() else None


def _read_owner(path: Path) -> Owner | None:
    try:
        data = orjson.loads(path.read_bytes())
        return Owner(int(data["pid"]), str(data["host"]), data.get("started"))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return _proc_state(pid) != "Z"  # a zombie has exited: gone all the same


def _proc_state(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _process_start(pid: int) -> int | None:
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of /proc/PID/stat
    except (IndexError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _walk(folder: Path) -> Iterator[str]:
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            yield (Path(dirpath) / name).relative_to(folder).as_posix()


def _describe(path: Path) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}


def fsync_path(path: Path) -> None:
    """Make a written file (or a folder's entries) durable before anything depends on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: Path) -> None:
    """A folder's entries (a rename into it) on disk; where a file system cannot, as good as
    it gets."""
    with contextlib.suppress(OSError):
        fsync_path(path)
