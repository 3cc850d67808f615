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


def _leftover(
    store: ArtifactStore, name: str, owner: dict[str, object] | None, age_s: float
) -> Path:
    import orjson

    folder = store.root / "tmp" / name
    folder.mkdir(parents=True)
    (folder / "m").write_bytes(b"half-written")
    if owner is not None:
        folder.with_name(name + ".owner").write_bytes(orjson.dumps(owner))
    past = time.time() - age_s
    os.utime(folder, (past, past))
    return folder


def test_staging_owner_records_decide_what_goes_at_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from berth.registry.artifacts import Owner

    store = ArtifactStore(tmp_path)
    me = Owner.current()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    host = socket.gethostname()
    dead = _leftover(store, "stage-dead", {"pid": exited.pid, "host": host}, age_s=1)
    reused = _leftover(  # our pid, but a process that started at another time: not ours
        store, "stage-reused", {"pid": me.pid, "host": host, "started": (me.started or 0) + 1}, 1
    )
    live = _leftover(store, "stage-live", {"pid": me.pid, "host": host, "started": me.started}, 9e3)
    remote = _leftover(store, "stage-remote", {"pid": 1, "host": "elsewhere.invalid"}, age_s=1)
    remote_old = _leftover(store, "stage-remote-old", {"pid": 1, "host": "elsewhere.invalid"}, 9e3)
    states = {left.path.name: left.state for left in store.leftovers()}
    assert states == {
        "stage-dead": "gone",
        "stage-reused": "gone",
        "stage-live": "running",
        "stage-remote": "unknown",
        "stage-remote-old": "unknown",
    }
    assert store.sweep_tmp(older_than_s=3600) == 3
    assert [p.exists() for p in (dead, reused, live, remote, remote_old)] == [
        False,
        False,
        True,
        True,
        False,
    ]
    assert not dead.with_name("stage-dead.owner").exists()
    assert live.with_name("stage-live.owner").exists()


def test_the_owner_record_is_no_part_of_the_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with store.staging() as stage:
        (stage / "model.bin").write_bytes(b"weights")
        assert stage.with_name(stage.name + ".owner").exists()
        artifact = store.commit(stage)
    assert sorted(p.name for p in artifact.path.iterdir()) == ["MANIFEST.json", "model.bin"]
    assert list((tmp_path / "tmp").iterdir()) == []
