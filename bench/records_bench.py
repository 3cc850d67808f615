"""What prediction records cost a served request, in process: CPU per request, records on / off.

Two servers of the same registered model run side by side in this process, one with records and
one without, and the ASGI app of each is called directly (no sockets, no HTTP client) by 16
concurrent callers on one event loop, as 16 connections would, so micro-batching groups requests
as it does under wrk. Each measurement is a batch of requests; the figure per request is the
minimum over the batches (the shared machine only ever adds time), and batches of the two servers
alternate so that a busy spell hits both.

Two figures per request:

- ``process``: CPU of every thread of this process (event loop, inference thread, record
  writer), with the record writer's flush of the batch's records inside the timed batch (the
  writer's interval is set to an hour and each batch ends with a flush in the writer's place),
  so what the writer costs is counted once per record. On two cores this is what throughput at
  16 connections follows: the writer's work holds the GIL the event loop needs.
- ``loop``: CPU of the event-loop thread alone (``time.thread_time``).

    .venv/bin/python bench/records_bench.py [--rows 1,64] [--batches 16] [--requests 1600]
        [--model numeric|credit-risk] [--durable] [--json FILE]

``--durable`` adds a third server whose records are durable (``RecorderLimits(durable=True)``:
each response waits for its record's group commit to the local log). Models: ``numeric``, the
peers benchmark's 30-feature HistGradientBoosting classifier (bench/peers/models.py), or the
demo's ``credit-risk``, registered once in a temporary home.

Besides the totals, the records' own CPU is counted where it is spent: ``produce`` (the
producer on the event loop), ``flush`` (the writer's Parquet write), ``log`` (the durable log's
commit thread); ``own/off`` is their sum over a request without records, the ratio the noise of
a shared machine cannot blur.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONNECTIONS = 16


@dataclass
class Served:
    name: str
    app: Any
    path: Any
    flush: Callable[[], None]
    process_us: list[float] = field(default_factory=list)
    loop_us: list[float] = field(default_factory=list)
    produce_us: list[float] = field(default_factory=list)
    flush_us: list[float] = field(default_factory=list)
    log_us: list[float] = field(default_factory=list)
    per_commit: list[float] = field(default_factory=list)
    _produce_s: float = 0.0

    def time_produce(self) -> None:
        """Count the CPU of the event loop's thread inside ``RecordProducer.produce``."""
        records = self.path.records
        if records is None:
            return
        produce = records.produce

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return produce(*args, **kwargs)
            finally:
                self._produce_s += time.thread_time() - started

        records.produce = timed

    def log_cpu_s(self) -> float:
        """CPU of the durable log's commit thread so far."""
        log = getattr(self.path.records.queued, "log", None) if self.path.records else None
        thread = getattr(log, "_thread", None)
        if thread is None or thread.ident is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def build(home: Path, name: str, *, record: bool, durable: bool = False) -> Served:
    from berth.app import Berth
    from berth.config import PathOptions, ServeOptions, Settings
    from berth.runtime.metrics import Metrics
    from berth.runtime.path import InferencePath
    from berth.runtime.record_writers import QueuedRecordWriter, RecorderLimits
    from berth.runtime.records import RecordProducer
    from berth.server.app import create_app

    client = Berth(Settings(home=home))
    root = home / f"records-{name}"
    durability = {"durable": True} if durable else {}  # (runs against code without the mode)
    limits = RecorderLimits(flush_interval_s=3600.0, compact_interval_s=None, **durability)
    queued = QueuedRecordWriter(root, limits)
    producer = RecordProducer(root, queued=queued)
    options = PathOptions(record=record, poll_interval_s=0)
    path = InferencePath(client.registry, options, records=producer, metrics=Metrics())
    app = create_app(path, ServeOptions(path=options, access_log=False))
    return Served(name, app, path, queued.flush_now)


def scope(body: bytes, model: str) -> dict[str, Any]:
    route = f"/v1/predict/{model}"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, body: bytes, model: str) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope(body, model), receive, send)
    return status


async def one_batch(served: Served, bodies: list[bytes], requests: int, model: str) -> None:
    per_caller = requests // CONNECTIONS
    failures: list[int] = []

    async def caller(k: int) -> None:
        for i in range(per_caller):
            status = await call(served.app, bodies[(k * per_caller + i) % len(bodies)], model)
            if status != 200:
                failures.append(status)

    log = getattr(served.path.records.queued, "log", None) if served.path.records else None
    commits = log.commits if log is not None else 0
    served._produce_s = 0.0
    log_cpu = served.log_cpu_s()
    cpu, loop = time.process_time(), time.thread_time()
    await asyncio.gather(*(caller(k) for k in range(CONNECTIONS)))
    loop_s = time.thread_time() - loop
    flushing = time.process_time()
    served.flush()  # the writer's work for these records, in the writer's place
    flush_s = time.process_time() - flushing
    cpu_s = time.process_time() - cpu
    if failures:
        raise RuntimeError(f"{served.name}: {len(failures)} requests failed: {failures[:3]}")
    n = per_caller * CONNECTIONS
    served.process_us.append(cpu_s / n * 1e6)
    served.loop_us.append(loop_s / n * 1e6)
    served.produce_us.append(served._produce_s / n * 1e6)
    served.flush_us.append(flush_s / n * 1e6)
    served.log_us.append((served.log_cpu_s() - log_cpu) / n * 1e6)
    if log is not None:
        served.per_commit.append(n / max(1, log.commits - commits))


