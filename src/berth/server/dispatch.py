"""The inference routes served ahead of FastAPI, as pure ASGI.

A prediction for a sub-millisecond model is mostly framework work when it goes through FastAPI:
matching the path against every route in turn, solving the endpoint's dependencies, building a
``Request``, three layers of exception middleware. Measured in process (the ASGI app called
directly, one-row requests to a 30-feature HistGradientBoosting), that was 220-280 µs of the
event loop's CPU per request out of 720-810, which is what a server that batches pays per
request at high concurrency and what a lone request waits for. So ``POST /v1/predict/{ref}`` and
``POST /v2/models/{name}[/versions/{version}]/infer`` are answered here, by the same handlers
the FastAPI routes call (``v1.predict_json``, ``oip.infer_body``), with the same error mapping;
everything else (and any other method on these paths, for its 405) goes on to FastAPI, which
also keeps the routes in the OpenAPI document. The access log and the body limit wrap both.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.errors import BerthError
from berth.registry.references import Reference
from berth.runtime import oip as oip_codec
from berth.runtime.path import InferencePath

from . import oip, v1
from .errors import error_headers, status_of
from .middleware import BodyLimit

log = logging.getLogger("berth.server")

_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH = oip_codec.HEADER_LENGTH.lower().encode()
_UNIT = b"x-berth-unit"
_ROUTE = "berth.route"


class InferenceRoutes:
    """Answers the inference routes itself (their bodies held to ``max_body_bytes``) and hands
    every other request to ``app``."""

    def __init__(self, app: ASGIApp, path: InferencePath, max_body_bytes: int) -> None:
        self.app = app
        self.path = path
        self._limited = BodyLimit(self._serve, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = match(_route_path(scope))
            if route is not None:
                scope[_ROUTE] = route
                await self._limited(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: tuple[str, str, str | None] = scope[_ROUTE]
        kind, name, version = route
        extra: list[tuple[bytes, bytes]] = []
        try:
            # Before the body is read: a refused client's bytes are never parsed.
            self.path.authorize(name if kind == "v1" else Reference.of(name, version))
        except BerthError as exc:
            await _answer(send, status_of(exc), _error(str(exc)), _JSON, error_headers(exc))
            return
        body = await _body(receive)  # outside the mapping: the body limit's signal passes
        if body is None:
            return  # the client went away
        # The first of a repeated header, as Starlette's ``Headers.get`` gives.
        headers = dict(reversed(scope["headers"]))
        unit = _text(headers.get(_UNIT))
        try:
            if kind == "v1":
                content, status, content_type = (
                    await v1.predict_json(self.path, name, body, unit),
                    200,
                    _JSON,
                )
            else:
                content, header_length = await oip.infer_body(
                    self.path,
                    Reference.of(name, version),
                    body,
                    length_header=_text(headers.get(_HEADER_LENGTH)),
                    unit_header=unit,
                )
                status, content_type = 200, _JSON
                if header_length is not None:
                    content_type = _BINARY
                    extra = [(_HEADER_LENGTH, str(header_length).encode())]
        except BerthError as exc:
            status, content, content_type = status_of(exc), _error(str(exc)), _JSON
            extra = error_headers(exc)
        except Exception as exc:  # never a framework's or model's text to the client
            log.error("unhandled error on POST %s", scope["path"], exc_info=exc)
            status, content_type = 500, _JSON
            content = _error("internal server error; the server log has the details")
        await _answer(send, status, content, content_type, extra)


async def _answer(
    send: Send,
    status: int,
    content: bytes,
    content_type: tuple[bytes, bytes],
    extra: list[tuple[bytes, bytes]],
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [content_type, (b"content-length", b"%d" % len(content)), *extra],
        }
    )
    await send({"type": "http.response.body", "body": content})


def match(route_path: str) -> tuple[str, str, str | None] | None:
    """``("v1", ref, None)`` or ``("oip", name, version)`` for an inference route, else None.
    Matches exactly what the FastAPI routes match: ``{ref:path}`` takes slashes, ``{name}`` and
    ``{version}`` do not."""
    if route_path.startswith("/v1/predict/"):
        ref = route_path[len("/v1/predict/") :]
        return ("v1", ref, None) if ref else None
    if not (route_path.startswith("/v2/models/") and route_path.endswith("/infer")):
        return None
    parts = route_path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return "oip", parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return "oip", parts[0], parts[2]
    return None


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point, as Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})
