"""Berth against its peers (issue 9, item 1): the same models served by ``berth serve``, a bare
FastAPI app, the strongest simple FastAPI app we could write, MLServer 1.7 and BentoML 1.4 (with
and without adaptive batching), measured with wrk on 127.0.0.1 side by side in one run, rounds
alternating. Writes bench/results/peers.json (every run) and bench/results/peers.md (medians,
ratios, targets).

    make bench-peers                                    # the full run (about 50 minutes)
    .venv/bin/python bench/peers_bench.py --quick       # 2 s runs, 1 round: for development
    .venv/bin/python bench/peers_bench.py --only numeric --servers berth,simple,mlserver

Models (bench/peers/models.py): ``numeric``, a HistGradientBoostingClassifier on 30 float64
features, registered in a temporary Berth home (alias ``production``) and given to the peers as
the same fitted estimator in a joblib file; ``sentiment``, Berth's demo model (MiniLM + logistic
head), whose registered artifact files (encoder folder, head arrays) the peers load directly and
run with plain transformers + numpy, the same pooling and normalisation as Berth's flavor. Every
server's answer to the first body of each scenario is checked against the in-process
``predict_proba`` (numeric) or Berth's own answer (sentiment) before anything is measured.

Scenarios: numeric one row per request at 1 and 16 connections, 64 rows per request at 16
connections, sentiment one sentence per request (64 sentences of varied length from the demo's
data, bench/peers/sentences.txt) at 16 and 1 connections. Each run: a warm-up, a wait until every
server is idle, then the timed run (``wrk -t1``, bench/wrk/post_bodies.lua cycling through 64
distinct bodies, exact percentiles). Each round runs every scenario against every server, the
servers' order rotated by one each round; the report gives medians over the rounds. Alongside,
each run records the server's CPU time per request (its whole process tree, from /proc) and the
CPU that other processes used meanwhile (helpers of bench/serve_bench.py).

Choices, so that the peers are measured as their users run them:

- Each peer in its own venv (bench/peers/.venvs/NAME, built by bench/peers/venvs.py from the
  pinned bench/peers/requirements-NAME.txt, torch 2.13.0 first; scikit-learn, numpy,
  transformers held to the Berth venv's versions). The two FastAPI apps run in the Berth venv
  (it has FastAPI, uvicorn and orjson) and import nothing of Berth.
- One worker and one process for every server: MLServer with ``parallel_workers: 0`` (its
  default adds a worker process), BentoML with ``workers=1``; otherwise their defaults (MLServer's
  debug access log and metrics server, BentoML's thread settings), each speaking its natural JSON
  API: OIP v2 with one [n, 30] FP64 tensor for MLServer, ``{"input": [[...]]}`` for BentoML,
  ``{"records": [...]}`` or ``{"texts": [...]}`` for Berth and the FastAPI apps.
- The peers that run the tree model on OpenMP (MLServer, BentoML) also once more with
  ``OMP_NUM_THREADS=1`` (setups ``*-omp1``): their default of a thread per core spins on a busy
  2-core machine, and a target met only against that would say little. The numeric targets
  count the best peer of all of them.
- Text models batched as a reasonable user would set it: MLServer adaptive batching 32 / 5 ms,
  BentoML ``batchable=True`` with 32 sentences (1,024 rows for numeric) within 1 s.
- The strongest simple app (bench/peers/simple_app.py): async endpoint, orjson in and out, the
  model called inline, OpenMP at 1 thread, no access log: the ceiling of "just FastAPI".
- Berth as a new user gets it: ``berth serve`` with records and access log on; also with
  ``--no-records`` and with ``--no-access-log`` (what each costs), and the same server's OIP
  route with MLServer's exact request.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import serve_bench as sb
from peers import models, report, venvs
from peers.launch import Context, start_all
from peers.servers import HZ, Server, stop_all, ticks

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
ENV = {**sb.ENV, "BENTOML_DO_NOT_TRACK": "True"}  # BentoML's usage statistics leave the machine


@dataclass(frozen=True)
class Scenario:
    key: str
    model: str  # numeric | sentiment
    rows: int  # rows (or sentences) per request
    connections: int
    title: str


SCENARIOS = (
    Scenario("numeric-1row-c1", "numeric", 1, 1, "numeric, 1 row per request, 1 connection"),
    Scenario("numeric-1row-c16", "numeric", 1, 16, "numeric, 1 row per request, 16 connections"),
    Scenario(
        "numeric-64rows-c16", "numeric", 64, 16, "numeric, 64 rows per request, 16 connections"
    ),
    Scenario("sentiment-c16", "sentiment", 1, 16, "sentiment, 1 sentence, 16 connections"),
    Scenario("sentiment-c1", "sentiment", 1, 1, "sentiment, 1 sentence, 1 connection"),
)


@dataclass(frozen=True)
class Setup:
    """One column of the results: a server (per model) and the API it is called through."""

    name: str
    text: str
    models: tuple[str, ...]
    server: Callable[[str], str]  # model -> server name
    path: Callable[[str], str]  # model -> URL path
    body: str  # body kind, see bodies()


def _v1(model: str) -> str:
    return f"/v1/predict/{model}"


def _oip(model: str) -> str:
    return f"/v2/models/{model}/infer"


BOTH = ("numeric", "sentiment")
SETUPS = (
    Setup("berth", "`berth serve` as a new user gets it: records on, access log on, /v1 JSON",
          BOTH, lambda m: "berth", _v1, "v1"),
    Setup("berth-oip", "the same Berth server, OIP route, MLServer's request ([n, 30] FP64)",
          ("numeric",), lambda m: "berth", _oip, "oip"),
    Setup("berth-no-records", "`berth serve --no-records` (access log on)",
          ("numeric",), lambda m: "berth-no-records", _v1, "v1"),
    Setup("berth-no-access-log", "`berth serve --no-access-log` (records on)",
          ("numeric",), lambda m: "berth-no-access-log", _v1, "v1"),
    Setup("bare", "bare FastAPI: sync `def` endpoint, pydantic request model, default JSON "
          "response, uvicorn defaults", BOTH, lambda m: f"bare-{m}", _v1, "v1"),
    Setup("simple", "strongest simple app: `async def`, orjson, model inline, OpenMP 1 thread",
          BOTH, lambda m: f"simple-{m}", _v1, "v1"),
    Setup("mlserver", "MLServer 1.7.1 (mlserver-sklearn / custom runtime with adaptive batching "
          "32 / 5 ms), parallel_workers 0", BOTH, lambda m: f"mlserver-{m}", _oip, "oip"),
    Setup("bentoml", "BentoML 1.4.40, `@bentoml.api`, workers=1",
          BOTH, lambda m: f"bentoml-{m}", lambda m: "/predict", "bento"),
    Setup("bentoml-batch", "BentoML 1.4.40, `@bentoml.api(batchable=True)`, workers=1",
          BOTH, lambda m: f"bentoml-batch-{m}", lambda m: "/predict", "bento"),
    # The peers with OMP_NUM_THREADS=1 as a user who read about thread oversubscription would
    # set it (their default is one thread per core): OpenMP for the tree model, and torch's
    # intra-op pool for sentiment (torch reads it at start), like Berth's one torch thread on
    # two cores.
    Setup("mlserver-omp1", "`mlserver` with OMP_NUM_THREADS=1",
          BOTH, lambda m: f"mlserver-omp1-{m}", _oip, "oip"),
    Setup("bentoml-omp1", "`bentoml` with OMP_NUM_THREADS=1",
          ("numeric",), lambda m: f"bentoml-omp1-{m}", lambda m: "/predict", "bento"),
    Setup("bentoml-batch-omp1", "`bentoml-batch` with OMP_NUM_THREADS=1",
          BOTH, lambda m: f"bentoml-batch-omp1-{m}", lambda m: "/predict", "bento"),
)  # fmt: skip


# -- servers ---------------------------------------------------------------------------------------


# -- bodies and answers ----------------------------------------------------------------------------


def bodies(ctx: Context, scenario: Scenario, kind: str) -> list[dict[str, Any]]:
    """The 64 request bodies of a scenario in one API's shape."""
    if scenario.model == "sentiment":
        texts = ctx.prepared.texts
        if kind == "oip":
            return [models.oip_text_body(t) for t in texts]
        return [{"texts": [t]} for t in texts]
    rows, n = ctx.prepared.rows, scenario.rows
    chunks = [rows[i * n : (i + 1) * n] for i in range(models.POOL)]
    if kind == "oip":
        return [models.oip_body(c) for c in chunks]
    if kind == "bento":
        return [{"input": c.tolist()} for c in chunks]
    return [models.records_body(c) for c in chunks]


