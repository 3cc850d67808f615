"""A batch job killed with SIGKILL half-way, then run again with the same command: the output is
the uninterrupted run's, no row lost and none twice, in the output and in the records."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.batch.data import write_parquet
from tests.models import SlowSum

from berth.app import Berth
from berth.runtime.record_reader import RecordReader

ROOT = Path(__file__).resolve().parents[2]
ROWS, CHUNK = 1000, 25  # 40 chunks


@pytest.fixture
def slow(client: Berth, tmp_path: Path) -> Path:
    """``slow`` sums a and b in 0.1 s a chunk; returns its input (id, a, b)."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"id": np.arange(ROWS), "a": rng.random(ROWS), "b": rng.random(ROWS)})
    client.register(SlowSum(0.1), "slow", training_data=frame[["a", "b"]], trusted=True)
    return write_parquet(frame, tmp_path / "in.parquet", row_group_size=100)


def _command(home: Path, source: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "BERTH_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("BERTH_DATABASE_URL", None)
    code = "from berth.cli.main import main; main()"
    args = ["batch", "run", "slow", "-i", str(source), "-o", str(out), "-p", "id"]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args, "--chunk-rows", str(CHUNK)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _parts(home: Path) -> int:
    return len(list((home / "batch").glob("*/parts/part-*")))


def _kill_after(proc: subprocess.Popen[str], home: Path, parts: int) -> None:
    deadline = time.monotonic() + 60
    while _parts(home) < parts:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def _check(client: Berth, home: Path, source: Path, out: Path, attempts: int) -> None:
    job = client.jobs.recent()[0]
    assert (job.status, job.rows, job.errors, job.attempts) == ("succeeded", ROWS, 0, attempts)
    result = pd.read_parquet(out)
    reference = pd.read_parquet(source)
    assert result["id"].tolist() == reference["id"].tolist()  # every row once, in order
    np.testing.assert_array_equal(
        result["prediction"].to_numpy(), (reference["a"] + reference["b"]).to_numpy()
    )
    assert result["prediction_id"].tolist() == [f"{job.id}-{i}" for i in range(ROWS)]
    records = RecordReader(home / "records").read("slow").column("prediction_id").to_pylist()
    assert sorted(records) == sorted(result["prediction_id"])  # no record twice, none lost
    assert not (home / "batch" / job.id).exists()


def test_kill_9_then_the_same_command_finishes_the_job(
    client: Berth, home: Path, tmp_path: Path, slow: Path
) -> None:
    out = tmp_path / "scores.parquet"
    _kill_after(_command(home, slow, out), home, parts=5)
    assert not out.exists()  # nothing half-written where users look
    killed = client.jobs.recent()[0]
    assert killed.status == "running"  # as the dead process left it

    _finish(_command(home, slow, out))
    _check(client, home, slow, out, attempts=2)

    uninterrupted = tmp_path / "uninterrupted.parquet"
    _finish(_command(home, slow, uninterrupted))
    pd.testing.assert_frame_equal(
        pd.read_parquet(out).drop(columns=["prediction_id"]),
        pd.read_parquet(uninterrupted).drop(columns=["prediction_id"]),
    )


@pytest.mark.slow
def test_repeated_kills_at_random_points(
    client: Berth, home: Path, tmp_path: Path, slow: Path
) -> None:
    out = tmp_path / "scores.parquet"
    chosen = random.Random(11)
    reached = 0
    for _ in range(4):
        reached = chosen.randint(reached + 1, reached + 8)
        _kill_after(_command(home, slow, out), home, parts=reached)
    _finish(_command(home, slow, out))
    _check(client, home, slow, out, attempts=5)
