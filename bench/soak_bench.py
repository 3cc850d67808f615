"""A soak run (issue 10, item 9): ``berth serve`` with both demo models at a fixed request rate
for ten minutes, good and bad requests mixed, and ``production`` of credit-risk moved twice
(to v2 a third of the way in, back to v1 at two thirds). What must hold:

- no 5xx answer, ever (bad requests get their 4xx; timeouts of the client count as failures);
- the server's resident memory flat: the last minute's median within 10 % of the median of the
  minute after warm-up;
- every prediction id that was answered is in the prediction records exactly once (read after a
  clean shutdown);
- answers follow the alias moves: after each move, credit-risk@production answers with the new
  version within the poll interval plus its load time.

The load is open-loop (requests start on a fixed schedule, whatever the answers do), from one
asyncio client with httpx; at most 64 requests are in flight at once. Mix: credit-risk one row
over /v1 (40 %), credit-risk three rows over OIP (15 %), sentiment one sentence (20 %), and bad
requests (25 %: malformed JSON, a missing feature, a wrong type, an unknown model, an unknown
version, too many texts, a bad OIP tensor).

    .venv/bin/python bench/soak_bench.py [--home H] [--seconds 600] [--rate 40]

Writes bench/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from serve_bench import BIN, RESULTS, berth_server, other_load  # noqa: E402

SENTENCES = (BENCH / "peers" / "sentences.txt").read_text().splitlines()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def requests(home: Path) -> list[tuple[float, str, str, bytes, int | None]]:
    """(weight, kind, path, body, expected status or None for 200) of each request kind."""
    records = json.loads((home / "demo" / "credit-risk.json").read_text())["records"]
    oip = (home / "demo" / "credit-risk-oip.json").read_bytes()
    one = json.dumps({"records": records[:1]}).encode()
    missing = dict(records[0])
    missing.pop("income")
    wrong = dict(records[0], age="forty")
    big = json.dumps({"texts": ["a few words"] * 300}).encode()
    bad_tensor = json.dumps(
        {"inputs": [{"name": "age", "shape": [2], "datatype": "INT64", "data": [1]}]}
    ).encode()
    return [
        (0.40, "credit v1", "/v1/predict/credit-risk@production", one, None),
        (0.15, "credit oip", "/v2/models/credit-risk/infer", oip, None),
        (0.20, "sentiment", "/v1/predict/sentiment", b"", None),  # body drawn per request
        (0.04, "malformed", "/v1/predict/credit-risk", b'{"records": [', 400),
        (0.04, "missing feature", "/v1/predict/credit-risk", _records(missing), 422),
        (0.04, "wrong type", "/v1/predict/credit-risk", _records(wrong), 422),
        (0.03, "unknown model", "/v1/predict/no-such-model", one, 404),
        (0.03, "unknown version", "/v1/predict/credit-risk/99", one, 404),
        (0.04, "too many texts", "/v1/predict/sentiment", big, 413),
        (0.03, "bad tensor", "/v2/models/credit-risk/infer", bad_tensor, 400),
    ]


def _records(record: dict[str, Any]) -> bytes:
    return json.dumps({"records": [record]}).encode()


async def drive(
    base: str, home: Path, seconds: float, rate: float, moves: list[tuple[float, int]]
) -> dict[str, Any]:
    import httpx

    kinds = requests(home)
    weights = [k[0] for k in kinds]
    rng = random.Random(7)
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    unexpected: list[str] = []
    answered: list[str] = []
    versions_after: list[tuple[float, int]] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(64)
    # Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s) would
    # close them under a request being sent (a client-side race, not a server fault).
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=3.0)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as http:

        async def one(kind: tuple[float, str, str, bytes, int | None], at: float) -> None:
            _, name, path, body, expected = kind
            if name == "sentiment":
                body = json.dumps({"texts": [rng.choice(SENTENCES)]}).encode()
            try:
                r = await http.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                failures.append(f"{name}: {type(exc).__name__} {exc}")
                return
            finally:
                gate.release()
            statuses[(name, r.status_code)] += 1
            want = 200 if expected is None else expected
            if r.status_code != want:
                unexpected.append(f"{name}: {r.status_code} {r.text[:200]}")
                return
            if expected is None:
                doc = r.json()
                if "predictions" in doc:
                    answered.extend(p["prediction_id"] for p in doc["predictions"])
                    if name == "credit v1":
                        versions_after.append((at, int(doc["version"])))
                else:
                    answered.extend(doc["parameters"]["prediction_ids"])

        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        pending_moves = list(moves)
        moved: list[tuple[float, int]] = []
        n = 0
        while (now := time.perf_counter() - start) < seconds:
            if pending_moves and now >= pending_moves[0][0]:
                _, version = pending_moves.pop(0)
                await asyncio.to_thread(
                    subprocess.run,
                    [
                        str(BIN / "berth"),
                        "--home",
                        str(home),
                        "models",
                        "alias",
                        "credit-risk",
                        "production",
                        str(version),
                    ],
                    check=True,
                    capture_output=True,
                )
                moved.append((time.perf_counter() - start, version))
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(kind, time.perf_counter() - start))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)
    return {
        "sent": n,
        "statuses": {f"{k[0]} {k[1]}": v for k, v in sorted(statuses.items())},
        "unexpected": unexpected[:20],
        "unexpected_count": len(unexpected),
        "client_failures": failures[:20],
        "client_failure_count": len(failures),
        "answered_ids": answered,
        "versions_after": versions_after,
        "moved": moved,
    }


def switch_delays(
    versions: list[tuple[float, int]], moves: list[tuple[float, int]]
) -> list[float | None]:
    """Seconds from each alias move (the command's end) to the first request answered by the
    new version after which no request got the old one."""
    out: list[float | None] = []
    ends = [at for at, _ in moves[1:]] + [float("inf")]
    for (at, version), end in zip(moves, ends, strict=True):
        after = [(t, v) for t, v in versions if at <= t < end]  # until the next move
        wrong = [t for t, v in after if v != version]
        last_wrong = max(wrong) if wrong else at
        right = [t for t, v in after if v == version and t >= last_wrong]
        out.append(round(right[0] - at, 2) if right else None)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="a Berth home with the demo models (copied)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-soak-"))
    home = work / "home"
    if args.home is not None:
        subprocess.run(["cp", "-a", str(args.home), str(home)], check=True)
    else:
        subprocess.run([str(BIN / "berth"), "--home", str(home), "demo"], check=True)
    # Both demo aliases where the demo put them, whatever an earlier run did to the copy.
    subprocess.run(
        [
            str(BIN / "berth"),
            "--home",
            str(home),
            "models",
            "alias",
            "credit-risk",
            "production",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    reader_root = home / "records"
    before = set()
    if reader_root.exists():
        before = _record_ids(reader_root)
    server = berth_server(home, work, "soak", "--poll-interval", "1")
    load_before = other_load()
    server.start()
    server.wait_ready(180)
    assert server.proc is not None
    pid = server.proc.pid
    rss: list[tuple[float, int]] = []
    moves = [(args.seconds / 3, 2), (2 * args.seconds / 3, 1)]

    async def run() -> dict[str, Any]:
        started = time.perf_counter()

        async def sample() -> None:
            while True:
                rss.append((time.perf_counter() - started, rss_bytes(pid)))
                await asyncio.sleep(5.0)

        sampler = asyncio.create_task(sample())
        try:
            return await drive(server.base, home, args.seconds, args.rate, moves)
        finally:
            sampler.cancel()

    try:
        outcome = asyncio.run(run())
    finally:
        server.stop()
    recorded = _record_ids(reader_root, count=True)
    answered = outcome.pop("answered_ids")
    counts = collections.Counter(answered)
    missing = [i for i in counts if recorded.get(i, 0) == 0 and i not in before]
    repeated = [i for i in counts if recorded.get(i, 0) > 1]
    warm = [b for t, b in rss if 60.0 <= t < 120.0] or [b for _, b in rss[: max(1, len(rss) // 5)]]
    last = [b for t, b in rss if t >= args.seconds - 60.0] or [b for _, b in rss[-3:]]
    growth = statistics.median(last) / statistics.median(warm) - 1.0
    five_xx = sum(v for k, v in outcome["statuses"].items() if k.split()[-1].startswith("5"))
    result = {
        "seconds": args.seconds,
        "rate": args.rate,
        "other_load_before": load_before,
        **outcome,
        "five_xx": five_xx,
        "answered_predictions": len(answered),
        "missing_from_records": len(missing),
        "recorded_more_than_once": len(repeated),
        "rss_after_warmup_mb": round(statistics.median(warm) / 2**20, 1),
        "rss_last_minute_mb": round(statistics.median(last) / 2**20, 1),
        "rss_growth": round(growth, 4),
        "rss_samples_mb": [(round(t, 1), round(b / 2**20, 1)) for t, b in rss],
        "switch_delays_s": switch_delays(outcome["versions_after"], outcome["moved"]),
    }
    result.pop("versions_after")
    verdict = {
        "no 5xx": five_xx == 0 and outcome["client_failure_count"] == 0,
        "every status as expected": outcome["unexpected_count"] == 0,
        "RSS flat within 10 %": abs(growth) <= 0.10,
        "every answered prediction recorded once": not missing and not repeated,
        "alias moves followed": all(d is not None for d in result["switch_delays_s"]),
    }
    result["verdict"] = verdict
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Soak: `berth serve`, both demo models, fixed rate, two alias moves",
        "",
        f"`bench/soak_bench.py --seconds {args.seconds:g} --rate {args.rate:g}`: "
        f"{outcome['sent']:,} requests; other processes used {load_before:.2f} cores at the start.",
        "",
        "| check | result | held |",
        "|---|---|---|",
        f"| 5xx answers / client failures | {five_xx} / {outcome['client_failure_count']} |"
        f" {'yes' if verdict['no 5xx'] else '**no**'} |",
        f"| answers other than expected | {outcome['unexpected_count']} |"
        f" {'yes' if verdict['every status as expected'] else '**no**'} |",
        f"| RSS after warm-up / last minute | {result['rss_after_warmup_mb']} MB /"
        f" {result['rss_last_minute_mb']} MB ({growth:+.1%}) |"
        f" {'yes' if verdict['RSS flat within 10 %'] else '**no**'} |",
        f"| answered predictions / missing from records / recorded twice |"
        f" {len(answered):,} / {len(missing)} / {len(repeated)} |"
        f" {'yes' if verdict['every answered prediction recorded once'] else '**no**'} |",
        f"| seconds from each alias move to answers by the new version |"
        f" {result['switch_delays_s']} |"
        f" {'yes' if verdict['alias moves followed'] else '**no**'} |",
        "",
        "Statuses by request kind:",
        "",
        *[f"- {k}: {v:,}" for k, v in outcome["statuses"].items()],
    ]
    if outcome["unexpected"]:
        lines += ["", "First unexpected answers:", "", *[f"- `{u}`" for u in outcome["unexpected"]]]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(verdict.values()) else 1


def _record_ids(root: Path, count: bool = False) -> Any:
    """Prediction ids in the records, through the one record reader."""
    from berth.runtime.record_reader import RecordReader

    reader = RecordReader(root)
    ids: list[str] = []
    for model in reader.models():
        ids += reader.read(model, columns=["prediction_id"]).column("prediction_id").to_pylist()
    return collections.Counter(ids) if count else set(ids)


if __name__ == "__main__":
    raise SystemExit(main())
