"""Pure ASGI middleware (never BaseHTTPMiddleware: it breaks contextvars and background tasks)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("berth.access")

GONE = "berth.gone"
"""Scope key set when a request ended because of its client, not the server: ``"disconnect"``
(it hung up before its body was complete) or ``"body_timeout"`` (its body did not arrive in
time; it was answered 408). The access log reads it."""
DISCONNECT_STATUS = 499
"""The access log's status for a client that hung up before it could be answered (nginx's)."""


class RequestBody:
    """Bounds the time a request's body may take, and tells a client that hung up mid-body from
    a server fault.

    The body must be complete within ``timeout_s`` of the app's first read (a total, not a gap
    between chunks: a client trickling a byte a second would otherwise hold a connection and
    its handler for ever). Past it, the client gets 408 and the connection closes. A client that
    disconnects before the whole body arrived (fewer bytes than its Content-Length) is marked
    in the scope (:data:`GONE`) for the access log, which logs one line with status 499 and no
    traceback. Either way the app then reads ``http.disconnect`` (Starlette's ``request.body()``
    raises ``ClientDisconnect``) and whatever it tries to send is dropped. Reads after the body
    (a streaming response listening for a disconnect) pass through untimed.

    Deadlines are kept by one sweep every ``timeout_s / 4`` (at most a second) while a body is
    being read, which cancels the reads past theirs: a timer per request (``asyncio.timeout``)
    cost 7 us of the event loop's time on every request, a fortieth of a small prediction."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self._interval = min(1.0, timeout_s / 4)
        self._reading: dict[int, tuple[float, Scope, asyncio.Task[Any]]] = {}
        self._sweep: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False
        started = False
        deadline: float | None = None

        async def timed() -> Message:
            nonlocal complete, deadline
            if complete:
                return await receive()
            if GONE in scope:
                return {"type": "http.disconnect"}
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            task = asyncio.current_task()
            assert task is not None
            self._reading[id(scope)] = (deadline, scope, task)
            if self._sweep is None or self._sweep[0] is not loop:
                self._sweep = (loop, loop.call_later(self._interval, self._expire))
            try:
                message = await receive()
            except asyncio.CancelledError:
                if scope.get(GONE) != "body_timeout":
                    raise  # not ours: the server is shutting down
                task.uncancel()
                if not started:
                    await _reject(
                        send,
                        408,
                        f"the request body did not arrive within {self.timeout_s:g} s",
                        close=True,
                    )
                return {"type": "http.disconnect"}
            finally:
                self._reading.pop(id(scope), None)
            if message["type"] == "http.disconnect":
                scope[GONE] = "disconnect"
            elif not message.get("more_body", False):
                complete = True
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if GONE in scope:
                return  # answered 408 already, or nobody is listening
            started = True
            await send(message)

        await self.app(scope, timed, guarded)

    def _expire(self) -> None:
        """Cancel the body reads past their deadline; look again while any read is waiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for key, (deadline, scope, task) in list(self._reading.items()):
            if deadline <= now:
                del self._reading[key]
                scope[GONE] = "body_timeout"
                task.cancel()
        self._sweep = (
            (loop, loop.call_later(self._interval, self._expire)) if self._reading else None
        )


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


async def _reject(send: Send, status: int, message: str, *, close: bool = False) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:  # the rest of the body may still come: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


WRITE_INTERVAL_S = 0.2


class AccessLog:
    """One JSON line per request: method, path, status, duration and the client.

    A request that ended because of its client (see :class:`RequestBody`) says so in a
    ``reason`` field: ``disconnect`` with status 499 (no response was sent), ``body_timeout``
    with the 408 it was answered.

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
            entry = {
                "ts": time.time(),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 3),
                "client": client[0] if client else None,
            }
            gone = scope.get(GONE)
            if gone is not None:
                entry["reason"] = gone
                if gone == "disconnect":
                    entry["status"] = DISCONNECT_STATUS
            line = orjson.dumps(entry).decode()
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
