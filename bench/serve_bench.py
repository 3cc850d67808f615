"""Realtime serving figures for the README (issue 3, item 9): ``berth serve`` under wrk on
127.0.0.1, side by side with the in-process floor and a minimal FastAPI app (bench/minimal_app.py)
serving the same models, all in one run on the same machine.

- ``credit-risk``, one row per request on ``POST /v1/predict/credit-risk``: Berth with prediction
  records on and the access log off (the target), with the access log on, with records off (to
  attribute their cost), and with batching off (like for like with the minimal app), against the
  minimal app; floor: single-row ``predict_proba`` in a loop and one call on 32 rows.
- ``sentiment``, one sentence per request: Berth with its default micro-batching against the same
  server with batching off (a config file: ``{"models": {NAME: {"max_batch_size": 1}}}``) and the
  minimal app; floor: encoder + head on 1 sentence and on 32.

Each load runs with 1 and 32 connections (``wrk -t1``), a warm-up first, then a timed run; requests
cycle through 64 different rows or sentences. Every server is a subprocess on a free ephemeral port
of 127.0.0.1, started before the runs (in parallel) and stopped with SIGTERM afterwards. Thread
limits are the same everywhere: OpenMP and BLAS pools at 1 thread (threadpoolctl; what
``berth serve --threads 1`` sets), torch at the cores divided by the workers (Berth's default).

Alongside requests/s and latency, each run records the server's CPU time per request (from
/proc/PID/stat) and the CPU used by other processes on the machine during the run (from /proc/stat,
minus the server and wrk), so a noisy machine shows in the results instead of hiding in them.

    .venv/bin/python bench/serve_bench.py [--home H] [--duration 10] [--warmup 2] [--rounds 1]

A run during which other processes kept more than ``--noisy`` cores busy is repeated once while
the time budget allows; every run is kept in the JSON and the fastest of each is reported (other
processes only ever slow a run down). The in-process floor is measured before and after the servers.

Needs ``wrk`` (``make bench-serve`` installs it with apt-get); this script installs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LUA = BENCH / "wrk" / "post_bodies.lua"
BIN = Path(sys.executable).parent
HZ = os.sysconf("SC_CLK_TCK")
CONNECTIONS = (1, 32)
POOL = 64  # distinct rows / sentences that requests cycle through
BATCH = 32
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONUNBUFFERED": "1",
}
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    ENV.pop(_name, None)  # thread counts are set on purpose below, not inherited
CPUS = os.cpu_count() or 1
TORCH_THREADS = max(1, CPUS)  # berth serve's default with one worker: the cores / workers

# -- machine state ---------------------------------------------------------------------------------


def cpu_busy_ticks() -> int:
    """Busy jiffies of the whole machine (all cores)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in jiffies."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def other_load(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes while this script sleeps."""
    before = cpu_busy_ticks()
    time.sleep(seconds)
    return (cpu_busy_ticks() - before) / HZ / seconds


def settle(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until a server is idle (under 5% of a core over 0.2 s)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        before = process_ticks(pid)
        time.sleep(0.2)
        if (process_ticks(pid) - before) / HZ / 0.2 < 0.05:
            return


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    args: list[str]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        cmd = [a.replace("{port}", str(self.port)) for a in self.args]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("wb")  # a file, never a pipe: a full pipe would stall the server
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**ENV, **self.env}
        )
        out.close()

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        self.ready_s = time.perf_counter() - self.started_at
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base}{path}", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]


def check_answer(load: Load) -> str | None:
    """None if the server answers the first body with a prediction, else what went wrong."""
    body = load.bodies.read_text().splitlines()[0].encode()
    try:
        answer = load.server.post(load.path, body)
        if answer["predictions"][0]["label"] is None:
            return f"{load.server.name}: no label in {answer}"
    except urllib.error.HTTPError as exc:
        return f"{load.server.name} answered {exc.code}: {exc.read().decode(errors='replace')}"
    except (urllib.error.URLError, KeyError, IndexError, ValueError) as exc:
        return f"{load.server.name} answered {load.path} wrongly ({exc}):\n{load.server.tail()}"
    return None