def probabilities(answer: Any) -> np.ndarray:
    """[n, classes] from any of the servers' answers."""
    if isinstance(answer, list):  # BentoML: the nested list of probabilities
        return np.asarray(answer, dtype=np.float64)
    if "predictions" in answer:  # Berth /v1 and the FastAPI apps
        rows = [list(p["probabilities"].values()) for p in answer["predictions"]]
        return np.asarray(rows, dtype=np.float64)
    for out in answer["outputs"]:  # OIP: Berth's "probabilities", MLServer's "predict_proba"
        if out["name"] in ("probabilities", "predict_proba"):
            return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
    raise ValueError(f"no probabilities in {str(answer)[:300]}")


def check_answers(
    ctx: Context, servers: dict[str, Server], scenario: Scenario, setups: list[Setup]
) -> None:
    """Every server answers the first body like the reference, or the run stops here."""
    expected: np.ndarray | None = None
    if scenario.model == "numeric":
        import joblib

        model = joblib.load(ctx.prepared.numeric_joblib)
        expected = model.predict_proba(ctx.prepared.rows[: scenario.rows])
    tolerance = 1e-9 if scenario.model == "numeric" else 1e-4
    for setup in setups:  # "berth" comes first: for text it is the reference
        server = servers[setup.server(scenario.model)]
        body = json.dumps(bodies(ctx, scenario, setup.body)[0]).encode()
        try:
            got = probabilities(server.post(setup.path(scenario.model), body))
        except Exception as exc:
            problem = f"{setup.name} failed on {scenario.key}: {exc}\n{server.tail()}"
            raise RuntimeError(problem) from exc
        if expected is None:
            expected = got
        if got.shape != expected.shape or not np.allclose(got, expected, atol=tolerance, rtol=0):
            raise RuntimeError(f"{setup.name} answers {scenario.key} with {got}, not {expected}")


