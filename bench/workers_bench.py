"""One worker against two (issue 9, item 5): ``berth serve --workers N`` under wrk on 127.0.0.1.

The model: a HistGradientBoostingClassifier (100 iterations) fitted on 20,000 rows of 30 float
features ``f00..f29``, registered from the DataFrame as ``numeric`` in a temporary home (or
``--home``), alias ``production``. The server: ``berth serve --no-access-log --workers N``, records
on, on a free ephemeral port of 127.0.0.1. The load: ``wrk -t1 -c16`` with
``bench/wrk/post_bodies.lua`` cycling through 64 one-row bodies ``{"records": [{...}]}`` on
``POST /v1/predict/numeric``, a warm-up, then the timed run. Servers alternate (1, 2, 1, 2, ... for
``--rounds``), each started fresh and stopped with SIGTERM after its run.

Each run records, beside requests/s and latency, the CPU each worker used, how many of wrk's
kept-alive connections each worker held, the rows per predictor call (concurrent requests share
a call; each of two workers sees half the concurrency), wrk's own CPU (it shares the cores), and
the CPU of every other process on the machine during the run: on a shared machine that is the
noise to read the figures by. Before each run the script waits (``--patience`` seconds at most)
for other processes to use less than ``--quiet`` cores.

    .venv/bin/python bench/workers_bench.py [--home H] [--duration 10] [--warmup 3] [--rounds 2]

Results: ``bench/results/workers.md`` (and ``workers.json`` beside it). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LUA = BENCH / "wrk" / "post_bodies.lua"
BIN = Path(sys.executable).parent
HZ = os.sysconf("SC_CLK_TCK")
MODEL = "numeric"
FEATURES = [f"f{i:02d}" for i in range(30)]
POOL = 64
TARGET = 1.6
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    ENV.pop(_name, None)  # berth serve sets its thread pools itself (--threads, default 1)
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

# -- the model and the bodies ------------------------------------------------------------------


def prepare(home: Path) -> Path:
    """Fit and register the model unless ``home`` has it; returns the bodies file."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(20_000, len(FEATURES))), columns=FEATURES)
    bodies = home / "bench-bodies.jsonl"
    import berth

    client = berth.connect(home=home)
    try:
        if not any(m.name == MODEL for m in client.list_models()):
            from sklearn.ensemble import HistGradientBoostingClassifier

            y = (x["f00"] + 0.5 * x["f01"] * x["f02"] - x["f03"] > 0).astype(int)
            model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False)
            model.fit(x, y)
            info = client.register(model, MODEL, training_data=x)
            client.set_alias(MODEL, "production", info.version)
    finally:
        client.close()
    rows = x.head(POOL).to_dict(orient="records")
    bodies.write_text("".join(json.dumps({"records": [row]}) + "\n" for row in rows))
    return bodies


# -- machine state -----------------------------------------------------------------------------


def busy_ticks() -> int:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return sum(values[:8]) - values[3] - values[4]


def ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``: uvicorn's workers (and multiprocessing's helpers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def workers_of(pid: int) -> list[int]:
    """The worker processes: children running ``multiprocessing.spawn`` but not its tracker."""
    found = []
    for child in children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            found.append(child)
    return found


def connections_by_pid(port: int) -> dict[int, int]:
    """Established connections to ``port`` per process holding them (``ss``): which worker has
    how many of wrk's kept-alive connections."""
    try:
        done = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", done.stdout):
        found[int(pid)] = found.get(int(pid), 0) + 1
    return found


