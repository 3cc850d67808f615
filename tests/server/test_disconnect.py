"""Clients that hang up mid-body or send it too slowly, against a real server on an ephemeral port
and raw sockets: a disconnect is one access-log line (status 499, reason ``disconnect``), never a
500 with a traceback; a body that does not arrive in time gets 408 and the connection closes."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from tests.server.conftest import Served, make_app

from berth.server.middleware import GONE, RequestBody
from berth.testing import running_server

BODY_TIMEOUT_S = 0.5
ECHO = "/test/echo"
"""A FastAPI route that reads its body, added for these tests: the inference routes are answered
by the pure-ASGI dispatch, every other route with a body by FastAPI."""
ROUTES = ["/v1/predict/credit", "/v2/models/credit/infer", ECHO]
PARTIAL = b'{"records": [{"income": 1'


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


@pytest.fixture(scope="module")
def url(served: Served) -> Iterator[str]:
    app = make_app(served.home, access_log=True, body_timeout_s=BODY_TIMEOUT_S)
    app.add_api_route(ECHO, _echo, methods=["POST"])
    with running_server(app) as base:
        yield base


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="berth.access")
    caplog.set_level(logging.INFO, logger="berth.server")
    return caplog


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: berth.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _access_lines(caplog: pytest.LogCaptureFixture, path: str, timeout: float = 10.0) -> list[Any]:
    """The access log's lines for ``path`` (its writer thread logs every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            orjson.loads(r.getMessage())
            for r in caplog.records
            if r.name == "berth.access" and orjson.loads(r.getMessage())["path"] == path
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", ROUTES)
def test_a_partial_body_then_hang_up_is_a_disconnect(
    url: str, logs: pytest.LogCaptureFixture, path: str
) -> None:
    with _connect(url) as sock:
        sock.sendall(_head(path, 1000) + PARTIAL)
        time.sleep(0.05)
    lines = _access_lines(logs, path)
    assert len(lines) == 1, lines
    assert lines[0]["status"] == 499
    assert lines[0]["reason"] == "disconnect"
    server_side = [r for r in logs.records if r.name != "berth.access"]
    assert not [r for r in server_side if r.exc_info or r.levelno >= logging.ERROR]
    # The server goes on answering, and counts no failed prediction for the one never made.
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'status="error"' not in metrics


@pytest.mark.parametrize("path", ROUTES)
def test_a_body_slower_than_the_timeout_gets_408_and_the_connection_closes(
    url: str, logs: pytest.LogCaptureFixture, path: str
) -> None:
    with _connect(url) as sock:
        sock.sendall(_head(path, 1000) + PARTIAL)  # and nothing more, the socket kept open
        answer = _read_all(sock)  # returns once the server closes the connection
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"connection: close" in head.lower()
    assert "did not arrive within 0.5 s" in orjson.loads(body)["error"]
    lines = _access_lines(logs, path)
    assert [(line["status"], line["reason"]) for line in lines] == [(408, "body_timeout")]
    assert not [r for r in logs.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_body_in_pieces_within_the_timeout_is_answered(url: str) -> None:
    doc = orjson.dumps({"records": [{"x0": 0.1, "x1": -0.2, "n": 3}]})
    with _connect(url) as sock:
        sock.sendall(_head("/v1/predict/numeric", len(doc)) + doc[:10])
        time.sleep(BODY_TIMEOUT_S / 5)
        sock.sendall(doc[10:20])
        time.sleep(BODY_TIMEOUT_S / 5)
        sock.sendall(doc[20:])
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head


# -- the middleware alone ----------------------------------------------------------------------


def test_reads_after_the_body_are_not_timed() -> None:
    """A streaming response waits on ``receive`` for a disconnect long after its body: that wait
    must not turn into a 408."""
    sent: list[dict[str, Any]] = []
    seen: list[str] = []
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append((await receive())["type"])  # waits past the body timeout
        await send({"type": "http.response.body", "body": b"done"})

    async def main() -> None:
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(0.3)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await RequestBody(app, timeout_s=0.05)(scope, receive, send)

    asyncio.run(main())
    assert seen == ["http.disconnect"]
    assert [m.get("status") for m in sent] == [200, None]
    assert GONE not in scope
