"""What durable prediction records cost (issue 10, item 3): ``berth serve`` on the demo's
``credit-risk`` with records as they are by default and with ``BERTH_RECORDS_DURABLE=1``, both
servers up at once, wrk rounds alternating between them (``wrk -t1 -c16``, one row per request,
64 distinct bodies), medians over the rounds and the ratio durable / default per round. The
machine is shared, so the figures of wrk move; the in-process CPU per request of the same model
(bench/records_bench.py, records off / on / durable) comes after the wrk rounds and is the
figure noise cannot blur.

    .venv/bin/python bench/records_durability_bench.py [--rounds 4] [--duration 8]
        [--warmup 2] [--connections 16] [--no-inprocess]

Writes bench/results/records_durability.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import serve_bench as sb  # noqa: E402  (bench/ is not a package)

RESULTS = BENCH / "results"
MODEL = "credit-risk"


def prepare(home: Path, folder: Path) -> Path:
    """Register the demo's credit-risk in ``home``; the request bodies, one per line."""
    import berth
    from berth.demo import credit
    from berth.demo.run import _credit_risk

    _credit_risk(berth.connect(home=home), lambda line: print(f"  {line}", flush=True))
    frame = credit.generate(rows=64, seed=7)[list(credit.FEATURES)]
    bodies = folder / "bodies.jsonl"
    lines = [json.dumps({"records": [row]}) for row in frame.to_dict(orient="records")]
    bodies.write_text("\n".join(lines) + "\n")
    return bodies


def measure(server: sb.Server, bodies: Path, args: argparse.Namespace) -> dict[str, Any]:
    assert server.proc is not None
    url = f"{server.base}/v1/predict/{MODEL}"
    sb.run_wrk(url, args.connections, args.warmup, bodies)
    sb.settle(server.proc.pid)
    busy0, cpu0, wrk0 = sb.cpu_busy_ticks(), sb.process_ticks(server.proc.pid), sb.children_cpu_s()
    t0 = time.perf_counter()
    stats = sb.run_wrk(url, args.connections, args.duration, bodies)
    elapsed = time.perf_counter() - t0
    server_s = (sb.process_ticks(server.proc.pid) - cpu0) / sb.HZ
    busy_s = (sb.cpu_busy_ticks() - busy0) / sb.HZ
    wrk_s = sb.children_cpu_s() - wrk0
    requests = max(1, int(stats["requests"]))
    return {
        "setup": server.name,
        "rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["latency_p50_us"] / 1000,
        "p99_ms": stats["latency_p99_us"] / 1000,
        "errors": sum(stats[k] for k in stats if k.endswith("_errors")),
        "server_cpu_us_per_request": server_s / requests * 1e6,
        "other_cpu_cores": max(0.0, (busy_s - server_s - wrk_s) / elapsed),
    }


def records_of(home: Path) -> int:
    from berth.runtime.record_reader import RecordReader

    return int(RecordReader(home / "records").read(MODEL, columns=["prediction_id"]).num_rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-inprocess", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-durability-bench-") as tmp:
        work = Path(tmp)
        bodies = prepare(work / "home-default", work)
        # Two homes of the same registration: each server's records stay its own.
        subprocess.run(["cp", "-a", str(work / "home-default"), str(work / "home-durable")])
        servers = [
            sb.berth_server(work / "home-default", work, "default", "--no-access-log"),
            sb.berth_server(
                work / "home-durable",
                work,
                "durable",
                "--no-access-log",
                env={"BERTH_RECORDS_DURABLE": "1"},
            ),
        ]
        idle = sb.other_load()
        for s in servers:
            s.start()
        try:
            for s in servers:
                s.wait_ready(180)
            runs: list[dict[str, Any]] = []
            for r in range(args.rounds):
                for s in servers if r % 2 == 0 else servers[::-1]:
                    run = measure(s, bodies, args) | {"round": r}
                    runs.append(run)
                    print(
                        f"round {r} {s.name:8s} {run['rps']:7.0f} req/s  p50 {run['p50_ms']:.1f}"
                        f" ms  p99 {run['p99_ms']:.1f} ms  server "
                        f"{run['server_cpu_us_per_request']:.0f} us/req  other "
                        f"{run['other_cpu_cores']:.2f} cores",
                        flush=True,
                    )
        finally:
            for s in servers:
                s.stop()
        stored = {s.name: records_of(work / f"home-{s.name}") for s in servers}
    inprocess = None if args.no_inprocess else in_process()
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "args": vars(args),
        "idle_other_cores": idle,
        "runs": runs,
        "records_stored": stored,
        "inprocess": inprocess,
    }
    write(results)
    return 0


def in_process() -> list[dict[str, Any]]:
    """bench/records_bench.py on credit-risk: CPU per request, records off / on / durable."""
    out = RESULTS / "records_durability_inprocess.json"
    cmd = [sys.executable, str(BENCH / "records_bench.py"), "--model", MODEL, "--rows", "1"]
    cmd += ["--durable", "--batches", "12", "--json", str(out)]
    subprocess.run(cmd, check=True)
    results: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    out.unlink()
    return results


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "records_durability.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    by = {name: [r for r in runs if r["setup"] == name] for name in ("default", "durable")}
    ratios = []
    for r in range(results["args"]["rounds"]):
        pair = {x["setup"]: x for x in runs if x["round"] == r}
        ratios.append(pair["durable"]["rps"] / pair["default"]["rps"])
    lines = [
        "# Durable prediction records: what they cost (issue 10, item 3)",
        "",
        f"`bench/records_durability_bench.py`, {results['when']}. `berth serve` on the demo's "
        f"`credit-risk` (one row per request), wrk -t1 -c{results['args']['connections']}, "
        f"{results['args']['duration']:g} s after {results['args']['warmup']:g} s of warm-up, "
        f"{results['args']['rounds']} rounds alternating; both servers up at once, each in its "
        f"own home. Other processes used {results['idle_other_cores']:.2f} cores before the "
        "start.",
        "",
        "| records | req/s (median) | p50 ms | p99 ms | server CPU µs/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rs in by.items():
        lines.append(
            f"| {name} | {statistics.median(r['rps'] for r in rs):,.0f} "
            f"| {statistics.median(r['p50_ms'] for r in rs):.2f} "
            f"| {statistics.median(r['p99_ms'] for r in rs):.2f} "
            f"| {statistics.median(r['server_cpu_us_per_request'] for r in rs):,.0f} "
            f"| {statistics.median(r['other_cpu_cores'] for r in rs):.2f} |"
        )
    lines += [
        "",
        f"Durable / default req/s per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median **{statistics.median(ratios):.3f}**. Records stored: "
        + ", ".join(f"{k} {v:,}" for k, v in results["records_stored"].items())
        + ".",
    ]
    for res in results["inprocess"] or []:
        lines += [
            "",
            f"In process (bench/records_bench.py --model {res['model']}, 16 callers, min of "
            f"{res['batches']} batches of {res['requests_per_batch']} requests), CPU µs per "
            "request:",
            "",
            "| records | process | ratio to off | records' own CPU | own / off | req per sync |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in ("off", "on", "durable"):
            r = res[name]
            lines.append(
                f"| {name} | {r['process_us_min']:.0f} | {r.get('process_ratio', 1):.3f} "
                f"| {r.get('records_us', 0):.1f} | {r.get('records_share', 0):.3f} "
                f"| {r.get('requests_per_commit', 0):.1f} |"
            )
    (RESULTS / "records_durability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
