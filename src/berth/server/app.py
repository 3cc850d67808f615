"""The ASGI app: routes, error mapping, middleware and the lifespan of the inference path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

import berth
from berth.config import ServeOptions
from berth.errors import BerthError
from berth.registry.keys import Authenticator
from berth.runtime.path import InferencePath

from . import oip, v1
from .auth import Authenticate
from .dispatch import InferenceRoutes
from .errors import berth_error, error_response, unexpected_error
from .middleware import AccessLog, BodyLimit, RequestBody
from .ratelimit import RateLimit, RateLimiter
from .tls import StrictTransportSecurity


def create_app(
    path: InferencePath,
    options: ServeOptions | None = None,
    on_shutdown: Callable[[], None] | None = None,
    *,
    auth: Authenticator | None = None,
    open_probes: bool = True,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """An app serving ``path``. The lifespan starts the path (the record writer, every aliased
    version loaded) and, on shutdown, lets queued requests finish and flushes records. With
    ``auth`` every request acts as the principal of its bearer credential (see ``auth``);
    without, as the local principal (an admin), like the CLI with auth off. With ``limiter``
    each principal's requests are rate limited (see ``ratelimit``)."""
    options = options or ServeOptions()

    closing: list[Callable[[], None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await path.start()
        try:
            yield
        finally:
            await path.close()
            for close in closing:
                close()
            if on_shutdown is not None:
                on_shutdown()

    app = BerthServer(
        title="Berth",
        version=berth.__version__,
        description="Open Inference Protocol v2 and Berth's JSON API.",
        lifespan=lifespan,
    )
    app.state.path = path
    app.include_router(oip.router())
    app.include_router(v1.router())
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

    app.add_exception_handler(BerthError, berth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    front: ASGIApp = InferenceRoutes(app.fastapi, path, options.max_body_bytes)
    front = RequestBody(front, options.body_timeout_s)
    if limiter is not None:  # inside Authenticate: limits the principal it set
        front = RateLimit(front, limiter)
    if auth is not None:
        front = Authenticate(front, auth, open_probes=open_probes)
    if options.access_log:
        access = AccessLog(front)
        closing.append(access.close)
        front = access
    app.front = StrictTransportSecurity(front)  # HSTS on whatever answers over TLS
    return app


class BerthServer(FastAPI):
    """The FastAPI app behind the inference routes' dispatch (see ``dispatch``), the body's
    timeout, authentication and the access log, which see every request first."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling: every route but the dispatched ones, and the lifespan."""
        await super().__call__(scope, receive, send)


async def metrics(request: Request) -> Response:
    path: InferencePath = request.app.state.path
    if path.metrics is None:
        return error_response(404, "metrics are off")
    # This worker's gauges now; with several workers the others refresh theirs every second.
    path.metrics.sample(path.queue_depths(), path.records_queued)
    body, content_type = path.metrics.render()
    return Response(body, media_type=content_type)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"invalid request: {where}: {first.get('msg', 'malformed')}")


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """A client that hung up mid-body (or was answered 408 by ``RequestBody``): no traceback,
    and nothing to answer; the access log says which."""
    return Response(status_code=499)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response