FIGURES = ("process_us", "loop_us", "produce_us", "flush_us", "log_us")


def register(client: Any, model: str, home: Path) -> None:
    if model == "numeric":
        from peers import models

        models.register_numeric(client, home)
    elif model == "credit-risk":
        from berth.demo.run import _credit_risk  # the demo's own registration (aliases too)

        _credit_risk(client, lambda line: None)
    else:
        raise SystemExit(f"--model numeric or credit-risk, not {model!r}")


def request_bodies(model: str, rows: int) -> list[bytes]:
    """64 distinct bodies of ``rows`` rows (rows the model never saw)."""
    if model == "numeric":
        from peers import models

        pool = models.request_rows()
        chunks = [pool[i * rows : (i + 1) * rows] for i in range(len(pool) // rows)]
        return [json.dumps(models.records_body(c)).encode() for c in chunks]
    from berth.demo import credit

    frame = credit.generate(rows=64 * rows, seed=7)[list(credit.FEATURES)]
    records = frame.to_dict(orient="records")
    return [json.dumps({"records": records[i * rows : (i + 1) * rows]}).encode() for i in range(64)]


async def scenario(
    servers: list[Served], model: str, rows: int, batches: int, requests: int
) -> dict[str, Any]:
    bodies = request_bodies(model, rows)
    for s in servers:
        await one_batch(s, bodies, requests, model)  # warm-up: inline/thread decision, caches
    for s in servers:
        for name in (*FIGURES, "per_commit"):
            getattr(s, name).clear()
    for b in range(batches):
        for s in servers if b % 2 == 0 else servers[::-1]:
            await one_batch(s, bodies, requests, model)
    base = servers[0]
    result: dict[str, Any] = {
        "model": model,
        "rows": rows,
        "requests_per_batch": requests,
        "batches": batches,
    }
    for s in servers:
        figures: dict[str, float] = {}
        for name in FIGURES:
            values = getattr(s, name)
            figures[f"{name}_min"] = min(values)
            figures[f"{name}_median"] = statistics.median(values)
        if s is not base:
            figures["process_ratio"] = min(s.process_us) / min(base.process_us)
            figures["loop_ratio"] = min(s.loop_us) / min(base.loop_us)
            # The records' own CPU (producer on the loop, the writer's flush, the log's
            # commits) against a request without them: the ratio the noise cannot blur.
            own = (
                statistics.median(s.produce_us)
                + statistics.median(s.flush_us)
                + statistics.median(s.log_us)
            )
            figures["records_us"] = own
            figures["records_share"] = own / min(base.process_us)
        if s.per_commit:
            figures["requests_per_commit"] = statistics.median(s.per_commit)
        result[s.name] = figures
    return result


async def run(args: argparse.Namespace, home: Path) -> list[dict[str, Any]]:
    import berth

    register(berth.connect(home=home), args.model, home)
    servers = [build(home, "off", record=False), build(home, "on", record=True)]
    if args.durable:
        servers.append(build(home, "durable", record=True, durable=True))
    contexts = [s.app.router.lifespan_context(s.app) for s in servers]
    for c in contexts:
        await c.__aenter__()
    for s in servers:
        s.time_produce()
    try:
        results = []
        for rows in args.rows:
            requests = args.requests if rows == 1 else max(CONNECTIONS * 4, args.requests // 4)
            results.append(await scenario(servers, args.model, rows, args.batches, requests))
            report(results[-1], [s.name for s in servers])
        return results
    finally:
        for c in contexts:
            await c.__aexit__(None, None, None)


def report(result: dict[str, Any], names: list[str]) -> None:
    print(
        f"\n{result['model']}, {result['rows']} row(s) per request, {CONNECTIONS} callers, "
        f"min of {result['batches']} batches of {result['requests_per_batch']} requests "
        "(µs of CPU per request)"
    )
    print(
        f"{'records':<9} {'process':>8} {'ratio':>6} {'loop':>7} {'ratio':>6} "
        f"{'produce':>8} {'flush':>7} {'log':>7} {'own/off':>8} {'req/commit':>10}"
    )
    for name in names:
        r = result[name]
        print(
            f"{name:<9} {r['process_us_min']:>8.1f} {r.get('process_ratio', 1):>6.3f} "
            f"{r['loop_us_min']:>7.1f} {r.get('loop_ratio', 1):>6.3f} "
            f"{r['produce_us_median']:>8.1f} {r['flush_us_median']:>7.1f} "
            f"{r['log_us_median']:>7.1f} {r.get('records_share', 0):>8.3f} "
            f"{r.get('requests_per_commit', 0):>10.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="numeric", help="numeric (default) or credit-risk")
    parser.add_argument("--rows", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1600, help="per batch, 1-row requests")
    parser.add_argument("--durable", action="store_true", help="add a durable-records server")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import uvloop  # what berth serve runs on (uvicorn's loop="auto")

    with tempfile.TemporaryDirectory(prefix="berth-records-bench-") as tmp:
        results = uvloop.run(run(args, Path(tmp)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"when": time.time(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
