"""Per-principal rate limits: token buckets by key name, role or default; 429 JSON naming the
limit with Retry-After; probes never limited; per client address with auth off; in process by
default, and shared through the real Redis across two real server processes."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tests.server.conftest import Served, tabular_home
from tests.server.test_auth_matrix import PEPPER, Clients, make_app, serving, settings
from tests.server.test_tls import server_process

from berth.app import Berth
from berth.config import RateLimit, RateLimits
from berth.server.ratelimit import LocalBuckets, RedisBuckets

REDIS_URL = "redis://127.0.0.1:6379/0"
SLOW = 0.001  # tokens a second: none come back during a test


def limits(**kw: Any) -> RateLimits:
    return RateLimits.model_validate(kw)


def assert_limited(response: httpx.Response, *named: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith("rate limit exceeded")
    for part in named:
        assert part in error, error
    assert int(response.headers["retry-after"]) >= 1


# -- the bucket ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    limit = RateLimit(rate=4.0, burst=3)
    assert [buckets.take_now("k", limit).allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take_now("k", limit)
    assert refused.retry_after_s == pytest.approx(0.25)
    clock.now += 0.25  # one token back
    assert buckets.take_now("k", limit).allowed
    assert not buckets.take_now("k", limit).allowed
    assert buckets.take_now("other", limit).allowed  # a bucket per key
    clock.now += 3600  # idle for long: full again, never over the burst
    assert [buckets.take_now("k", limit).allowed for _ in range(4)] == [True, True, True, False]


def test_full_buckets_are_swept_when_there_are_too_many() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock, max_keys=3)
    limit = RateLimit(rate=1.0, burst=1)
    for key in ("a", "b", "c"):
        assert buckets.take_now(key, limit).allowed
    clock.now += 0.5
    assert not buckets.take_now("a", limit).allowed  # half a token: kept
    clock.now += 0.6  # all of them full again
    assert buckets.take_now("d", limit).allowed
    assert set(buckets._buckets) == {"d"}


# -- in process, auth on -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return tabular_home(tmp_path_factory.mktemp("ratelimit") / "home")


@pytest.fixture(scope="module")
def keys(home: Served) -> dict[str, str]:
    with Berth(settings(home.home)) as local:
        names = ("predictor-a", "predictor-b", "vip", "viewer", "admin")
        roles = ("predictor", "predictor", "predictor", "viewer", "admin")
        return {
            name: local.create_key(name, role).key for name, role in zip(names, roles, strict=True)
        }


@pytest.fixture
def limited(home: Served, keys: dict[str, str]) -> Iterator[Clients]:
    rules = limits(
        roles={"predictor": {"rate": SLOW, "burst": 3}},
        keys={"vip": {"rate": SLOW, "burst": 5}},
        default={"rate": SLOW, "burst": 2},
    )
    with serving(make_app(home.home, auth=True, rate_limits=rules)) as clients:
        yield clients


def _predict(server: Clients, key: str | None, home: Served, **kw: Any) -> httpx.Response:
    body = {"records": home.numeric_rows.head(1).to_dict(orient="records")}
    return server.call("POST", "/v1/predict/numeric", key, json=body, **kw)


def test_each_principal_gets_its_roles_or_its_own_limit(
    limited: Clients, home: Served, keys: dict[str, str]
) -> None:
    for _ in range(3):
        assert _predict(limited, keys["predictor-a"], home).status_code == 200
    refused = _predict(limited, keys["predictor-a"], home)
    assert_limited(refused, "'predictor-a'", "predictor role's limit", "0.001 requests/s", "3")
    # Any route counts, once limited every route is refused.
    assert_limited(limited.call("GET", "/v1/models", keys["predictor-a"]))
    # Another key of the role has a bucket of its own.
    assert _predict(limited, keys["predictor-b"], home).status_code == 200
    # A key named in the limits takes its own limit over its role's.
    for _ in range(5):
        assert _predict(limited, keys["vip"], home).status_code == 200
    assert_limited(_predict(limited, keys["vip"], home), "'vip' is over its own limit", "burst 5")
    # A role without a limit takes the default.
    for _ in range(2):
        assert limited.call("GET", "/v1/models", keys["viewer"]).status_code == 200
    assert_limited(limited.call("GET", "/v1/models", keys["viewer"]), "the default limit")


def test_probes_and_refused_credentials_take_no_token(
    limited: Clients, home: Served, keys: dict[str, str]
) -> None:
    for _ in range(10):  # a loopback probe without a key (auth_open_probes), then with one
        assert limited.call("GET", "/v2/health/ready", remote=False).status_code == 200
        assert limited.call("GET", "/metrics", keys["admin"]).status_code == 200
    for _ in range(5):  # no principal: authentication refuses first
        assert limited.call("GET", "/v1/models", "not-a-key").status_code == 401
        assert limited.call("GET", "/v1/models").status_code == 401
    assert limited.call("GET", "/v1/models", keys["admin"]).status_code == 200  # default: 2


def test_a_limited_request_is_refused_before_its_body_is_read(
    limited: Clients, home: Served, keys: dict[str, str]
) -> None:
    for _ in range(3):
        assert _predict(limited, keys["predictor-a"], home).status_code == 200
    huge = b"[" * (11 * 1024 * 1024)  # over the body limit too: the 429 comes first
    response = limited.call(
        "POST",
        "/v1/predict/numeric",
        keys["predictor-a"],
        content=huge,
        headers={"content-type": "application/json"},
    )
    assert_limited(response)


def test_with_auth_off_each_client_address_has_the_default_limit(home: Served) -> None:
    rules = limits(default={"rate": SLOW, "burst": 2}, roles={"admin": {"rate": SLOW, "burst": 9}})
    with serving(make_app(home.home, rate_limits=rules)) as server:
        for _ in range(2):
            assert _predict(server, None, home, remote=False).status_code == 200
        assert_limited(_predict(server, None, home, remote=False), "this client", "default")
        assert _predict(server, None, home).status_code == 200  # another address


def test_no_limits_set_builds_no_limiter(home: Served) -> None:
    app = make_app(home.home)
    from berth.server.ratelimit import RateLimit as Middleware

    chain, seen = app.front, []
    while chain is not None:
        seen.append(type(chain))
        chain = getattr(chain, "app", None)
    assert Middleware not in seen
    limited = make_app(home.home, rate_limits=limits(default={"rate": 1.0}))
    chain, seen = limited.front, []
    while chain is not None:
        seen.append(type(chain))
        chain = getattr(chain, "app", None)
    assert Middleware in seen


# -- Redis ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_redis_lets_requests_through_with_a_warning(
    home: Served, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{_closed_port()}/0"
    rules = limits(default={"rate": SLOW, "burst": 1})
    app = make_app(home.home, auth=True, rate_limits=rules, rate_limit_redis_url=url)
    with caplog.at_level(logging.WARNING, "berth.server"), serving(app) as server:
        for _ in range(3):
            assert server.call("GET", "/v1/models", keys["admin"]).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "rate limits" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once a minute, not per request
    assert "not limiting" in warnings[0]
    assert "hunter2-secret" not in warnings[0]


def test_redis_buckets_refill_on_redis_clock() -> None:
    import asyncio

    prefix = f"berth-test:{uuid.uuid4().hex}:"
    buckets = RedisBuckets(REDIS_URL, prefix)
    limit = RateLimit(rate=20.0, burst=2)

    async def go() -> list[bool]:
        try:
            taken = [(await buckets.take("k", limit)).allowed for _ in range(3)]
            refused = await buckets.take("k", limit)
            assert 0 < refused.retry_after_s <= 1 / 20
            await asyncio.sleep(0.06)  # a token back (20 a second)
            taken.append((await buckets.take("k", limit)).allowed)
            return taken
        finally:
            await buckets.aclose()

    assert asyncio.run(go()) == [True, True, False, True]
    store = redis.Redis.from_url(REDIS_URL)
    try:
        ttl = store.pttl(prefix + "k")
        assert 0 < ttl <= 2 / 20 * 1000 + 1000  # gone once it would be full again
        store.delete(prefix + "k")
    finally:
        store.close()


def test_the_limit_holds_across_two_server_processes_sharing_redis(
    tmp_path: Path, home: Served, keys: dict[str, str]
) -> None:
    prefix = f"berth-test:{uuid.uuid4().hex}:"
    env = {
        "BERTH_AUTH": "1",
        "BERTH_KEY_PEPPER": PEPPER,
        "BERTH_RATE_LIMITS": json.dumps({"roles": {"predictor": {"rate": SLOW, "burst": 6}}}),
        "BERTH_RATE_LIMIT_REDIS_URL": REDIS_URL,
        "BERTH_RATE_LIMIT_REDIS_PREFIX": prefix,
    }
    store = redis.Redis.from_url(REDIS_URL)
    try:
        with (
            server_process(home.home, env=env) as (_a, first),
            server_process(home.home, env=env) as (_b, second),
        ):
            assert first != second
            body = {"records": home.numeric_rows.head(1).to_dict(orient="records")}
            statuses = []
            for i in range(10):  # taking turns: 5 to each
                url = (first, second)[i % 2]
                r = httpx.post(
                    f"{url}/v1/predict/numeric",
                    json=body,
                    headers={"Authorization": f"Bearer {keys['predictor-b']}"},
                )
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert_limited(r, "'predictor-b'", "burst 6")
            # In-process buckets would have let 10 through (5 of 6 in each).
            assert statuses == [200] * 6 + [429] * 4
            assert store.exists(prefix + "key:predictor-b")
            other = httpx.get(
                f"{second}/v1/models", headers={"Authorization": f"Bearer {keys['predictor-a']}"}
            )
            assert other.status_code == 200
    finally:
        for name in store.scan_iter(f"{prefix}*"):
            store.delete(name)
        store.close()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('{"roles": {"predictr": {"rate": 1}}}', "roles.predictr"),
        ('{"default": {"rate": 0}}', "default.rate"),
        ('{"default": {"rate": 1, "brust": 2}}', "default.brust"),
        ("{not json", "rate_limits"),
    ],
)
def test_bad_limits_in_the_environment_are_one_line(tmp_path: Path, value: str, named: str) -> None:
    from typer.testing import CliRunner

    from berth.cli.main import app as cli_app

    result = CliRunner().invoke(
        cli_app,
        ["--home", str(tmp_path), "serve", "--port", "0"],
        env={"BERTH_RATE_LIMITS": value},
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert named in lines[0]
    assert "RATE_LIMITS" in lines[0] or "rate_limits" in lines[0]
