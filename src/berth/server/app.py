"""The ASGI app: routes, error mapping, middleware and the lifespan of the inference path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import berth
from berth.config import ServeOptions
from berth.errors import BerthError
from berth.runtime.path import InferencePath

from . import oip, v1
from .errors import berth_error, error_response, unexpected_error
from .middleware import AccessLog, BodyLimit


def create_app(
    path: InferencePath,
    options: ServeOptions | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """An app serving ``path``. The lifespan starts the path (the record writer, every aliased
    version loaded) and, on shutdown, lets queued requests finish and flushes records."""
    options = options or ServeOptions()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await path.start()
        try:
            yield
        finally:
            await path.close()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
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
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    if options.access_log:
        app.add_middleware(AccessLog)
    return app


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


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response