def batches(url: str) -> tuple[float, float]:
    """Rows predicted and predictor calls so far (the batch-size histogram's sum and count)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = [0.0, 0.0]
    for i, part in enumerate(("sum", "count")):
        for value in re.findall(rf"^berth_batch_size_{part}\{{[^}}]*\}} (\S+)$", text, re.M):
            total[i] += float(value)
    return total[0], total[1]


def other_load(seconds: float = 2.0) -> float:
    """Cores the machine keeps busy while this script sleeps (no server of ours is running)."""
    before = busy_ticks()
    time.sleep(seconds)
    return (busy_ticks() - before) / HZ / seconds


def wait_for_quiet(cores: float, patience_s: float) -> float:
    """Wait, up to ``patience_s``, for other processes to use less than ``cores``; what they
    used at the last look."""
    deadline = time.monotonic() + patience_s
    while True:
        load = other_load()
        if load < cores or time.monotonic() > deadline:
            return load


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- server and load ---------------------------------------------------------------------------


@dataclass
class Server:
    home: Path
    workers: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    worker_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        cmd = [str(BIN / "berth"), "--home", str(self.home), "serve", "--port", "0"]
        cmd += ["--no-access-log", "--workers", str(self.workers)]
        out = self.log.open("wb")  # a file, never a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        out.close()
        deadline = time.monotonic() + timeout_s
        while not self.port:
            self._check(deadline)
            found = STARTED.search(self.log.read_text(errors="replace"))
            self.port = int(found.group(1)) if found else 0
            time.sleep(0.1)
        while not self._ready():
            self._check(deadline)
            time.sleep(0.2)
        if self.workers > 1:
            while len(self.worker_pids) < self.workers:
                self._check(deadline)
                self.worker_pids = workers_of(self.proc.pid)
                time.sleep(0.1)
        else:
            self.worker_pids = [self.proc.pid]

    def _check(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None or time.monotonic() > deadline:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"berth serve --workers {self.workers} did not start:\n{tail}")

    def _ready(self) -> bool:
        # Ten ready answers in a row over fresh connections: every worker has finished starting
        # (a worker accepts connections only once its models are loaded).
        try:
            for _ in range(10):
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status != 200:
                        return False
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wrk(url: str, connections: int, seconds: float, bodies: Path) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    cmd += ["-s", str(LUA), url]
    done = subprocess.run(
        cmd, env={**ENV, "BERTH_BENCH_BODIES": str(bodies)}, capture_output=True, text=True
    )
    found = re.search(r"^BENCH_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    stats: dict[str, Any] = json.loads(found.group(1))
    return stats


def measure(server: Server, args: argparse.Namespace, bodies: Path) -> dict[str, Any]:
    assert server.proc is not None
    url = f"{server.url}/v1/predict/{MODEL}"
    wrk(url, args.connections, args.warmup, bodies)
    time.sleep(0.5)  # what the warm-up left queued is answered before the timed run
    pids = sorted({server.proc.pid, *server.worker_pids})
    rows0, calls0 = batches(server.url)
    before = {pid: ticks(pid) for pid in pids}
    busy0, wrk0, t0 = busy_ticks(), children_cpu_s(), time.perf_counter()
    split: dict[int, int] = {}

    def look() -> None:  # halfway through, who holds wrk's connections
        time.sleep(args.duration / 2)
        split.update(connections_by_pid(server.port))

    looker = threading.Thread(target=look, daemon=True)
    looker.start()
    stats = wrk(url, args.connections, args.duration, bodies)
    elapsed = time.perf_counter() - t0
    looker.join()
    used = {pid: (ticks(pid) - before[pid]) / HZ for pid in pids}
    busy = (busy_ticks() - busy0) / HZ
    wrk_s = children_cpu_s() - wrk0
    server_s = sum(used.values())
    seconds = stats["duration_us"] / 1e6
    errors = {k: v for k, v in stats.items() if k.endswith("_errors") and v}
    rows1, calls1 = batches(server.url)
    return {
        "workers": server.workers,
        "requests": stats["requests"],
        "requests_per_s": stats["requests"] / seconds,
        "p50_ms": stats["latency_p50_us"] / 1000,
        "p99_ms": stats["latency_p99_us"] / 1000,
        "errors": errors,
        "worker_cpu_cores": [round(used[p] / elapsed, 3) for p in server.worker_pids],
        "worker_connections": [split.get(p, 0) for p in server.worker_pids],
        "rows_per_call": (rows1 - rows0) / max(1.0, calls1 - calls0),
        "server_cpu_cores": server_s / elapsed,
        "server_cpu_us_per_request": server_s / max(1, stats["requests"]) * 1e6,
        "wrk_cpu_cores": wrk_s / elapsed,
        "other_cpu_cores": max(0.0, (busy - server_s - wrk_s) / elapsed),
    }


def show(run: dict[str, Any]) -> None:
    cores = "+".join(f"{c:.2f}" for c in run["worker_cpu_cores"])
    print(
        f"  {run['workers']} worker(s): {run['requests_per_s']:7.0f} req/s  "
        f"p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  "
        f"workers {cores} cores  conns {run['worker_connections']}  "
        f"rows/call {run['rows_per_call']:.1f}  wrk {run['wrk_cpu_cores']:.2f}  "
        f"others {run['other_cpu_cores']:.2f}  {run['server_cpu_us_per_request']:.0f} us/req"
        + (f"  ERRORS {run['errors']}" if run["errors"] else ""),
        flush=True,
    )


# -- report ------------------------------------------------------------------------------------


def tree() -> str:
    """The commit of the berth measured (and whether its src/ differs from it)."""
    import berth

    src = Path(berth.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"berth from {src} (not a git checkout)"
    return f"berth {commit}{' with uncommitted changes in src/' if dirty else ''} ({src})"


def markdown(results: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = results["runs"]
    lines = [
        "# One worker against two (`bench/workers_bench.py`)",
        "",
        f"{results['started']}, {results['machine']}, {results['tree']}. HistGradientBoosting",
        "(100 iterations) on 30 float features, `berth serve --no-access-log --workers N`,",
        f"records on, one row per request on `POST /v1/predict/{MODEL}` cycling through {POOL}",
        f"rows, `wrk -t1 -c{results['connections']}`, {results['duration']:g} s after a "
        f"{results['warmup']:g} s warm-up, servers alternated.",
        "",
        "Connections: wrk's kept-alive connections each worker held halfway through the run.",
        "Rows/call: rows per predictor call (opportunistic micro-batching of concurrent requests).",
        "CPU columns are cores: each worker's, wrk's, and every other process's on the machine",
        "during the run (other engineers' work on a shared machine: read the figures by it).",
        "",
        "| run | workers | req/s | p50 ms | p99 ms | connections | rows/call | worker cores "
        "| wrk cores | other cores | CPU us/req |",
        "|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        cores = " + ".join(f"{c:.2f}" for c in r["worker_cpu_cores"])
        conns = " + ".join(str(c) for c in r["worker_connections"])
        lines.append(
            f"| {i} | {r['workers']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {conns} | {r['rows_per_call']:.1f} | {cores} "
            f"| {r['wrk_cpu_cores']:.2f} "
            f"| {r['other_cpu_cores']:.2f} | {r['server_cpu_us_per_request']:.0f} |"
        )
    summary = results["summary"]
    lines += [
        "",
        f"Mean req/s: one worker {summary['one']:,.0f}, two workers {summary['two']:,.0f}: "
        f"**{summary['ratio']:.2f}x** (target {TARGET}x; best runs {summary['best_ratio']:.2f}x).",
        f"Runs during which other processes used {summary['quiet']:g} cores or more: "
        f"{summary['noisy_runs']} of {len(runs)}"
        + (
            f"; over the other runs alone: {summary['quiet_ratio']:.2f}x."
            if summary["quiet_ratio"] is not None and summary["noisy_runs"]
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def summarize(runs: Sequence[dict[str, Any]], quiet: float) -> dict[str, Any]:
    def rates(n: int, only_quiet: bool = False) -> list[float]:
        return [
            r["requests_per_s"]
            for r in runs
            if r["workers"] == n and (not only_quiet or r["other_cpu_cores"] < quiet)
        ]

    one, two = rates(1), rates(2)
    summary: dict[str, Any] = {
        "one": statistics.mean(one),
        "two": statistics.mean(two),
        "ratio": statistics.mean(two) / statistics.mean(one),
        "best_ratio": max(two) / max(one),
        "quiet": quiet,
        "noisy_runs": sum(r["other_cpu_cores"] >= quiet for r in runs),
        "quiet_ratio": None,
    }
    calm_one, calm_two = rates(1, True), rates(2, True)
    if calm_one and calm_two:
        summary["quiet_ratio"] = statistics.mean(calm_two) / statistics.mean(calm_one)
    return summary


NOTES = "<!-- notes: kept when the figures above are measured again -->"


def kept_notes(output: Path) -> str:
    """The hand-written part of an earlier results file (from the NOTES line on)."""
    try:
        text = output.read_text()
    except OSError:
        return ""
    at = text.find(NOTES)
    return "\n" + text[at:] if at >= 0 else ""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="a home to (re)use; default a temporary one")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (1 then 2 workers)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS / "workers.md")
    parser.add_argument(
        "--quiet", type=float, default=0.25, help="cores others may use when a run starts"
    )
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for that before each run"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="berth-workers-bench-") as tmp:
        home = args.home or Path(tmp) / "home"
        bodies = prepare(home)
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        runs = []
        for round_ in range(args.rounds):
            for workers in (1, 2):
                server = Server(home, workers, Path(tmp) / f"serve-{round_}-{workers}.log")
                before = wait_for_quiet(args.quiet, args.patience)
                try:
                    server.start()
                    run = measure(server, args, bodies)
                finally:
                    server.stop()
                run["other_cpu_cores_before"] = before
                show(run)
                runs.append(run)
    results = {
        "started": started,
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "tree": tree(),
        "connections": args.connections,
        "duration": args.duration,
        "warmup": args.warmup,
        "runs": runs,
        "summary": summarize(runs, args.quiet),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(results) + kept_notes(args.output))
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
