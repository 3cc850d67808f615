"""One mapping from error kinds to HTTP statuses; every error body is ``{"error": "..."}``."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from berth.errors import (
    BerthError,
    DeadlineExceededError,
    ErrorKind,
    RetryLaterError,
    SchemaError,
    TooLargeError,
)

log = logging.getLogger("berth.server")

STATUS: dict[ErrorKind, int] = {
    "invalid_input": 400,
    "not_found": 404,
    "conflict": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "unavailable": 503,
}


def error_response(status: int, message: str, **extra: Any) -> Response:
    return Response(
        orjson.dumps({"error": message, **extra}),
        status_code=status,
        media_type="application/json",
    )


def status_of(exc: BerthError) -> int:
    # A well-formed request whose values do not fit the signature is unprocessable, not malformed.
    if isinstance(exc, SchemaError):
        return 422
    if isinstance(exc, TooLargeError):
        return 413
    if isinstance(exc, DeadlineExceededError):
        return 504
    return STATUS[exc.kind]


def error_headers(exc: BerthError) -> list[tuple[bytes, bytes]]:
    """Headers an error's response carries besides its body: ``Retry-After`` (whole seconds,
    at least 1) when the error says when to try again."""
    if isinstance(exc, RetryLaterError):
        return [(b"retry-after", b"%d" % max(1, math.ceil(exc.retry_after_s)))]
    return []


async def berth_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BerthError)
    response = error_response(status_of(exc), str(exc))
    response.headers.update({k.decode(): v.decode() for k, v in error_headers(exc)})
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Log the traceback; never send an unexpected exception's text to a client."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error; the server log has the details")
