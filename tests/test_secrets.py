"""Secrets never leak: a database password and a bearer key used through a whole session (a
real server, predictions, batch jobs and a schedule on a database URL with a password, failing
commands) appear in no log line, no command output and no file under the Berth home."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy
from tests.models import SumModel, numbers
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.batch.specs import JobSpec, Location
from berth.cli.main import app
from berth.config import Settings
from berth.registry.redaction import hide_password, passwords, scrub, strip_password

# -- the rules, one URL at a time ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "stored", "shown"),
    [
        ("postgresql+psycopg://app:s3cret@db:5432/crm", "postgresql+psycopg://app@db:5432/crm",
         "postgresql+psycopg://app:***@db:5432/crm"),
        ("postgresql://app:${PGPASSWORD}@db/crm", "postgresql://app:${PGPASSWORD}@db/crm",
         "postgresql://app:${PGPASSWORD}@db/crm"),
        ("postgresql://app:$PGPASSWORD@db/crm", "postgresql://app:$PGPASSWORD@db/crm",
         "postgresql://app:$PGPASSWORD@db/crm"),
        ("postgresql://db/crm?password=s3cret&sslmode=require",
         "postgresql://db/crm?sslmode=require", "postgresql://db/crm?password=***&sslmode=require"),
        ("postgresql://db/crm?sslmode=require&password=s3cret",
         "postgresql://db/crm?sslmode=require", "postgresql://db/crm?sslmode=require&password=***"),
        ("postgresql://app:p%40ss@db/crm", "postgresql://app@db/crm", "postgresql://app:***@db/crm"),
        ("postgresql://app@db/crm", "postgresql://app@db/crm", "postgresql://app@db/crm"),
        ("duckdb:///scores.duckdb", "duckdb:///scores.duckdb", "duckdb:///scores.duckdb"),
    ],
)  # fmt: skip
def test_a_url_is_stored_without_and_shown_with_a_masked_password(
    url: str, stored: str, shown: str
) -> None:
    assert strip_password(url) == stored
    assert hide_password(url) == shown


def test_scrub_masks_a_password_as_written_and_decoded() -> None:
    url = "postgresql://app:p%40ss@db/crm"
    assert passwords(url) == ["p%40ss", "p@ss"]
    assert scrub("login p@ss failed (p%40ss)", [url]) == "login *** failed (***)"


def test_a_stored_spec_and_its_fingerprint_hold_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def spec(url: str) -> JobSpec:
        return JobSpec(
            reference="m",
            input=Location(target=url, format="sql", query="SELECT 1"),
            output=Location(target=url, format="sql", table="scores"),
        )

    with_password = spec("postgresql+psycopg://app:s3cret@db/crm")
    assert "s3cret" not in repr(with_password.to_dict())
    assert with_password.to_dict()["input"]["target"] == "postgresql+psycopg://app@db/crm"
    # The same command run again finds its job: the fingerprint is of the stored form.
    assert with_password.fingerprint() == spec("postgresql+psycopg://app@db/crm").fingerprint()
    assert with_password.input.url.endswith("app:s3cret@db/crm")  # in memory, it still connects

    monkeypatch.setenv("PGPASSWORD", "from-env")
    referenced = spec("postgresql+psycopg://app:${PGPASSWORD}@db/crm")
    assert (
        referenced.to_dict()["input"]["target"] == "postgresql+psycopg://app:${PGPASSWORD}@db/crm"
    )
    assert referenced.input.url == "postgresql+psycopg://app:from-env@db/crm"
    assert "from-env" not in referenced.input.scrub("auth failed for from-env")


# -- a whole session -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEY = "berth_x_SECRET" + uuid.uuid4().hex
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Server:
    """``berth serve --port 0`` with the access log on; every stderr line kept."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        exe = Path(sys.executable).parent / "berth"
        self.proc = subprocess.Popen(
            [str(exe), "--home", str(home), "serve", "--port", "0", "--access-log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = STARTED.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._found.set()
        self._found.set()

    def url(self) -> str:
        self._found.wait(90)
        if self.port is None:
            raise AssertionError("the server did not start:\n" + "".join(self.lines))
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean stop: records and access log flushed
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # an open pipe is an unraisable ResourceWarning at exit


def _with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@", 1)


def _files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def _text_of(path: Path) -> str:
    """A file as bytes decoded leniently, and a Parquet file's values too (its pages may be
    compressed: a secret inside would not show in the raw bytes)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix == ".parquet":
        text += repr(pq.read_table(path).to_pylist())
    return text


@pytest.mark.postgres
def test_no_secret_in_any_log_output_or_file_of_a_session(
    pg_url: str, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Pw" + uuid.uuid4().hex  # the server trusts 127.0.0.1: any password connects
    db_url = _with_password(pg_url, password)
    secrets = [password, SECRET_KEY]
    seen: list[str] = []  # every line any process or command printed

    with Berth(Settings(home=home, user="tester")) as c:
        c.register(SumModel(), "m", training_data=numbers(), trusted=True)
        c.set_alias("m", "production", 1)
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE inputs (id int primary key, a float8, b float8)")
        conn.exec_driver_sql(
            "INSERT INTO inputs SELECT g, g * 0.5, g * 0.25 FROM generate_series(1, 50) AS g"
        )
        conn.exec_driver_sql("CREATE TABLE dirty AS SELECT * FROM inputs")
        conn.exec_driver_sql("UPDATE dirty SET a = NULL WHERE id = 7")
    engine.dispose()

    # A real server, its metadata URL in the environment, requests with a bearer key.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(BERTH_USER="server", PYTHONPATH=str(ROOT))  # the model's class is in tests/
    server = Server(home, env)
    try:
        headers = {"Authorization": f"Bearer {SECRET_KEY}"}
        with httpx.Client(base_url=server.url(), headers=headers, timeout=30.0) as http:
            row = {"a": 1.0, "b": 2.0}
            first = http.post("/v1/predict/m", json={"records": [row] * 3})
            assert first.status_code == 200, (first.text, "".join(server.lines))
            bad = http.post("/v1/predict/m", json={"records": [{"a": "x"}]})
            assert 400 <= bad.status_code < 500
            assert http.post("/v1/predict/missing", json={"records": [row]}).status_code == 404
            infer = {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
            assert http.post("/v2/models/m/infer", json=infer).status_code >= 400
            seen += [bad.text, http.get("/v1/models").text]
    finally:
        server.stop()
    seen += server.lines
    assert any('"status": 200' in line or '"status":200' in line for line in server.lines), (
        "the access log printed no request:\n" + "".join(server.lines)
    )

    # Batch jobs and a schedule with the password in their database URLs, and failing commands.
    cli = CliRunner()
    cli_env = {"BERTH_HOME": str(home), "BERTH_DATABASE_URL": None, "BERTH_USER": "cli"}
    query = "SELECT id, a, b FROM inputs ORDER BY id"

    def run(*args: str, ok: bool = True) -> Result:
        result = cli.invoke(app, list(args), env=cli_env)
        seen.append(result.output)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            seen.append(repr(result.exception))
        assert (result.exit_code == 0) == ok, result.output
        return result

    out = tmp_path / "scores.parquet"
    done = run("batch", "run", "m", "-i", db_url, "--query", query, "-o", str(out), "--json")
    assert "***" in done.output
    job_id = re.search(r'"id": "(\w+)"', done.output)
    assert job_id is not None
    run("batch", "show", job_id.group(1), "--json")
    run("batch", "list", "--json")
    run("batch", "run", "m", "-i", db_url, "--query", query, "-o", db_url, "--table", "scores")
    run("batch", "schedule", "m", "--cron", "0 2 * * *", "-i", db_url, "--query", query,
        "-o", str(tmp_path / "s-{date}.parquet"))  # fmt: skip
    run("batch", "schedules", "--json")
    run("batch", "run", "m", "-i", db_url, "--query", "SELECT nope FROM nowhere",
        "-o", str(tmp_path / "x.parquet"), ok=False)  # fmt: skip
    dirty = "SELECT id, a, b FROM dirty ORDER BY id"  # a bad row stops the job: its folder stays
    run("batch", "run", "m", "-i", db_url, "--query", dirty, "-o", str(tmp_path / "d.parquet"),
        "--max-errors", "0", "--chunk-rows", "10", ok=False)  # fmt: skip
    refused = db_url.replace(":5432/", ":1/")  # nothing listens on port 1
    run("batch", "run", "m", "-i", refused, "--query", query, "-o", str(tmp_path / "y.parquet"),
        ok=False)  # fmt: skip
    run("--database-url", refused, "models", "list", ok=False)
    run("--database-url", f"postgresql+nosuchdriver://u:{password}@h/x", "models", "list", ok=False)
    pg_home = tmp_path / "pg-home"  # a registry on the database whose URL has the password
    run("--home", str(pg_home), "--database-url", db_url, "models", "list", "--json")
    run("--home", str(pg_home), "--database-url", db_url, "audit", "log", "--json")
    run("audit", "log", "--json")
    run("audit", "export", "--out", str(home / "audit.jsonl"))
    run("audit", "verify")

    # Nothing printed, logged or written holds a secret.
    seen += [r.getMessage() for r in caplog.records]
    seen += [repr(r.exc_info[1]) for r in caplog.records if r.exc_info]
    files = _files(tmp_path)  # both homes, the outputs, the errors files
    assert any(p.name == "berth.db" for p in files)
    assert any(p.suffix == ".parquet" and "records" in p.parts for p in files)
    assert any("batch" in p.parts for p in files)
    leaks = [
        (secret[:6], where)
        for secret in secrets
        for where, text in [
            *((f"output {i}", line) for i, line in enumerate(seen)),
            *((str(p), _text_of(p)) for p in files),
        ]
        if secret in text
    ]
    assert leaks == []
    assert password in db_url  # the scan looked for the real thing
