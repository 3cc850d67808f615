"""Durable prediction records: a request is answered only once its records are in the local log
(group-committed), the log becomes Parquet, and a dead writer's log is replayed exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from berth.app import Berth, build_server
from berth.config import ServeOptions, Settings
from berth.errors import UnavailableError
from berth.runtime.record_log import LOG_FOLDER, read_segment
from berth.runtime.record_reader import RecordReader
from berth.runtime.record_writers import QueuedRecordWriter, RecorderLimits
from berth.runtime.records import RecordBatch
from berth.testing import asgi_client

NAME = "durable"


def batch(tag: str, n: int = 2, model: str = "credit") -> RecordBatch:
    return RecordBatch(
        model=model,
        version=1,
        mode="realtime",
        prediction_ids=[f"{tag}-{i}" for i in range(n)],
        inputs={"age": np.arange(n, dtype=np.float64) + 20.0},
        outputs={"score": np.full(n, 0.5)},
        latency_ms=1.0,
    )


def durable_writer(root: Path) -> QueuedRecordWriter:
    # An hour between flushes: what is on disk is the log's doing, not a timed Parquet write.
    limits = RecorderLimits(durable=True, flush_interval_s=3600.0, compact_interval_s=None)
    return QueuedRecordWriter(root, limits)


def logged_ids(root: Path) -> list[str]:
    return [
        i
        for segment in sorted((root / LOG_FOLDER).glob("*.arrows"))
        for _, _, table in read_segment(segment)
        for i in table.column("prediction_id").to_pylist()
    ]


def stored_ids(root: Path, model: str = "credit") -> list[str]:
    table = RecordReader(root).read(model, columns=["prediction_id"])
    return table.column("prediction_id").to_pylist() if table.num_rows else []


def crash(writer: QueuedRecordWriter) -> None:
    """What kill -9 leaves: the log's lock freed by the kernel, nothing flushed, no cleanup."""
    assert writer.log is not None
    writer.log.stop()
    assert writer.log._lock_fd is not None
    os.close(writer.log._lock_fd)
    writer.log._lock_fd = None


# -- the writer ------------------------------------------------------------------------------------


def test_a_commit_is_on_disk_when_its_future_is_done(tmp_path: Path) -> None:
    writer = durable_writer(tmp_path)
    try:
        waiter = writer.commit(batch("a"))
        assert not isinstance(waiter, asyncio.Future)  # no event loop here: a concurrent one
        waiter.result(timeout=10)
        assert logged_ids(tmp_path) == ["a-0", "a-1"]
        assert stored_ids(tmp_path) == []  # not Parquet yet: the log alone holds them
        writer.flush_now()
        assert stored_ids(tmp_path) == ["a-0", "a-1"]
        assert logged_ids(tmp_path) == []  # the segment went once its Parquet was durable
    finally:
        writer.close()
    assert list((tmp_path / LOG_FOLDER).iterdir()) == []  # the lock file too


def test_requests_waiting_together_share_one_sync(tmp_path: Path) -> None:
    writer = durable_writer(tmp_path)
    assert writer.log is not None
    log = writer.log

    async def many() -> None:
        # Hold the commit thread at its write: everything submitted meanwhile waits together.
        with log._segment_lock:
            waiters = [writer.commit(batch(f"r{i}", 1)) for i in range(100)]
            await asyncio.sleep(0.2)
        await asyncio.gather(*(asyncio.wrap_future(w) for w in waiters))

    try:
        asyncio.run(many())
        assert log.submitted == 100
        assert log.commits <= 3, f"{log.commits} syncs for 100 requests"
        assert sorted(logged_ids(tmp_path)) == sorted(f"r{i}-0" for i in range(100))
    finally:
        writer.close()
    assert sorted(stored_ids(tmp_path)) == sorted(f"r{i}-0" for i in range(100))


