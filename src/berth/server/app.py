"""The ASGI app: routes, error mapping, middleware and the lifespan of the inference path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import berth
from berth.errors import BerthError
from berth.runtime.path import InferencePath

from . import oip, v1
from .errors import berth_error, error_response, unexpected_error
from .middleware import AccessLog, BodyLimit


@dataclass(frozen=True)
class ServerLimits:
    """Tuning of the HTTP side."""

    max_body_bytes: int = 10 * 1024 * 1024
    access_log: bool = True


def create_app(
    path: InferencePath,
    limits: ServerLimits | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """An app serving ``path``. The lifespan starts the record writer and the model pool (loading
    every aliased version) and, on shutdown, lets queued requests finish and flushes records."""
    limits = limits or ServerLimits()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if path.recorder is not None:
            path.recorder.start()
        await path.pool.start()
        try:
            yield
        finally:
            await path.pool.close()
            if path.recorder is not None:
                path.recorder.close()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
        title="Berth",
        version=berth.__version__,
        description="Open Inference Protocol v2 and Berth's JSON API.",
        lifespan=lifespan,
    )
    app.include_router(oip.router(path))
    app.include_router(v1.router(path))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if path.metrics is None:
            return error_response(404, "metrics are off")
        if path.recorder is not None:
            path.metrics.records_queue.set(path.recorder.depth)
        for (model, version), served in path.pool.served.items():
            if served.batcher is not None:
                path.metrics.queue_depth.labels(model, str(version)).set(served.batcher.depth)
        body, content_type = path.metrics.render()
        return Response(body, media_type=content_type)

    app.add_exception_handler(BerthError, berth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if limits.access_log:
        app.add_middleware(AccessLog)
    return app


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
