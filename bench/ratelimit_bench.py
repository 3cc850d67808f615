"""What per-principal rate limits cost on the request path (issue 11): ``credit-risk``, one row
per request on ``POST /v1/predict/credit-risk`` with a predictor key (auth on in every setup),
without a limit, with in-process buckets and with buckets in the real Redis on 127.0.0.1:6379.

In process (robust on a noisy 2-core machine): the ASGI app driven directly, one request after
another, CPU time (``time.process_time``) per request, the three setups taking turns request by
request; and the middleware alone (``RateLimit`` in front of an app that answers at once), CPU
and wall time a request: the wall time of the Redis setup is its round trip, which a request
waits for (the event loop serves others meanwhile). The limits are set so high that nothing is
refused: what is measured is the check.

    .venv/bin/python bench/ratelimit_bench.py [--blocks 5] [--block-requests 300]

Writes bench/results/ratelimit.json and ratelimit.md. Needs Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import auth_bench as ab  # noqa: E402  (bench/ helpers: the credit-risk home, ASGI driving)
import serve_bench as sb  # noqa: E402

RESULTS = BENCH / "results"
REDIS_URL = "redis://127.0.0.1:6379/0"
NEVER = {"rate": 1e9, "burst": 1_000_000_000}  # a limit nothing reaches


async def in_process(home: Path, key: str, args: argparse.Namespace) -> dict[str, Any]:
    from berth.app import build_server
    from berth.config import PathOptions, RateLimits, ServeOptions, Settings

    sb.limit_threads()
    options = ServeOptions(path=PathOptions(poll_interval_s=0), access_log=False)
    prefix = f"berth-bench:{uuid.uuid4().hex}:"
    limits = RateLimits.model_validate({"roles": {"predictor": NEVER}})
    base: dict[str, Any] = {"home": home, "key_pepper": ab.PEPPER, "auth": True}
    apps = {
        "no limit": (build_server(Settings(**base), options), key),
        "in-process buckets": (build_server(Settings(**base, rate_limits=limits), options), key),
        "Redis buckets": (
            build_server(
                Settings(
                    **base,
                    rate_limits=limits,
                    rate_limit_redis_url=REDIS_URL,
                    rate_limit_redis_prefix=prefix,
                ),
                options,
            ),
            key,
        ),
    }
    bodies = [json.dumps({"records": [r]}).encode() for r in sb.credit_records(home)]
    per: dict[str, list[float]] = {name: [] for name in apps}
    contexts = [app.router.lifespan_context(app) for app, _ in apps.values()]
    for context in contexts:
        await context.__aenter__()
    try:
        for app, k in apps.values():  # warm-up: models loaded, the key cached, Redis connected
            await ab._cpu_per_request(app, k, bodies, 200)
        for _block in range(args.blocks):
            found = await ab._interleaved(apps, bodies, args.block_requests)
            for name, value in found.items():
                per[name].append(value)
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    return {
        "cpu_us_per_request": {name: statistics.median(v) for name, v in per.items()},
        "blocks": per,
        "middleware_alone": await middleware_alone(args, prefix),
    }


async def middleware_alone(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """``RateLimit`` in front of an app that answers at once, the principal a predictor key."""
    from berth.config import RateLimit as Limit
    from berth.config import RateLimits
    from berth.registry.access import Principal, acting_as
    from berth.server.ratelimit import RateLimit, RateLimiter, RedisBuckets

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RateLimits(roles={"predictor": Limit(**NEVER)})
    redis_buckets = RedisBuckets(REDIS_URL, prefix)
    setups = {
        "no middleware": nothing,
        "in-process buckets": RateLimit(nothing, RateLimiter(limits)),
        "Redis buckets": RateLimit(nothing, RateLimiter(limits, redis_buckets)),
    }
    scope = ab._scope("/v1/predict/credit-risk", None)
    n = args.alone_requests
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    wall: dict[str, list[float]] = {name: [] for name in setups}
    with acting_as(Principal("bench", "predictor", via="key")):
        for target in setups.values():
            await ab._drive(target, dict(scope), b"")  # Redis connected, script loaded
        for _ in range(args.blocks):
            for name, target in setups.items():
                started, ticks = time.process_time(), time.perf_counter()
                for _ in range(n):
                    await ab._drive(target, dict(scope), b"")
                cpu[name].append((time.process_time() - started) / n * 1e6)
                wall[name].append((time.perf_counter() - ticks) / n * 1e6)
    await redis_buckets.aclose()
    return {
        "cpu_us": {name: statistics.median(v) for name, v in cpu.items()},
        "wall_us": {name: statistics.median(v) for name, v in wall.items()},
        "requests": n,
    }


def markdown(results: dict[str, Any]) -> str:
    local = results["in_process"]
    cpu = local["cpu_us_per_request"]
    off = cpu["no limit"]
    alone = local["middleware_alone"]
    bare_cpu, bare_wall = alone["cpu_us"]["no middleware"], alone["wall_us"]["no middleware"]
    lines = [
        "# Rate limits on the request path",
        "",
        f"{results['machine']}. credit-risk (the demo's pipeline), one row per request on "
        "`POST /v1/predict/credit-risk`, records on, access log off, auth on with a predictor "
        "key in every setup; the limit (predictor role) set so high that nothing is refused. "
        f"Redis {results['redis_version']} on 127.0.0.1. Generated by "
        "`bench/ratelimit_bench.py`.",
        "",
        "## In process (CPU time per request, the ASGI app driven directly, the setups taking "
        f"turns request by request, median of {results['settings']['blocks']} blocks of "
        f"{results['settings']['block_requests']})",
        "",
        "| setup | CPU / request | against no limit |",
        "|---|---|---|",
    ]
    for name, value in cpu.items():
        lines.append(f"| {name} | {value:,.1f} us | {value / off - 1:+.1%} |")
    lines += [
        "",
        f"## The middleware alone ({alone['requests']:,} requests a block, in front of an app "
        "that answers at once)",
        "",
        "| setup | CPU / request | wall time / request | its own CPU | its own wall time |",
        "|---|---|---|---|---|",
    ]
    for name in alone["cpu_us"]:
        c, w = alone["cpu_us"][name], alone["wall_us"][name]
        lines.append(
            f"| {name} | {c:.1f} us | {w:.1f} us | {c - bare_cpu:.1f} us | {w - bare_wall:.1f} us |"
        )
    lines += [
        "",
        "In-process buckets: a dict lookup and a little arithmetic per request, no I/O. Redis: "
        "one `EVALSHA` round trip per request (the token-bucket Lua script, atomic on Redis's "
        "clock); its wall time is latency a request waits (the event loop serves other "
        "requests meanwhile), its CPU is redis-py's command encoding and reply parsing in the "
        "server process, plus Redis's own work in its process (not counted here). In-process "
        "CPU figures are the robust ones on this shared 2-core machine.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-requests", type=int, default=300)
    parser.add_argument("--alone-requests", type=int, default=5_000)
    args = parser.parse_args()
    import redis

    store = redis.Redis.from_url(REDIS_URL)
    redis_version = store.info("server")["redis_version"]
    store.close()
    work = Path(tempfile.mkdtemp(prefix="berth-ratelimit-bench-"))
    try:
        home = work / "home"
        print("registering credit-risk", flush=True)
        key = ab.register(home)
        print("in process", flush=True)
        local = asyncio.run(in_process(home, key, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "redis_version": redis_version,
        "settings": vars(args),
        "in_process": local,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ratelimit.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "ratelimit.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