def test_a_dead_writers_log_is_replayed_on_start(tmp_path: Path) -> None:
    first = durable_writer(tmp_path)
    for tag in ("a", "b", "c"):
        first.commit(batch(tag)).result(timeout=10)
    crash(first)
    assert stored_ids(tmp_path) == []
    second = durable_writer(tmp_path)
    second.start()
    try:
        assert sorted(stored_ids(tmp_path)) == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1"]
        assert second.replayed == 6
        assert list((tmp_path / LOG_FOLDER).glob("*.arrows")) == []
    finally:
        second.close()


def test_a_writer_killed_between_parquet_and_removing_the_log_replays_nothing_twice(
    tmp_path: Path,
) -> None:
    first = durable_writer(tmp_path)
    assert first.log is not None
    first.commit(batch("early")).result(timeout=10)
    (segment,) = first.log.rotate()
    kept = tmp_path / "kept.arrows"
    shutil.copy(segment.path, kept)
    first._convert(segment, replay=False)  # the Parquet file is written, the segment removed
    shutil.copy(kept, segment.path)  # ... as if the kill came just before the removal
    first.commit(batch("late")).result(timeout=10)  # a second segment, never converted
    crash(first)
    assert sorted(stored_ids(tmp_path)) == ["early-0", "early-1"]

    second = durable_writer(tmp_path)
    second.start()
    try:
        assert Counter(stored_ids(tmp_path)) == {
            "early-0": 1,
            "early-1": 1,
            "late-0": 1,
            "late-1": 1,
        }
        assert second.replayed == 2
    finally:
        second.close()


