"""One-sentence requests while a large request is in flight (issue 10, item 1): their latency
with Berth's default (a request over the batch size goes a call's worth at a time, each part to
the back of the queue) against the same server told to take the large request whole (a serving
config with ``max_batch_size`` above its size: what every request did before the split), and
against no large request at all.

The large request is 200 texts of about 300 words each to the demo ``sentiment`` model, sent
again as soon as it is answered by one client thread; another thread sends one sentence at a
time (64 different ones, from bench/peers/sentences.txt) and times each answer. Both servers are
``berth serve`` on free 127.0.0.1 ports, run one after the other.

    .venv/bin/python bench/large_request_bench.py [--home H] [--seconds 20]

Writes bench/results/large_requests.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from serve_bench import BIN, RESULTS, Server, berth_server, other_load  # noqa: E402

SENTENCES = (BENCH / "peers" / "sentences.txt").read_text().splitlines()
LARGE_TEXTS = 200


def long_text(i: int) -> str:
    words = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(30))
    return words  # about 300 words: past the encoder's 256 tokens, so every text is cut there


def post(server: Server, body: bytes, timeout: float = 300.0) -> float:
    request = urllib.request.Request(
        f"{server.base}/v1/predict/sentiment",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        r.read()
    return (time.perf_counter() - started) * 1000.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(server: Server, seconds: float, with_large: bool) -> dict[str, Any]:
    large = json.dumps({"texts": [long_text(i) for i in range(LARGE_TEXTS)]}).encode()
    small = [json.dumps({"texts": [s]}).encode() for s in SENTENCES]
    for body in small[:8]:
        post(server, body)
    stop = threading.Event()
    large_ms: list[float] = []

    def keep_large_in_flight() -> None:
        while not stop.is_set():
            large_ms.append(post(server, large))

    worker = threading.Thread(target=keep_large_in_flight, daemon=True)
    if with_large:
        worker.start()
        time.sleep(1.0)  # the first large request is under way
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        latencies.append(post(server, small[i % len(small)]))
        i += 1
    stop.set()
    if with_large:
        worker.join(timeout=600)
    return {
        "small_requests": len(latencies),
        "small_p50_ms": round(statistics.median(latencies), 1),
        "small_p99_ms": round(percentile(latencies, 0.99), 1),
        "small_max_ms": round(max(latencies), 1),
        "large_requests": len(large_ms),
        "large_median_ms": round(statistics.median(large_ms), 1) if large_ms else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="a Berth home with the demo models")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-large-"))
    home = args.home
    if home is None:
        home = work / "home"
        subprocess.run([str(BIN / "berth"), "--home", str(home), "demo"], check=True)
    whole = work / "whole.json"
    whole.write_text(
        json.dumps({"models": {"sentiment": {"max_batch_size": 256, "part_chars": 10**9}}})
    )
    setups = {
        "split (default)": berth_server(home, work, "split"),
        "whole (max_batch_size 256, no part_chars)": berth_server(
            home, work, "whole", "--config", str(whole)
        ),
    }
    results: dict[str, Any] = {"other_load_before": other_load(), "setups": {}}
    for name, server in setups.items():
        server.start()
        try:
            server.wait_ready(180)
            alone = measure(server, args.seconds / 2, with_large=False)
            busy = measure(server, args.seconds, with_large=True)
        finally:
            server.stop()
        results["setups"][name] = {"alone": alone, "with_large": busy}
        print(name, "alone", alone, "with a large request in flight", busy, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "large_requests.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# One-sentence requests while a 200-text request is in flight (sentiment)",
        "",
        f"`bench/large_request_bench.py`; other processes used {results['other_load_before']:.2f}"
        " cores before the start. Small requests are sent one at a time; the large one "
        f"({LARGE_TEXTS} texts of ~300 words) again as soon as it is answered.",
        "",
        "| setup | small p50 alone | small p99 alone | small p50 | small p99 | small max |"
        " large request median |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["setups"].items():
        a, b = r["alone"], r["with_large"]
        lines.append(
            f"| {name} | {a['small_p50_ms']} ms | {a['small_p99_ms']} ms | {b['small_p50_ms']} ms"
            f" | {b['small_p99_ms']} ms | {b['small_max_ms']} ms | {b['large_median_ms']} ms |"
        )
    (RESULTS / "large_requests.md").write_text("\n".join(lines) + "\n")
    print("wrote", RESULTS / "large_requests.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
