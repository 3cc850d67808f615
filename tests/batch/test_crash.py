"""A batch job killed with SIGKILL half-way, then run again with the same command: the output is
the uninterrupted run's, no row lost and none twice, in the output and in the records."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from tests.batch.data import write_parquet
from tests.cli.test_cli import CLEAN_ENV
from tests.models import SlowSum
from typer.testing import CliRunner

from berth.app import Berth
from berth.cli.main import app
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
    env = {**os.environ, "BERTH_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
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
    assert killed.status == "interrupted"  # its row says running: its process is gone
    assert "is gone" in killed.message
    _interrupted_in_list_and_show(home, killed.id)

    _finish(_command(home, slow, out))
    _check(client, home, slow, out, attempts=2)

    uninterrupted = tmp_path / "uninterrupted.parquet"
    _finish(_command(home, slow, uninterrupted))
    pd.testing.assert_frame_equal(
        pd.read_parquet(out).drop(columns=["prediction_id"]),
        pd.read_parquet(uninterrupted).drop(columns=["prediction_id"]),
    )


def _interrupted_in_list_and_show(home: Path, job_id: str) -> None:
    cli = CliRunner(env=CLEAN_ENV)

    def run(*args: str) -> str:
        result = cli.invoke(app, ["--home", str(home), "batch", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    (row,) = [line for line in run("list").splitlines() if job_id in line]
    assert "interrupted" in row
    assert "running" not in row
    assert job_id in run("list", "--status", "interrupted")
    assert job_id not in run("list", "--status", "running")
    shown = run("show", job_id)
    assert "interrupted" in shown
    assert "(gone)" in shown
    assert json.loads(run("show", job_id, "--json"))["status"] == "interrupted"


def test_a_ragged_csv_row_survives_kill_9_exactly_once(
    client: Berth, home: Path, tmp_path: Path, slow: Path
) -> None:
    """Ragged rows before and after the kill: the errors file is the uninterrupted run's."""
    frame = pd.read_parquet(slow)
    lines = frame.to_csv(index=False).splitlines()
    for row in (30, 500, 999):  # chunk 1 (done before the kill), chunk 20, the last row
        lines[row + 1] = f"{row},0.5"
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.parquet"
    _kill_after(_command(home, source, out), home, parts=5)
    _finish(_command(home, source, out))
    uninterrupted = tmp_path / "uninterrupted.parquet"
    _finish(_command(home, source, uninterrupted))

    resumed = client.jobs.recent(limit=2)[1]  # the newest is the uninterrupted run's
    assert (resumed.attempts, resumed.rows, resumed.errors) == (2, ROWS, 3)
    errors = (tmp_path / "scores.errors.csv").read_bytes()
    assert errors == (tmp_path / "uninterrupted.errors.csv").read_bytes()
    assert pd.read_csv(tmp_path / "scores.errors.csv")["row"].tolist() == [30, 500, 999]
    result = pd.read_parquet(out)
    assert result["prediction_id"].tolist() == [
        f"{resumed.id}-{i}" for i in range(ROWS) if i not in (30, 500, 999)
    ]
    pd.testing.assert_frame_equal(
        result.drop(columns=["prediction_id"]),
        pd.read_parquet(uninterrupted).drop(columns=["prediction_id"]),
    )
    records = RecordReader(home / "records").read("slow")
    ids = records.filter(pc.starts_with(records["prediction_id"], resumed.id))
    assert sorted(ids["prediction_id"].to_pylist()) == sorted(result["prediction_id"])


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
