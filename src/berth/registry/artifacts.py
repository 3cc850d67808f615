"""A content-addressed artifact store on a local folder.

An artifact is a folder of files (a flavor's saved model). Its address is the SHA-256 of a manifest
that lists every file's relative path, size and SHA-256, so one digest pins every byte. Writes go to
a staging folder under ``tmp/`` and are renamed into ``sha256/ab/cdef...`` only when complete and
flushed; nothing ever reads ``tmp/``, so a crash mid-write leaves nothing that a load would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from berth.errors import ArtifactIntegrityError, NotFoundError

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredArtifact:
    digest: str
    path: Path
    size_bytes: int


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._objects = root / "sha256"
        self._tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        return self._objects / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_dir()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh empty folder to save a model into; removed afterwards unless committed."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        stage = self._tmp / f"stage-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

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

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove what crashed writers left in ``tmp/``; returns how many entries went."""
        if not self._tmp.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        gone = 0
        for entry in self._tmp.iterdir():
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                gone += 1
        return gone


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
