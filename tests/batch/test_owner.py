"""A job whose process is gone reads back as interrupted, on the host that can tell: no process
has its id, or the one that has it started after the job last heard from its owner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.batch.data import customers, spec, write_parquet

from berth.app import Berth
from berth.batch.jobs import JobInfo
from berth.registry.tables import JobRow, utcnow


@pytest.fixture
def job(churn: Berth, tmp_path: Path) -> JobInfo:
    source = write_parquet(customers(10), tmp_path / "in.parquet")
    return churn.jobs.create(
        spec(source, tmp_path / "o.parquet"), model="churn", version=1, actor="tester"
    )


@pytest.fixture
def other() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not the job's: as the kernel might give a dead owner's id to."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _set(client: Berth, job_id: str, **values: object) -> None:
    with client.db.write() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))


def test_a_job_of_a_live_process_is_running(churn: Berth, job: JobInfo) -> None:
    assert (job.status, job.pid, job.host) == ("running", os.getpid(), socket.gethostname())
    assert churn.jobs.get(job.id).status == "running"
    assert [j.id for j in churn.jobs.recent(status="running")] == [job.id]


def test_a_job_whose_process_exited_is_interrupted(churn: Berth, job: JobInfo) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    _set(churn, job.id, pid=int(done.stdout))
    found = churn.jobs.get(job.id)
    assert found.status == "interrupted"
    assert f"its process ({done.stdout.strip()} on {socket.gethostname()}) is gone" in found.message
    assert churn.jobs.recent(status="running") == []
    assert [j.id for j in churn.jobs.recent(status="interrupted")] == [job.id]
    assert churn.jobs.resumable(job.spec) == found  # and it resumes as any interrupted job


def test_a_reused_pid_is_told_apart_by_its_start_time(
    churn: Berth, job: JobInfo, other: subprocess.Popen[bytes]
) -> None:
    _set(churn, job.id, pid=other.pid, updated_at=utcnow() - timedelta(minutes=5))
    assert churn.jobs.get(job.id).status == "interrupted"  # started after the job's last write
    _set(churn, job.id, updated_at=utcnow())
    assert churn.jobs.get(job.id).status == "running"  # could be the owner: it is alive


def test_a_job_of_another_host_cannot_be_judged_here(churn: Berth, job: JobInfo) -> None:
    _set(churn, job.id, host="elsewhere", pid=2**22 + 7)  # no such pid here; maybe there
    assert churn.jobs.get(job.id).status == "running"