def berth_server(
    home: Path, logs: Path, name: str, *extra: str, env: dict[str, str] | None = None
) -> Server:
    cmd = [str(BIN / "berth"), "--home", str(home), "serve", "--port", "{port}", "--threads", "1"]
    return Server(name, [*cmd, *extra], logs / f"{name}.log", env=env or {})


def minimal_server(home: Path, logs: Path) -> Server:
    cmd = [sys.executable, str(BENCH / "minimal_app.py"), "--home", str(home), "--port", "{port}"]
    cmd += ["--threads", "1", "--torch-threads", str(TORCH_THREADS)]
    return Server("minimal", cmd, logs / "minimal.log")


# -- load generation -------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, seconds: float, bodies: Path) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    cmd += ["-s", str(LUA), url]
    done = subprocess.run(
        cmd, env={**ENV, "BERTH_BENCH_BODIES": str(bodies)}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    found = re.search(r"^BENCH_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no figures:\n{done.stdout}\n{done.stderr}")
    stats: dict[str, Any] = json.loads(found.group(1))
    return stats


@dataclass
class Load:
    """One line of the results: a model's requests against one server."""

    model: str
    setup: str
    server: Server
    path: str
    bodies: Path
    runs: list[dict[str, Any]] = field(default_factory=list)


def measure(load: Load, connections: int, args: argparse.Namespace, round_: int) -> dict[str, Any]:
    server = load.server
    assert server.proc is not None
    url = f"{server.base}{load.path}"
    run_wrk(url, connections, args.warmup, load.bodies)
    settle(server.proc.pid)  # requests the warm-up left queued must not count in the timed run
    busy0, server0, wrk0 = cpu_busy_ticks(), process_ticks(server.proc.pid), children_cpu_s()
    load0, t0 = loadavg(), time.perf_counter()
    stats = run_wrk(url, connections, args.duration, load.bodies)
    elapsed = time.perf_counter() - t0
    busy = (cpu_busy_ticks() - busy0) / HZ
    server_s = (process_ticks(server.proc.pid) - server0) / HZ
    wrk_s = children_cpu_s() - wrk0
    seconds = stats["duration_us"] / 1e6
    errors = sum(stats[k] for k in stats if k.endswith("_errors"))
    run = {
        "model": load.model,
        "setup": load.setup,
        "connections": connections,
        "round": round_,
        "requests": stats["requests"],
        "requests_per_s": stats["requests"] / seconds,
        "p50_ms": stats["latency_p50_us"] / 1000,
        "p90_ms": stats["latency_p90_us"] / 1000,
        "p99_ms": stats["latency_p99_us"] / 1000,
        "max_ms": stats["latency_max_us"] / 1000,
        "mean_ms": stats["latency_mean_us"] / 1000,
        "errors": errors,
        "error_detail": {k: stats[k] for k in stats if k.endswith("_errors") and stats[k]},
        "server_cpu_cores": server_s / elapsed,
        "server_cpu_us_per_request": server_s / max(1, stats["requests"]) * 1e6,
        "wrk_cpu_cores": wrk_s / elapsed,
        "other_cpu_cores": max(0.0, (busy - server_s - wrk_s) / elapsed),
        "loadavg_start": load0,
        "loadavg_end": loadavg(),
    }
    load.runs.append(run)
    print(
        f"  {load.model:11} {load.setup:32} c={connections:<2} {run['requests_per_s']:8.1f} req/s"
        f"  p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms"
        f"  cpu {run['server_cpu_us_per_request']:7.0f} us/req  other {run['other_cpu_cores']:.2f}"
        + (f"  ERRORS {run['error_detail']}" if errors else ""),
        flush=True,
    )
    return run


def best(runs: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    """The attempt with the most requests/s: other processes only ever slow a run down."""
    return max(
        (r for r in runs if r["connections"] == connections), key=lambda r: r["requests_per_s"]
    )


def by_setup(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs per (model, setup), in the order they were first measured."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["model"], r["setup"]), []).append(r)
    return out


# -- in-process floor ------------------------------------------------------------------------------


def timed_calls(
    fn: Callable[[int], object], seconds: float, at_least: int = 20
) -> dict[str, float]:
    """Call ``fn(i)`` for about ``seconds``; per-call latencies and calls/s."""
    fn(0)
    fn(1)
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < at_least or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        i += 1
    total = time.perf_counter() - start
    times.sort()
    return {
        "calls": len(times),
        "calls_per_s": len(times) / total,
        "p50_ms": times[len(times) // 2] * 1000,
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1000,
        "mean_ms": statistics.fmean(times) * 1000,
    }


class Floor:
    """The models loaded in this process, called directly: what no server can beat."""

    def __init__(self, home: Path, records: list[dict[str, Any]], texts: list[str]) -> None:
        import berth
        from berth.runtime.codecs import to_frame
        from berth.runtime.validation import validate

        client = berth.connect(home=home)
        self.credit = client.load("credit-risk@production")
        self.sentiment = client.load("sentiment@production")
        limit_threads()
        sig = self.credit.signature
        self.records, self.texts = records, texts
        self.singles = [validate(sig, to_frame({"records": [r]}, sig)) for r in records]
        self.batch = validate(sig, to_frame({"records": records[:BATCH]}, sig))
        self.passes: list[dict[str, Any]] = []

    def measure(self, seconds: float) -> dict[str, Any]:
        predictor: Any = self.credit.predictor
        pipeline = predictor.model  # the scikit-learn Pipeline
        text_predictor: Any = self.sentiment.predictor
        classifier = text_predictor.model  # encoder + logistic head
        singles, batch, texts = self.singles, self.batch, self.texts
        n, m = len(singles), len(texts)
        credit: dict[str, Any] = {
            "unbatched": timed_calls(lambda i: pipeline.predict_proba(singles[i % n]), seconds),
            "batched_32": timed_calls(lambda i: pipeline.predict_proba(batch), seconds),
        }
        try:
            credit["steps_one_row"] = credit_steps(self.credit, self.records, seconds / 2)
        except Exception as exc:  # Berth's internals move; the floor must not depend on them
            credit["steps_one_row_error"] = {"error": f"{type(exc).__name__}: {exc}"}
        sentiment = {
            "unbatched": timed_calls(lambda i: classifier.predict_proba([texts[i % m]]), seconds),
            "batched_32": timed_calls(lambda i: classifier.predict_proba(texts[:BATCH]), seconds),
        }
        result = {"credit-risk": credit, "sentiment": sentiment}
        for f in result.values():
            f["batched_32"]["rows_per_s"] = f["batched_32"]["calls_per_s"] * BATCH
        self.passes.append(result)
        return result

    def best(self) -> dict[str, Any]:
        """Per figure, the pass with the highest rate (or the lowest median for the steps):
        other processes only ever slow a pass down."""
        out: dict[str, Any] = {}
        for model in ("credit-risk", "sentiment"):
            f: dict[str, Any] = {}
            for kind, key in (("unbatched", "calls_per_s"), ("batched_32", "rows_per_s")):
                f[kind] = max((p[model][kind] for p in self.passes), key=lambda r: r[key])
            steps = [p[model]["steps_one_row"] for p in self.passes if "steps_one_row" in p[model]]
            if steps:
                f["steps_one_row"] = {
                    name: min((s[name] for s in steps), key=lambda r: r["p50_ms"])
                    for name in steps[0]
                }
            errors = [p[model].get("steps_one_row_error") for p in self.passes]
            errors = [e for e in errors if e]
            if not steps and errors:
                f["steps_one_row_error"] = errors[0]["error"]
            out[model] = f
        return out


def credit_steps(loaded: Any, records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Where one request's time goes outside HTTP, step by step, one row per call."""
    from concurrent.futures import ThreadPoolExecutor

    import orjson
    import pandas as pd

    from berth.runtime import codecs
    from berth.runtime.validation import validate

    try:
        from berth.runtime.outputs import to_rows
    except ImportError:  # an older Berth
        to_rows = codecs.to_records

    sig, model = loaded.signature, loaded.predictor.model
    # The loaded version as the inference path calls it (``ModelHandle`` before it validates).
    version = loaded.path.pool.loaded_now(loaded.version) if hasattr(loaded, "path") else loaded
    decoder = getattr(codecs, "to_columns", codecs.to_frame)  # what /v1/predict uses
    bodies = [orjson.dumps({"records": [r]}) for r in records]
    n = len(records)

    def decode(i: int) -> Any:
        return decoder(orjson.loads(bodies[i % n]), sig)

    raw = [decode(i) for i in range(n)]
    singles = [validate(sig, r) for r in raw]
    outputs = [version.predict_validated(f) for f in singles]
    with ThreadPoolExecutor(1) as fresh:  # OpenMP thread limits are per thread: a new one has none
        fresh_thread = fresh.submit(
            timed_calls, lambda i: model.predict_proba(singles[i % n]), seconds
        ).result()
    return {
        "minimal app's work (json + DataFrame + predict_proba)": timed_calls(
            lambda i: model.predict_proba(pd.DataFrame(json.loads(bodies[i % n])["records"])),
            seconds,
        ),
        f"berth decode (orjson + {decoder.__name__})": timed_calls(decode, seconds),
        "berth validate": timed_calls(lambda i: validate(sig, raw[i % n]), seconds),
        "berth predict_validated (predict_proba + argmax + checks)": timed_calls(
            lambda i: version.predict_validated(singles[i % n]), seconds
        ),
        "berth to_records": timed_calls(lambda i: to_rows(outputs[i % n], sig), seconds),
        "predict_proba in a new thread, no threadpoolctl limit there": fresh_thread,
    }


def show_floor(result: dict[str, Any]) -> None:
    for model, f in result.items():
        print(
            f"  {model:11} unbatched {f['unbatched']['calls_per_s']:8.1f}/s "
            f"(p50 {f['unbatched']['p50_ms']:.2f} ms)  batched 32: "
            f"{f['batched_32']['rows_per_s']:8.1f} rows/s",
            flush=True,
        )


def limit_threads() -> None:
    """What berth serve --threads 1 sets after each load."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")
    threadpool_limits(limits=1, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(TORCH_THREADS)


# -- inputs ----------------------------------------------------------------------------------------


def credit_records(home: Path) -> list[dict[str, Any]]:
    """64 rows of the demo's own data, each checked against the signature."""
    import berth
    from berth.demo import credit
    from berth.errors import BerthError
    from berth.runtime.codecs import to_frame
    from berth.runtime.validation import validate

    sig = berth.connect(home=home).get_version("credit-risk@production").signature
    data = credit.generate().sample(frac=1.0, random_state=11)[sig.names]
    rows: list[dict[str, Any]] = []
    for record in json.loads(data.head(4 * POOL).to_json(orient="records")):
        try:
            validate(sig, to_frame({"records": [record]}, sig))
        except BerthError:
            continue
        rows.append(record)
        if len(rows) == POOL:
            break
    return rows


def sentiment_texts() -> list[str]:
    from berth.demo.sentiment import load_data

    texts = load_data()["text"].dropna().astype(str)
    return texts.sample(n=min(POOL, len(texts)), random_state=11).tolist()  # type: ignore[no-any-return]


def write_bodies(path: Path, bodies: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


# -- report ----------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def build_summary(runs: list[dict[str, Any]], floor: dict[str, Any]) -> dict[str, Any]:
    by = by_setup(runs)
    summary: dict[str, Any] = {}
    for (model, setup), attempts in by.items():
        for c in CONNECTIONS:
            summary[f"{model} | {setup} | c={c}"] = best(attempts, c)

    def rps(model: str, setup: str, c: int) -> float:
        return float(best(by[(model, setup)], c)["requests_per_s"])

    def cpu(model: str, setup: str, c: int) -> float:
        return float(best(by[(model, setup)], c)["server_cpu_us_per_request"])

    ratios: dict[str, float] = {}
    for c in CONNECTIONS:
        ratios[f"credit-risk Berth (records on, access log off) / minimal app, c={c}"] = ratio(
            rps("credit-risk", BERTH_DEFAULT, c), rps("credit-risk", MINIMAL, c)
        )
        ratios[f"credit-risk Berth (records on, access log on) / minimal app, c={c}"] = ratio(
            rps("credit-risk", BERTH_ACCESS, c), rps("credit-risk", MINIMAL, c)
        )
        ratios[f"credit-risk Berth (records off, access log off) / minimal app, c={c}"] = ratio(
            rps("credit-risk", BERTH_NO_RECORDS, c), rps("credit-risk", MINIMAL, c)
        )
        ratios[f"credit-risk Berth batching off (records on) / minimal app, c={c}"] = ratio(
            rps("credit-risk", BERTH_NO_BATCH, c), rps("credit-risk", MINIMAL, c)
        )
        ratios[f"credit-risk server CPU per request, Berth default / minimal app, c={c}"] = ratio(
            cpu("credit-risk", BERTH_DEFAULT, c), cpu("credit-risk", MINIMAL, c)
        )
        ratios[f"credit-risk Berth (records on, access log off) / floor unbatched, c={c}"] = ratio(
            rps("credit-risk", BERTH_DEFAULT, c), floor["credit-risk"]["unbatched"]["calls_per_s"]
        )
        ratios[f"sentiment Berth batching on / batching off, c={c}"] = ratio(
            rps("sentiment", BERTH_DEFAULT, c), rps("sentiment", BERTH_NO_BATCH, c)
        )
        ratios[f"sentiment Berth batching on / minimal app, c={c}"] = ratio(
            rps("sentiment", BERTH_DEFAULT, c), rps("sentiment", MINIMAL, c)
        )
    ratios["sentiment Berth batching on, c=32 / floor batched 32"] = ratio(
        rps("sentiment", BERTH_DEFAULT, 32), floor["sentiment"]["batched_32"]["rows_per_s"]
    )
    ratios["sentiment Berth batching on, c=32 / floor unbatched"] = ratio(
        rps("sentiment", BERTH_DEFAULT, 32), floor["sentiment"]["unbatched"]["calls_per_s"]
    )
    credit_ratio = ratios["credit-risk Berth (records on, access log off) / minimal app, c=32"]
    credit_ratio_1 = ratios["credit-risk Berth (records on, access log off) / minimal app, c=1"]
    batch_ratio = ratios["sentiment Berth batching on / batching off, c=32"]
    p99 = float(best(by[("sentiment", BERTH_DEFAULT)], 1)["p99_ms"])
    targets = [
        {
            "target": "credit-risk throughput (c=32) >= 0.8x minimal app, records on",
            "measured": f"{credit_ratio:.2f}x (c=1: {credit_ratio_1:.2f}x)",
            "met": credit_ratio >= 0.8,
        },
        {
            "target": "sentiment throughput at 32 connections >= 3x same server, batching off",
            "measured": f"{batch_ratio:.2f}x",
            "met": batch_ratio >= 3.0,
        },
        {
            "target": "sentiment p99 < 100 ms at 1 connection (batching on)",
            "measured": f"{p99:.1f} ms",
            "met": p99 < 100.0,
        },
    ]
    return {"best_runs": summary, "ratios": ratios, "targets": targets}


def markdown(results: dict[str, Any]) -> str:
    floor = results["floor"]
    noise = results["noise"]
    lines = [
        "# Realtime serving benchmark",
        "",
        f"`bench/serve_bench.py`, {results['finished']}: {results['machine']['cpus']} cores, "
        f"Python {results['machine']['python']}, {results['machine']['wrk']}. "
        f"wrk -t1 on 127.0.0.1, {results['settings']['duration_s']:g} s per run after "
        f"{results['settings']['warmup_s']:g} s warm-up, {results['settings']['rounds']} "
        f"round(s), a run disturbed by other processes (over {results['settings']['noisy']:g} "
        "cores) repeated once and the faster attempt shown; requests cycle through "
        f"{POOL} different rows / sentences. One uvicorn worker "
        "everywhere; OpenMP and BLAS at 1 thread (threadpoolctl, `berth serve --threads 1`), "
        f"torch at {TORCH_THREADS} threads (Berth's default: cores / workers).",
        "",
        f"Machine noise: other processes used {noise['other_cpu_cores_mean']:.2f} cores on "
        f"average during the runs (max {noise['other_cpu_cores_max']:.2f}; "
        f"{noise['idle_before_cores']:.2f} before the start), load average "
        f"{noise['loadavg_start']:.2f} -> {noise['loadavg_end']:.2f}. "
        "Server CPU per request is the steadier figure when the machine is busy.",
        "",
        *(line for n in results.get("notes", []) for line in (f"Note: {n}", "")),
        f"Berth's batching defaults: {results['settings'].get('berth_batching', '?')}. "
        "'Batching off' is the same server with `max_batch_size` 1 for both models (config "
        "file), the like-for-like comparison with the minimal app, which never batches. "
        "'Records off' and 'access log on' show what those features cost.",
        "",
    ]
    header = [
        "| setup | conns | req/s | p50 ms | p99 ms | server CPU us/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, unit in (("credit-risk", "rows/s"), ("sentiment", "sentences/s")):
        f = floor[model]
        title = "one row per request" if model == "credit-risk" else "one sentence per request"
        lines += [f"## {model} ({title})", "", *header]
        lines.append(
            f"| in-process floor, unbatched (1 per call, calls/s) | - | "
            f"{f['unbatched']['calls_per_s']:.0f} | {f['unbatched']['p50_ms']:.2f} | "
            f"{f['unbatched']['p99_ms']:.2f} | - | - |"
        )
        lines.append(
            f"| in-process floor, batched 32 ({unit}) | - | "
            f"{f['batched_32']['rows_per_s']:.0f} | {f['batched_32']['p50_ms']:.2f} | "
            f"{f['batched_32']['p99_ms']:.2f} | - | - |"
        )
        for (run_model, setup), attempts in by_setup(results["runs"]).items():
            if run_model != model:
                continue
            for c in CONNECTIONS:
                r = best(attempts, c)
                tries = sum(1 for x in attempts if x["connections"] == c)
                err = f" ({r['errors']} errors)" if r["errors"] else ""
                err += f" (best of {tries})" if tries > 1 else ""
                lines.append(
                    f"| {setup}{err} | {c} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {r['server_cpu_us_per_request']:.0f} | "
                    f"{r['other_cpu_cores']:.2f} |"
                )
        lines.append("")
        if model == "credit-risk":
            lines += [
                "In-process, one row, median per call (where a request's time goes outside HTTP):",
                "",
                "| step | p50 ms |",
                "|---|---:|",
            ]
            for step, t in f.get("steps_one_row", {}).items():
                lines.append(f"| {step} | {t['p50_ms']:.3f} |")
            if "steps_one_row_error" in f:
                lines.append(f"| (failed: {f['steps_one_row_error']}) | - |")
            lines.append("")
    lines += ["## Ratios", "", "| ratio | value |", "|---|---:|"]
    for name, value in results["summary"]["ratios"].items():
        lines.append(f"| {name} | {value:.2f} |")
    lines += ["", "## Targets (issue 3)", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["summary"]["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    lines.append("")
    return "\n".join(lines)


def berth_batching_defaults() -> str:
    """What the Berth under test batches by default, read from it (it changes)."""
    from berth.flavors import base

    found = []
    for name in ("TEXT_BATCHING", "TABULAR_BATCHING"):
        config = getattr(base, name, None)
        if config is not None:
            found.append(
                f"{name.split('_')[0].lower()} models {config.max_batch_size} rows / "
                f"{config.max_latency_ms:g} ms"
            )
    return ", ".join(found) or "unknown"


def write_report(results: dict[str, Any]) -> None:
    """Ratios, targets and the markdown table from the raw figures (also: --report FILE)."""
    results["summary"] = build_summary(results["runs"], results["floor"])
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "serve.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'serve.json'} and {RESULTS / 'serve.md'}")


# -- main ------------------------------------------------------------------------------------------

MINIMAL = "minimal FastAPI app"
BERTH_DEFAULT = "Berth (records on, access log off)"
BERTH_ACCESS = "Berth (records on, access log on)"
BERTH_NO_RECORDS = "Berth (records off, access log off)"
BERTH_NO_BATCH = "Berth, batching off (records on, access log off)"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Realtime serving: berth serve vs a minimal FastAPI app vs the in-process "
        "floor, under wrk. Writes bench/results/serve.json and serve.md."
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="a Berth home with the demo models (default: "
        "a new temporary one, filled with `berth demo`)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds; the fastest attempt of each run is shown"
    )
    parser.add_argument(
        "--floor-seconds", type=float, default=3.0, help="seconds per in-process figure"
    )
    parser.add_argument(
        "--noisy",
        type=float,
        default=0.5,
        help="repeat a run once when other processes used more cores than this during it",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds the whole script may take: disturbed runs are repeated only within it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--report", type=Path, help="only rebuild serve.md (and the summary) from a serve.json"
    )
    args = parser.parse_args()
    if args.report is not None:
        write_report(json.loads(args.report.read_text()))
        return 0
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it with `make bench-serve` or "
            "`sudo apt-get install -y wrk`, then run this script again.",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="berth-serve-bench-"))
    logs = work / "logs"
    idle_before = other_load()
    print(f"other processes use {idle_before:.2f} of {CPUS} cores before the start", flush=True)
    home = args.home
    if home is None:
        home = work / "home"
        print(f"registering the demo models in {home} ...", flush=True)
        subprocess.run(
            [str(BIN / "berth"), "--home", str(home), "demo"],
            env=ENV,
            check=True,
            capture_output=True,
        )
    home = home.resolve()

    records = credit_records(home)
    texts = sentiment_texts()
    credit_bodies = write_bodies(work / "credit.jsonl", [{"records": [r]} for r in records])
    text_bodies = write_bodies(work / "sentiment.jsonl", [{"texts": [t]} for t in texts])

    print("in-process floor ...", flush=True)
    floor = Floor(home, records, texts)
    show_floor(floor.measure(args.floor_seconds))

    no_batching = work / "no-batching.json"
    no_batching.write_text(
        json.dumps({"models": {m: {"max_batch_size": 1} for m in ("credit-risk", "sentiment")}})
    )
    servers = {
        "berth": berth_server(home, logs, "berth", "--no-access-log"),
        "berth-access-log": berth_server(home, logs, "berth-access-log", "--access-log"),
        "berth-no-records": berth_server(
            home, logs, "berth-no-records", "--no-records", "--no-access-log"
        ),
        "berth-no-batching": berth_server(
            home, logs, "berth-no-batching", "--no-access-log", "--config", str(no_batching)
        ),
        "minimal": minimal_server(home, logs),
    }
    credit_path, text_path = "/v1/predict/credit-risk", "/v1/predict/sentiment"
    loads = [
        Load("credit-risk", MINIMAL, servers["minimal"], credit_path, credit_bodies),
        Load("credit-risk", BERTH_DEFAULT, servers["berth"], credit_path, credit_bodies),
        Load("credit-risk", BERTH_ACCESS, servers["berth-access-log"], credit_path, credit_bodies),
        Load(
            "credit-risk",
            BERTH_NO_RECORDS,
            servers["berth-no-records"],
            credit_path,
            credit_bodies,
        ),
        Load(
            "credit-risk", BERTH_NO_BATCH, servers["berth-no-batching"], credit_path, credit_bodies
        ),
        Load("sentiment", MINIMAL, servers["minimal"], text_path, text_bodies),
        Load("sentiment", BERTH_DEFAULT, servers["berth"], text_path, text_bodies),
        Load("sentiment", BERTH_NO_BATCH, servers["berth-no-batching"], text_path, text_bodies),
    ]
    notes: list[str] = []
    try:
        print("starting servers ...", flush=True)
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready(timeout_s=300)
            print(
                f"  {server.name} ready on :{server.port} after {server.ready_s:.1f}s", flush=True
            )
        for ld in loads:  # a wrong answer must fail here, not be benchmarked
            problem = check_answer(ld)
            if problem is not None:
                # Seen: a model failing to load in a race with another model's import. Say so in
                # the results, restart that server once, and give up if it happens again.
                note = f"{ld.server.name} restarted once: {problem.splitlines()[0][:300]}"
                print(f"  NOTE {note}", flush=True)
                notes.append(note)
                ld.server.stop()
                ld.server.start()
                ld.server.wait_ready(timeout_s=300)
                problem = check_answer(ld)
                if problem is not None:
                    raise RuntimeError(problem)
        plan = [
            (round_, c, ld)
            for round_ in range(1, args.rounds + 1)
            for model in ("credit-risk", "sentiment")
            for c in CONNECTIONS
            for ld in loads
            if ld.model == model
        ]
        per_run = args.duration + args.warmup + 1.5  # with wrk's start and the idle wait
        shown = 0
        for done, (round_, c, ld) in enumerate(plan, start=1):
            if round_ != shown:
                print(f"round {round_} of {args.rounds}", flush=True)
                shown = round_
            run = measure(ld, c, args, round_)
            # Repeat a disturbed run only if the whole script still ends within the budget:
            # the repeat, the runs still to do, the second floor pass and the shutdown.
            left = (len(plan) - done + 1) * per_run + 7 * args.floor_seconds + 15
            if run["other_cpu_cores"] > args.noisy:
                if time.perf_counter() - started + left < args.budget:
                    print("    disturbed by other processes: once more", flush=True)
                    measure(ld, c, args, round_)
                else:
                    print("    disturbed by other processes (no time left to repeat)", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        for server in servers.values():
            # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is a clean stop
            if server.proc is not None and server.proc.returncode not in (0, -15, None):
                print(f"note: {server.name} exited with {server.proc.returncode}", flush=True)

    print("in-process floor, again (the best of both passes is reported) ...", flush=True)
    show_floor(floor.measure(args.floor_seconds))
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    all_runs = [r for ld in loads for r in ld.runs]
    others = [r["other_cpu_cores"] for r in all_runs]
    results: dict[str, Any] = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "python": platform.python_version(),
            "cpus": CPUS,
            "platform": platform.platform(),
            "wrk": (wrk_version.stdout or wrk_version.stderr).split("Copyright")[0].strip(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "noisy": args.noisy,
            "budget_s": args.budget,
            "connections": list(CONNECTIONS),
            "wrk": "-t1 --latency --timeout 10s, Lua: bench/wrk/post_bodies.lua",
            "distinct_inputs": POOL,
            "threads": {
                "openmp_blas": 1,
                "torch": TORCH_THREADS,
                "why": "one row's predict_proba is fastest on one OpenMP thread; a busy 2-core "
                "machine makes extra threads spin. torch keeps Berth's default (cores / workers).",
            },
            "berth_serve": "--threads 1, 1 worker, default poll interval, records to Parquet",
            "berth_batching": berth_batching_defaults(),
            "minimal_app": "bench/minimal_app.py: async endpoints calling the model inline",
        },
        "servers": {s.name: {"ready_s": s.ready_s, "cmd": s.args} for s in servers.values()},
        "noise": {
            "idle_before_cores": idle_before,
            "other_cpu_cores_mean": statistics.fmean(others),
            "other_cpu_cores_max": max(others),
            "loadavg_start": all_runs[0]["loadavg_start"],
            "loadavg_end": all_runs[-1]["loadavg_end"],
        },
        "notes": notes,
        "floor": floor.best(),
        "floor_passes": floor.passes,
        "runs": all_runs,
    }
    results["elapsed_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2) + "\n")  # the raw figures
    write_report(results)
    if args.keep:
        print(f"kept {work} (server logs in {logs})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
