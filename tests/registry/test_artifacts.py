"""The content-addressed store: sealed folders, SHA-256 checks on every load, crash leftovers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.models import SumModel, numbers

from berth.app import Berth
from berth.errors import ArtifactIntegrityError
from berth.registry.artifacts import ArtifactStore


def _seal(store: ArtifactStore, files: dict[str, bytes]) -> str:
    with store.staging() as stage:
        for rel, data in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(data)
        return store.commit(stage).digest


def test_same_content_same_digest_and_one_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    a = _seal(store, {"model.bin": b"weights", "sub/config.json": b"{}"})
    b = _seal(store, {"sub/config.json": b"{}", "model.bin": b"weights"})
    assert a == b
    assert store.digests() == {a}
    assert store.verify(a) == store.path(a)
    assert _seal(store, {"model.bin": b"other"}) != a


def test_staging_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _seal(store, {"m": b"x"})

    def crash_while_saving() -> None:
        with store.staging() as stage:
            (stage / "m").write_bytes(b"half")
            raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError):
        crash_while_saving()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "model.bin").write_bytes(b"weightz"), "fails its SHA-256 check"),
        (lambda p: (p / "extra.py").write_bytes(b"import os"), "unexpected: \\['extra.py'\\]"),
        (lambda p: (p / "model.bin").unlink(), "missing: \\['model.bin'\\]"),
        (lambda p: (p / "MANIFEST.json").write_bytes(b"{}"), "manifest does not match"),
    ],
)
def test_tampering_is_detected(tmp_path: Path, damage, message: str) -> None:
    store = ArtifactStore(tmp_path)
    digest = _seal(store, {"model.bin": b"weights"})
    damage(store.path(digest))
    with pytest.raises(ArtifactIntegrityError, match=message):
        store.verify(digest)


def test_a_tampered_version_is_refused_naming_the_version(client: Berth) -> None:
    v = client.register(SumModel(), "summer", training_data=numbers(), trusted=True)
    artifact = client.store.path(v.digest) / "model.cloudpickle"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"model version summer/1: .*SHA-256"):
        client.load("summer/1")


def test_sweep_removes_only_old_leftovers(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    digest = _seal(store, {"m": b"x"})
    old = tmp_path / "tmp" / "stage-old"
    old.mkdir(parents=True)
    (old / "m").write_bytes(b"half-written")
    past = time.time() - 7200
    os.utime(old, (past, past))
    fresh = tmp_path / "tmp" / "stage-fresh"
    fresh.mkdir()
    assert store.sweep_tmp(older_than_s=3600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert store.verify(digest)