# -- measuring -------------------------------------------------------------------------------------


def settle(servers: dict[str, Server], timeout_s: float = 30.0) -> None:
    """Wait until all running servers together use under 0.1 cores (queued work drained)."""
    deadline = time.perf_counter() + timeout_s
    pids = [p for s in servers.values() for p in s.pids()]
    while time.perf_counter() < deadline:
        before = ticks(pids)
        time.sleep(0.25)
        if (ticks(pids) - before) / HZ / 0.25 < 0.1:
            return


def measure(
    ctx: Context,
    servers: dict[str, Server],
    scenario: Scenario,
    setup: Setup,
    args: argparse.Namespace,
    round_: int,
) -> dict[str, Any]:
    server = servers[setup.server(scenario.model)]
    url = f"{server.base}{setup.path(scenario.model)}"
    body_file = ctx.work / "bodies" / f"{scenario.key}-{setup.body}.jsonl"
    if not body_file.exists():
        body_file.parent.mkdir(parents=True, exist_ok=True)
        models.write_lines(body_file, bodies(ctx, scenario, setup.body))
    sb.run_wrk(url, scenario.connections, args.warmup, body_file)
    settle(servers)
    pids = server.pids()
    busy0, server0, wrk0 = sb.cpu_busy_ticks(), ticks(pids), sb.children_cpu_s()
    t0 = time.perf_counter()
    stats = sb.run_wrk(url, scenario.connections, args.duration, body_file)
    elapsed = time.perf_counter() - t0
    server_s = (ticks(pids) - server0) / HZ
    busy, wrk_s = (sb.cpu_busy_ticks() - busy0) / HZ, sb.children_cpu_s() - wrk0
    errors = {k: stats[k] for k in stats if k.endswith("_errors") and stats[k]}
    run = {
        "scenario": scenario.key,
        "setup": setup.name,
        "round": round_,
        "connections": scenario.connections,
        "rows_per_request": scenario.rows,
        "requests": stats["requests"],
        "requests_per_s": stats["requests"] / (stats["duration_us"] / 1e6),
        **{f"{k}_ms": stats[f"latency_{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")},
        "mean_ms": stats["latency_mean_us"] / 1000,
        "errors": sum(errors.values()),
        "error_detail": errors,
        "server_cpu_cores": server_s / elapsed,
        "server_cpu_us_per_request": server_s / max(1, stats["requests"]) * 1e6,
        "wrk_cpu_cores": wrk_s / elapsed,
        "other_cpu_cores": max(0.0, (busy - server_s - wrk_s) / elapsed),
    }
    print(
        f"  {scenario.key:19} {setup.name:20} {run['requests_per_s']:8.0f} req/s  "
        f"p50 {run['p50_ms']:7.2f}  p99 {run['p99_ms']:7.2f} ms  "
        f"cpu {run['server_cpu_us_per_request']:7.0f} us/req  other {run['other_cpu_cores']:.2f}"
        + (f"  ERRORS {errors}" if errors else ""),
        flush=True,
    )
    return run