def test_a_torn_frame_at_the_end_of_a_log_is_ignored(tmp_path: Path) -> None:
    first = durable_writer(tmp_path)
    first.commit(batch("whole")).result(timeout=10)
    crash(first)
    (segment,) = (tmp_path / LOG_FOLDER).glob("*.arrows")
    data = segment.read_bytes()
    with segment.open("ab") as f:  # a second commit cut short by the kill: never acknowledged
        f.write(data[: len(data) // 2])
    second = durable_writer(tmp_path)
    second.start()
    try:
        assert stored_ids(tmp_path) == ["whole-0", "whole-1"]
    finally:
        second.close()


def test_a_live_writers_log_is_left_alone(tmp_path: Path) -> None:
    first = durable_writer(tmp_path)
    second = durable_writer(tmp_path)
    try:
        first.commit(batch("alive")).result(timeout=10)
        second.start()  # its replay must not take the log of a writer that still runs
        assert stored_ids(tmp_path) == []
        assert logged_ids(tmp_path) == ["alive-0", "alive-1"]
    finally:
        second.close()
        first.close()
    assert stored_ids(tmp_path) == ["alive-0", "alive-1"]


def test_a_failed_log_write_fails_the_requests_and_the_log_goes_on(tmp_path: Path) -> None:
    writer = durable_writer(tmp_path)
    assert writer.log is not None
    try:
        writer.commit(batch("before")).result(timeout=10)
        assert writer.log._fd is not None
        os.close(writer.log._fd)  # the disk goes away under the open segment
        with pytest.raises(UnavailableError, match="could not be made durable"):
            writer.commit(batch("lost")).result(timeout=10)
        writer.commit(batch("after")).result(timeout=10)  # a new segment
    finally:
        writer.close()
    assert sorted(stored_ids(tmp_path)) == ["after-0", "after-1", "before-0", "before-1"]


def test_a_default_writer_replays_a_durable_log_left_behind(tmp_path: Path) -> None:
    first = durable_writer(tmp_path)
    first.commit(batch("x")).result(timeout=10)
    crash(first)
    plain = QueuedRecordWriter(tmp_path, RecorderLimits(compact_interval_s=None))
    plain.start()
    try:
        assert stored_ids(tmp_path) == ["x-0", "x-1"]
    finally:
        plain.close()


# -- the server ------------------------------------------------------------------------------------


def register(client: Berth) -> None:
    x = pd.DataFrame({"x1": np.linspace(0, 1, 40), "x2": np.linspace(1, 2, 40)})
    y = (x["x1"] > 0.5).to_numpy().astype(int)
    info = client.register(LogisticRegression().fit(x, y), NAME, training_data=x)
    client.set_alias(NAME, "production", info.version)


@pytest.mark.parametrize("durable", [True, False])
def test_a_durable_server_answers_after_the_record_is_on_disk(home: Path, durable: bool) -> None:
    settings = Settings(home=home, user="tester", records_durable=durable)
    with Berth(settings) as client:
        register(client)
    app = build_server(settings, ServeOptions(access_log=False))
    root = settings.resolved_records_root()

    async def call() -> list[str]:
        async with asgi_client(app) as http:
            rows = [{"x1": 0.2, "x2": 1.1}] * 3
            r = await http.post(f"/v1/predict/{NAME}", json={"records": rows})
            assert r.status_code == 200, r.text
            ids = [p["prediction_id"] for p in r.json()["predictions"]]
            on_disk = set(logged_ids(root)) | set(stored_ids(root, NAME))
            return [i for i in ids if i not in on_disk]

    missing = asyncio.run(call())
    if durable:
        assert missing == []
    else:  # the default's bound: up to a flush interval of answered records only in memory
        assert len(missing) == 3


STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Serve:
    """``berth --home H serve --port 0`` as a child process, found by the port in its stderr."""

    def __init__(self, home: Path, durable: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env |= {"BERTH_USER": "server", "BERTH_RECORDS_DURABLE": "1" if durable else "0"}
        exe = Path(sys.executable).parent / "berth"
        self.proc = subprocess.Popen(
            [
                *(str(exe), "--home", str(home), "serve"),
                *("--port", "0", "--poll-interval", "0", "--no-access-log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = STARTED.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._found.set()
        self._found.set()

    def url(self, timeout: float = 90.0) -> str:
        self._found.wait(timeout)
        if self.port is None:
            raise AssertionError("the server did not start:\n" + "".join(self.lines))
        return f"http://127.0.0.1:{self.port}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def answered_under_load(url: str, until: threading.Event, threads: int = 12) -> list[str]:
    """Prediction ids of every 200 that clients in a thread pool got before ``until``."""
    answered: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            n = 0
            while not until.is_set():
                n += 1
                rows = [{"x1": (k + n) % 10 / 10, "x2": 1.5}] * (1 + n % 3)
                try:
                    r = http.post(f"/v1/predict/{NAME}", json={"records": rows})
                except httpx.HTTPError:  # the kill
                    return
                if r.status_code == 200:
                    ids = [p["prediction_id"] for p in r.json()["predictions"]]
                    with lock:
                        answered.extend(ids)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(client, k) for k in range(threads)]:
            f.result()
    return answered


def test_kill_9_under_load_loses_no_answered_record_and_repeats_none(home: Path) -> None:
    with Berth(Settings(home=home, user="tester")) as client:
        register(client)
    server = Serve(home, durable=True)
    stop = threading.Event()
    try:
        url = server.url()
        killer = threading.Timer(3.0, lambda: (server.kill(), stop.set()))
        killer.start()
        answered = answered_under_load(url, stop)
        killer.join()
    finally:
        stop.set()
        server.kill()
    assert len(answered) >= 200, f"only {len(answered)} rows answered before the kill"
    root = Settings(home=home).resolved_records_root()
    assert list((root / LOG_FOLDER).glob("*.arrows")), "the kill left no log to replay"

    restarted = Serve(home, durable=True)
    try:
        restarted.url()  # the log is replayed before the server listens
        stored = Counter(stored_ids(root, NAME))
    finally:
        restarted.kill(signal.SIGTERM)
    lost = [i for i in answered if i not in stored]
    assert lost == [], f"{len(lost)} of {len(answered)} answered rows have no record"
    repeated = {i: n for i, n in stored.items() if n > 1}
    assert repeated == {}, f"{len(repeated)} records stored twice"
