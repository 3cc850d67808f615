"""Public helpers for testing code that serves Berth models: an in-process ASGI client with the
app's lifespan running, and a real server on an ephemeral 127.0.0.1 port in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from starlette.types import ASGIApp


@contextlib.asynccontextmanager
async def asgi_client(
    app: Any, base_url: str = "http://berth.test"
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process, with startup and shutdown run around it."""
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@contextlib.contextmanager
def running_server(app: ASGIApp, host: str = "127.0.0.1", timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port in a background thread; yields its base URL and
    shuts it down gracefully (in-flight requests finish) on exit."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="berth-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server stopped while starting")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("the test server did not start in time")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