def run_phase(
    ctx: Context,
    servers: dict[str, Server],
    model: str,
    setups: list[Setup],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every scenario of one model against every setup, round after round, order rotated."""
    scenarios = [s for s in SCENARIOS if s.model == model]
    print(f"{model}: starting {len(setups)} setups ...", flush=True)
    start_all(ctx, servers, sorted({s.server(model) for s in setups}))
    for scenario in scenarios:
        check_answers(ctx, servers, scenario, setups)
    runs = []
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(setups)
        order = setups[shift:] + setups[:shift]
        print(f"{model}, round {round_} of {args.rounds}: {', '.join(s.name for s in order)}")
        for scenario in scenarios:
            for setup in order:
                runs.append(measure(ctx, servers, scenario, setup, args, round_))
    return runs


# -- the run ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per timed run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (order rotated each)")
    parser.add_argument("--only", choices=("numeric", "sentiment"), help="one model only")
    parser.add_argument(
        "--servers",
        help="comma-separated setups (default all): " + ",".join(s.name for s in SETUPS),
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-up, 1 round")
    parser.add_argument("--work", type=Path, help="work folder to reuse (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument(
        "--report", type=Path, help="only rebuild peers.md (and the targets) from a peers.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    return args


def chosen_setups(args: argparse.Namespace, model: str) -> list[Setup]:
    names = args.servers.split(",") if args.servers else [s.name for s in SETUPS]
    unknown = set(names) - {s.name for s in SETUPS}
    if unknown:
        raise SystemExit(f"unknown setups: {', '.join(sorted(unknown))}")
    return [s for s in SETUPS if s.name in names and model in s.models]


def needed_venvs(setups: list[Setup]) -> list[str]:
    return sorted({v for s in setups for v in venvs.NAMES if s.name.startswith(v)})


def main() -> int:
    args = parse_args()
    if args.report is not None:
        write(json.loads(args.report.read_text()))
        return 0
    # A SIGTERM to this script unwinds through the finally below, which stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench-peers` installs it.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    work = (args.work or Path(tempfile.mkdtemp(prefix="berth-peers-bench-"))).resolve()
    idle_before = sb.other_load()
    print(f"other processes use {idle_before:.2f} of {sb.CPUS} cores; work folder {work}")
    phases = [m for m in ("numeric", "sentiment") if args.only in (None, m)]
    plan = {m: chosen_setups(args, m) for m in phases}
    pythons = {v: venvs.ensure(v) for v in needed_venvs([s for p in plan.values() for s in p])}
    ctx = Context(work, models.prepare(work), pythons, ENV)
    servers: dict[str, Server] = {}
    runs: list[dict[str, Any]] = []
    try:
        for model, setups in plan.items():
            runs += run_phase(ctx, servers, model, setups, args)
        ready = {n: s.ready_s for n, s in servers.items()}
    finally:
        stop_all(list(servers.values()))
    results = collect(args, ctx, plan, runs, idle_before, started)
    results["ready_s_last_phase"] = ready
    write(results)
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def collect(
    args: argparse.Namespace,
    ctx: Context,
    plan: dict[str, list[Setup]],
    runs: list[dict[str, Any]],
    idle_before: float,
    started: float,
) -> dict[str, Any]:
    others = [r["other_cpu_cores"] for r in runs]
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "elapsed_s": time.perf_counter() - started,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "quick": args.quick,
            "wrk": "-t1 --latency --timeout 10s, Lua: bench/wrk/post_bodies.lua",
            "distinct_bodies": models.POOL,
            "rows_per_request_large": models.BATCH_ROWS,
        },
        "machine": machine(),
        "versions": versions(list(ctx.pythons)),
        "setups": {s.name: s.text for p in plan.values() for s in p},
        "scenario_titles": {s.key: s.title for s in SCENARIOS if s.model in plan},
        "noise": {
            "idle_before_cores": idle_before,
            "other_cpu_cores_mean": statistics.fmean(others) if others else 0.0,
            "other_cpu_cores_max": max(others, default=0.0),
        },
        "notes": noise_notes(runs, idle_before),
        "runs": runs,
    }


def noise_notes(runs: list[dict[str, Any]], idle_before: float) -> list[str]:
    """Say so when other processes took a real share of the machine."""
    busy = [r for r in runs if r["other_cpu_cores"] > 0.3]
    if not busy and idle_before < 0.3:
        return []
    return [
        f"other processes kept {idle_before:.2f} cores busy before the start and over 0.3 "
        f"cores during {len(busy)} of {len(runs)} runs (see other load): on a 2-core machine "
        "such runs are slowed by an unknown amount, and threads that spin (OpenMP, torch) "
        "also inflate the CPU per request; compare servers within one round.",
    ]


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cpus": sb.CPUS,
        "memory_gb": memory_kb / 2**20,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).split("Copyright")[0].strip(),
    }


KEY_PACKAGES = ("mlserver", "mlserver-sklearn", "bentoml", "fastapi", "uvicorn", "pydantic")
SHARED = ("scikit-learn", "numpy", "torch", "transformers")


def versions(peer_venvs: list[str]) -> dict[str, Any]:
    berth_venv = {}
    for name in ("berth", "fastapi", "uvicorn", "orjson", *SHARED):
        try:
            berth_venv[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    peers, frozen = {}, {}
    for venv in peer_venvs:
        frozen[venv] = venvs.freeze(venv)
        lower = {k.lower(): v for k, v in frozen[venv].items()}
        peers[venv] = {k: lower[k] for k in (*KEY_PACKAGES, *SHARED) if k in lower}
    return {"berth_venv": berth_venv, "peers": peers, "peer_venvs_frozen": frozen}


def write(results: dict[str, Any]) -> None:
    report.summarize(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = report.markdown(results)
    (RESULTS / "peers.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'peers.json'} and {RESULTS / 'peers.md'}")


if __name__ == "__main__":
    sys.exit(main())
