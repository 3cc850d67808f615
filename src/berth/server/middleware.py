"""Pure ASGI middleware (never BaseHTTPMiddleware: it breaks contextvars and background tasks)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("berth.access")


class BodyLimit:
    """Answers 413 for a body over ``max_bytes``, by its Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await _reject(send, 413, self._message())
                    return
        seen = 0
        too_big = False

        async def limited() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _reject(send, 413, self._message())

    def _message(self) -> str:
        return f"request body is over the limit of {self.max_bytes} bytes"


class _TooLarge(Exception):
    pass


async def _reject(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


WRITE_INTERVAL_S = 0.2


class AccessLog:
    """One JSON line per request: method, path, status, duration and the client.

    The line is built on the event loop and left for a writer thread, which logs what has
    gathered every ``WRITE_INTERVAL_S`` (record, handlers, the write to stderr or a file): a
    log handler's lock, formatting and a write system call per request were work the event loop
    did for every prediction, and waking a thread per line handed the GIL over and back for
    each; DESIGN.md keeps logging I/O off the request path. :meth:`close` (the app's shutdown)
    writes what is left, so a clean shutdown loses no line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            client: Any = scope.get("client")
            line = orjson.dumps(
                {
                    "ts": time.time(),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                    "client": client[0] if client else None,
                }
            ).decode()
            self._lines.append(line)
            if self._writer is None:
                self._start()

    def close(self) -> None:
        """Write every line still waiting and stop the writer (it starts again if needed)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._wake.set()
            writer.join(timeout=10)
        self._drain()

    def _start(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="berth-access-log", daemon=True
                )
                self._writer.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while self._writer is me:
            self._wake.wait(WRITE_INTERVAL_S)
            self._drain()

    def _drain(self) -> None:
        while self._lines:
            access_log.info(self._lines.popleft())
