"""Per-principal rate limits: a token bucket per principal, in this process or shared in Redis.

:class:`RateLimit` is pure ASGI middleware that runs inside authentication (``auth.Authenticate``
sets the request's principal, ``access.current()``): each principal has its own bucket, sized by
the limit :class:`~berth.config.RateLimits` gives it (its key's name, else its role, else the
default). With auth off every request is the local principal, so the bucket is per client
address instead, with the default limit. The probes (``/v2/health/*``, ``/metrics``) are never
limited: a Kubernetes probe refused 429 would restart a healthy server.

Over the limit a request is answered before its body is read: 429, ``{"error": ...}`` naming the
limit and the principal, and ``Retry-After`` in whole seconds (at least 1).

Two stores of buckets:

- :class:`LocalBuckets` (the default): a dict in this process, no I/O. Each worker of
  ``--workers N`` and each replica has its own, so together they let N times the limit through.
- :class:`RedisBuckets`: one Lua script per request (``EVALSHA``, one round trip) that refills
  and takes a token atomically on Redis's clock, so that the limit holds across workers and
  replicas. If Redis cannot be reached the request is let through and a warning logged (at most
  once a minute): a limiter should not take the service down with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.config import RateLimit as Limit
from berth.config import RateLimits, Settings
from berth.errors import MissingExtraError
from berth.registry.access import Principal, current
from berth.registry.redaction import hide_password, scrub

from .auth import PROBES

log = logging.getLogger("berth.server")

WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go on; if not, how long until a token is back."""

    allowed: bool
    retry_after_s: float = 0.0


class Buckets(Protocol):
    """Where the token buckets live. ``take`` takes one token from ``key``'s bucket."""

    async def take(self, key: str, limit: Limit) -> Verdict: ...

    async def aclose(self) -> None: ...


class LocalBuckets:
    """Token buckets in a dict of this process: ``(tokens, when)`` per key, refilled lazily on
    each take. A bucket that would be full again is the same as none, so when the dict grows
    past ``max_keys`` (client addresses with auth off) those are swept out."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str, limit: Limit) -> Verdict:
        return self.take_now(key, limit)

    def take_now(self, key: str, limit: Limit) -> Verdict:
        now = self.clock()
        found = self._buckets.get(key)
        if found is None:
            tokens = float(limit.burst)
            if len(self._buckets) >= self.max_keys:
                self._sweep(now, limit)
        else:
            tokens = min(float(limit.burst), found[0] + (now - found[1]) * limit.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return Verdict(True)
        self._buckets[key] = (tokens, now)
        return Verdict(False, (1.0 - tokens) / limit.rate)

    def _sweep(self, now: float, limit: Limit) -> None:
        full = [k for k, (t, when) in self._buckets.items() if t + (now - when) * limit.rate >= 1]
        for key in full:
            del self._buckets[key]

    async def aclose(self) -> None:
        self._buckets.clear()


# KEYS[1]: the bucket; ARGV: rate (tokens a second), burst. Redis's own clock (TIME), so that
# servers with skewed clocks share one bucket fairly. The hash expires once it would be full
# again. Returns {1|0, seconds to wait as a string} (a Lua number would be cut to an integer).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
if tokens == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - tonumber(b[2])) * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every process given the same ``url`` and ``prefix``.

    The client is made on first use, on the event loop of the request (the app's), and closed
    with the app (see :class:`RateLimit`). A Redis that cannot be reached within
    ``timeout_s`` lets the request through (see the module doc)."""

    def __init__(self, url: str, prefix: str = "berth:ratelimit:", timeout_s: float = 0.25) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("redis", "redis", "rate limits shared in Redis") from exc
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client: Any = None
        self._script: Any = None
        self._warned = -math.inf

    async def take(self, key: str, limit: Limit) -> Verdict:
        import redis

        try:
            if self._script is None:
                self._connect()
            allowed, wait = await self._script(
                keys=[self.prefix + key], args=[repr(limit.rate), limit.burst]
            )
        except (redis.RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                where = hide_password(self.url)
                reason = scrub(str(exc), [self.url])
                log.warning("rate limits: Redis at %s failed (%s): not limiting", where, reason)
            return Verdict(True)
        return Verdict(bool(allowed), float(wait))

    def _connect(self) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(
            self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
        )
        self._script = self._client.register_script(_TAKE)

    async def aclose(self) -> None:
        import redis

        client, self._client, self._script = self._client, None, None
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):  # a Redis gone already
                await client.aclose()


class RateLimiter:
    """Which bucket and limit a principal gets, and the store that keeps the buckets."""

    def __init__(self, limits: RateLimits, buckets: Buckets | None = None) -> None:
        self.limits = limits
        self.buckets: Buckets = buckets or LocalBuckets()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter the settings ask for; None when they set no limit."""
        if not settings.rate_limits.enabled:
            return None
        url = settings.rate_limit_redis_url
        buckets = RedisBuckets(url, settings.rate_limit_redis_prefix) if url else None
        return cls(settings.rate_limits, buckets)

    def limit_of(self, principal: Principal, client: str | None) -> tuple[str, str, Limit] | None:
        """``(bucket key, what the limit is, limit)`` for a request, None if not limited."""
        limits = self.limits
        if principal.via == "local":  # auth off: everyone is the local admin
            if limits.default is None:
                return None
            return f"client:{client}", "the default limit", limits.default
        by_name = limits.keys.get(principal.name)
        if by_name is not None:
            return f"{principal.via}:{principal.name}", "its own limit", by_name
        by_role = limits.roles.get(principal.role)
        if by_role is not None:
            what = f"the {principal.role} role's limit"
            return f"{principal.via}:{principal.name}", what, by_role
        if limits.default is None:
            return None
        return f"{principal.via}:{principal.name}", "the default limit", limits.default


class RateLimit:
    """Answers 429 to a principal over its rate limit (see the module doc); closes the store
    when the app shuts down."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        principal = current()
        client = scope.get("client")
        found = self.limiter.limit_of(principal, client[0] if client else None)
        if found is None:
            await self.app(scope, receive, send)
            return
        key, what, limit = found
        verdict = await self.limiter.buckets.take(key, limit)
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        who = "this client" if principal.via == "local" else repr(principal.name)
        message = (
            f"rate limit exceeded: {who} is over {what} of {limit.rate:g} requests/s "
            f"(burst {limit.burst}); retry in {verdict.retry_after_s:.2g} s"
        )
        await _too_many(send, message, verdict.retry_after_s)

    def _closing(self, send: Send) -> Send:
        async def closing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.limiter.buckets.aclose()
            await send(message)

        return closing


async def _too_many(send: Send, message: str, retry_after_s: float) -> None:
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % max(1, math.ceil(retry_after_s))),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
