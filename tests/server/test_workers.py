"""``berth serve --workers 2`` as a real process: the workers' metrics add up on /metrics
(prometheus-client's multiprocess mode), their prediction records land in one dataset that two
concurrent compactions neither double nor lose, both follow an alias move, and SIGTERM flushes
the records and removes the metrics folder."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.dummy import DummyClassifier
from typer.testing import CliRunner, Result

from berth.app import Berth
from berth.config import Settings
from berth.runtime.metrics import (
    MULTIPROCESS_ENV,
    Metrics,
    multiprocess_folder,
    reap_dead_workers,
)
from berth.runtime.record_reader import RecordReader

NAME = "twice"
LABELS = {1: "one", 2: "two"}
ROW = {"x1": 0.3, "x2": 1.2}
POLL_S = 0.5
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
WORKER = re.compile(r"Started server process \[(\d+)\]")
READY = "Application startup complete."
RECORD_FILE = re.compile(r"^auto-\d+-(\d+)-[0-9a-f]+\.parquet$")


@pytest.fixture
def two_versions(client: Berth) -> Berth:
    """``twice`` v1 always says "one", v2 always "two"; production -> v1."""
    x = pd.DataFrame({"x1": np.linspace(0, 1, 20), "x2": np.linspace(1, 2, 20)})
    y = np.array(["one", "two"] * 10)
    for version, label in LABELS.items():
        model = DummyClassifier(strategy="constant", constant=label).fit(x, y)
        assert client.register(model, NAME, training_data=x).version == version
    client.set_alias(NAME, "production", 1)
    return client


class Workers:
    """``berth --home H serve --workers 2 --port 0`` as a child process, its temporary folders
    under ``tmp`` (to see the metrics folder come and go); port and worker pids from stderr."""

    def __init__(self, home: Path, tmp: Path, workers: int = 2) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(BERTH_USER="server", TMPDIR=str(tmp))
        exe = Path(sys.executable).parent / "berth"
        self.workers = workers
        self.env = env
        self.command = [
            *(str(exe), "--home", str(home), "serve", "--workers", str(workers)),
            *("--poll-interval", str(POLL_S), "--no-access-log"),
        ]
        self.proc = subprocess.Popen(
            [*self.command, "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: the workers go with it in stop()
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # drained to the end, so the child never blocks on it
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, timeout: float = 90.0) -> str:
        """Once every worker has started its app (loaded its models) and serves."""
        deadline = time.monotonic() + timeout
        while self.log.count(READY) < self.workers or not STARTED.search(self.log):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start:\n" + self.log)
            time.sleep(0.05)
        found = STARTED.search(self.log)
        assert found is not None
        return f"http://127.0.0.1:{found.group(1)}"

    @property
    def pids(self) -> set[int]:
        return {int(pid) for pid in WORKER.findall(self.log)}

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # workers a failed test left running too
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def predict_fresh(url: str, requests: int, threads: int = 8) -> list[tuple[int, str]]:
    """``requests`` predictions from ``threads`` threads, each on a connection of its own (a new
    connection is the kernel's to give to either worker); (version, prediction id) of each."""

    def one(_: int) -> tuple[int, str]:
        r = http.post(f"{url}/v1/predict/{NAME}", json={"records": [ROW]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["predictions"][0]["label"] == LABELS[body["version"]]
        return body["version"], body["predictions"][0]["prediction_id"]

    with fresh_connections() as http, ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def fresh_connections() -> httpx.Client:
    """A client that keeps no connection open: every request is a new one."""
    return httpx.Client(timeout=15.0, limits=httpx.Limits(max_keepalive_connections=0))


def counter_total(text: str, metric: str) -> float:
    """The sum of every sample of ``metric`` for our model in a text exposition."""
    pattern = re.compile(rf'^{metric}\{{[^}}]*model="{NAME}"[^}}]*\}} (\S+)$', re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def record_files(root: Path) -> Iterator[Path]:
    yield from (root / f"model={NAME}").glob("date=*/*.parquet")


def writers(root: Path) -> dict[str, int]:
    """Which process wrote each prediction's record: a queued writer's file is named after its
    process (until compaction merges it)."""
    import pyarrow.parquet as pq

    found: dict[str, int] = {}
    for f in record_files(root):
        named = RECORD_FILE.match(f.name)
        if named:
            for pid in pq.read_table(f, columns=["prediction_id"]).column(0).to_pylist():
                found[pid] = int(named.group(1))
    return found


@contextlib.contextmanager
def paused(pids: set[int]) -> Iterator[None]:
    """The workers stopped (SIGSTOP) while the block runs, so that connections made meanwhile
    wait in the kernel; then resumed one at a time, a moment apart, as a busy machine may
    schedule them. With one shared socket the first to run took every connection waiting."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in sorted(pids):
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.3)


def open_connections(url: str, count: int) -> list[http.client.HTTPConnection]:
    where = urlsplit(url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    opened = []
    for _ in range(count):
        conn = http.client.HTTPConnection(host, port, timeout=15.0)
        conn.sock = socket.create_connection((host, port))  # connected: the kernel's backlog
        opened.append(conn)
    return opened


def predict_on(opened: list[http.client.HTTPConnection], each: int = 5) -> list[tuple[int, str]]:
    """``each`` predictions on every kept-alive connection, one thread per connection."""
    body = json.dumps({"records": [ROW]})
    headers = {"Content-Type": "application/json"}

    def use(conn: http.client.HTTPConnection) -> list[tuple[int, str]]:
        answers = []
        with contextlib.closing(conn):
            for _ in range(each):
                conn.request("POST", f"/v1/predict/{NAME}", body, headers)
                r = conn.getresponse()
                doc = json.loads(r.read())
                assert r.status == 200, doc
                answers.append((doc["version"], doc["predictions"][0]["prediction_id"]))
        return answers

    with ThreadPoolExecutor(len(opened)) as pool:
        return [a for answers in pool.map(use, opened) for a in answers]


def compact_twice_at_once(root: Path) -> None:
    """Two compactions at once, each with a lock file of its own open (as two workers' hourly
    compactions would be): one merges, the other finds the model busy or nothing left."""
    start = threading.Barrier(2)

    def compact() -> None:
        start.wait()
        RecordReader(root).compact(older_than_s=0)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(compact) for _ in range(2)]:
            done.result()


def gauge_pids(folder: Path) -> set[int]:
    """Processes whose live gauges (queue depths) count in /metrics."""
    return {int(f.stem.rsplit("_", 1)[1]) for f in folder.glob("gauge_live*_*.db")}


def scrape(url: str, times: int = 6) -> list[str]:
    """/metrics over fresh connections, so that both workers render it."""
    with fresh_connections() as http:
        return [http.get(f"{url}/metrics").text for _ in range(times)]


def assert_counted(url: str, requests: int) -> None:
    for text in scrape(url):
        assert counter_total(text, "berth_requests_total") == requests, text
        assert counter_total(text, "berth_predictions_total") == requests
        assert counter_total(text, "berth_request_latency_seconds_count") == requests
        # A gauge summed over the live workers: one sample, not one per worker.
        assert len(re.findall(r"^berth_records_queue_depth ", text, re.MULTILINE)) == 1


def test_two_workers_add_up(
    two_versions: Berth, home: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    root = Settings(home=home).resolved_records_root()
    server = Workers(home, tmp)
    sent: list[tuple[int, str]] = []
    try:
        url = server.url()
        first = server.pids
        assert len(first) == 2, server.log
        (folder,) = tmp.glob("berth-metrics-*")  # made by the parent before the workers
        assert gauge_pids(folder) == first
        # A second server on the port is refused, not joined to this one's SO_REUSEPORT group
        # (it runs meanwhile and is looked at below).
        second = subprocess.Popen(
            [*server.command, "--port", str(urlsplit(url).port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=server.env,
        )

        # -- requests over many connections: counted once in /metrics, whichever worker answers
        sent += predict_fresh(url, 200)
        assert {v for v, _ in sent} == {1}
        assert_counted(url, 200)

        # -- an alias move: after the switch window, every request says v2
        two_versions.set_alias(NAME, "production", 2)
        switched = time.monotonic()

        def all_v2() -> bool:
            answers = predict_fresh(url, 16)
            sent.extend(answers)
            return {v for v, _ in answers} == {2}

        wait_until(all_v2, POLL_S + 10.0, "every worker to serve v2")
        took = time.monotonic() - switched
        after = predict_fresh(url, 120)
        sent += after
        assert [v for v, _ in after] == [2] * 120

        # A burst of kept-alive connections (a client pool, a load generator) is spread over
        # the workers: not taken whole by the first to wake, as one shared socket allows.
        with paused(first):
            opened = open_connections(url, 16)
        burst = predict_on(opened)
        sent += burst

        # Both workers answered before the move, after it, and in the burst.
        wait_until(lambda: len(RecordReader(root).read(NAME)) == len(sent), 20.0, "records")
        wrote = writers(root)
        for version in (1, 2):
            assert {wrote[p] for v, p in sent if v == version} == first, f"v{version}"
        assert {wrote[p] for _, p in burst} == first, "one worker took every connection"

        # -- a worker dies: uvicorn starts another; the dead one's counts stay, its gauges go
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: killed not in gauge_pids(folder), 10.0, "the dead worker's gauges")

        # -- two compactions at once while the workers keep writing: none lost, none doubled
        more: list[tuple[int, str]] = []
        sender = threading.Thread(target=lambda: more.extend(predict_fresh(url, 200, threads=4)))
        sender.start()
        compact_twice_at_once(root)
        sender.join(60)
        assert len(more) == 200
        sent += more

        wait_until(lambda: server.log.count(READY) == 3, 60.0, "a worker in the dead one's place")
        assert len(server.pids - first) == 1
        assert gauge_pids(folder) == server.pids - {killed}
        assert_counted(url, len(sent))
        _, refused = second.communicate(timeout=60)
        assert second.returncode != 0
        assert refused.splitlines()[-1].startswith("error: cannot listen on 127.0.0.1:"), refused

        server.proc.send_signal(signal.SIGTERM)
        returncode = server.proc.wait(30)
    finally:
        server.stop()

    log = server.log
    assert "Traceback" not in log, log
    assert returncode in (0, -signal.SIGTERM), f"exit status {returncode}\n{log}"
    assert not folder.exists(), "the metrics folder outlived the server"
    assert took < POLL_S + 10.0

    # Every answered prediction once, in one dataset, as berth logs shows it (flushed at exit).
    ids = [pid for _, pid in sent]
    assert len(set(ids)) == len(ids)
    exported = tmp_path / "all.parquet"
    done = cli("--home", str(home), "logs", NAME, "--output", str(exported))
    assert done.exit_code == 0, done.output
    records = pq.read_table(exported, columns=["prediction_id", "version"]).to_pylist()
    assert sorted(r["prediction_id"] for r in records) == sorted(ids)
    assert {r["prediction_id"]: r["version"] for r in records} == {p: v for v, p in sent}
    assert any(not RECORD_FILE.match(f.name) for f in record_files(root)), "nothing compacted"


@pytest.fixture
def cli() -> Callable[..., Result]:
    from berth.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


# -- the pieces, in-process -----------------------------------------------------------------------


def test_metrics_folder_is_made_named_and_removed(tmp_path: Path) -> None:
    before = os.environ.get(MULTIPROCESS_ENV)
    with multiprocess_folder(reap_interval_s=0.05) as folder:
        assert folder.is_dir()
        assert list(folder.iterdir()) == []
        assert os.environ[MULTIPROCESS_ENV] == str(folder)
        (folder / "counter_1.db").write_bytes(b"")
    assert not folder.exists()
    assert os.environ.get(MULTIPROCESS_ENV) == before


def test_exited_processes_lose_their_live_gauges_and_keep_their_counts(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    alive = os.getpid()
    for pid in (exited.pid, alive):
        for kind in ("gauge_livesum", "gauge_max", "counter", "histogram"):
            (tmp_path / f"{kind}_{pid}.db").write_bytes(b"")
    assert reap_dead_workers(tmp_path) == [exited.pid]
    left = {f.name for f in tmp_path.iterdir()}
    assert f"gauge_livesum_{exited.pid}.db" not in left
    assert {f"counter_{exited.pid}.db", f"histogram_{exited.pid}.db"} <= left
    assert {f"gauge_livesum_{alive}.db", f"gauge_max_{exited.pid}.db"} <= left
    assert reap_dead_workers(tmp_path) == []


def test_multiprocess_metrics_need_the_folder_named_before_the_import(tmp_path: Path) -> None:
    # This process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: its values live
    # in memory, and files in a folder would never be written.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(tmp_path)


def test_one_process_keeps_a_registry_per_metrics() -> None:
    a, b = Metrics(), Metrics()
    a.requests.labels("m", "1", "ok").inc()
    a.sample({("m", 1): 3}, 2)
    text = a.render()[0].decode()
    assert 'berth_requests_total{model="m",status="ok",version="1"} 1.0' in text
    assert 'berth_queue_depth{model="m",version="1"} 3.0' in text
    assert "berth_records_queue_depth 2.0" in text
    assert "berth_requests_total{" not in b.render()[0].decode()
