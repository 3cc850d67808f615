"""``berth serve``: the realtime server."""

from __future__ import annotations

import logging
import os
import threading
from typing import Annotated, Any

import typer

from .context import client
from .output import console, log_to_stderr

LOGGERS = ("berth", "uvicorn.error")
"""The loggers ``berth serve`` shows on stderr, in the server process and every worker."""


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    config: Annotated[
        str | None,
        typer.Option(help="JSON or TOML with per-model batching and recording settings."),
    ] = None,
    records: Annotated[
        bool, typer.Option("--records/--no-records", help="Write prediction records.")
    ] = True,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between checks for alias moves (0: never).")
    ] = 2.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 10.0,
    threads: Annotated[
        int, typer.Option(help="OpenMP/BLAS threads per worker for tabular models.", min=1)
    ] = 1,
    torch_threads: Annotated[
        int | None,
        typer.Option(help="Threads for text models (default: cores / workers).", min=1),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="One JSON line per request.")
    ] = True,
    scheduler: Annotated[
        bool,
        typer.Option("--scheduler/--no-scheduler", help="Also run scheduled batch jobs when due."),
    ] = False,
    scheduler_interval: Annotated[
        float, typer.Option(help="Seconds between looks for due batch runs.", min=0.1)
    ] = 30.0,
) -> None:
    """Serve every model of the registry over the Open Inference Protocol v2 and /v1 JSON.

    Aliased versions load at start; other versions on first request. Alias moves take effect
    without a restart.

    With --scheduler the server process also starts scheduled batch jobs when due (as
    berth scheduler does), on threads beside the server: they share its cores.

    Example: berth serve --port 8000 --workers 2
    """
    from berth.app import declared, read_serving_file
    from berth.config import ServeOptions

    # The file is read here, once: a bad one fails in one line, not in every worker.
    models = read_serving_file(config) if config else {}
    options = declared(
        ServeOptions,
        {
            "path": {
                "record": records,
                "poll_interval_s": poll_interval,
                "threads": {"threads": threads, "torch_threads": torch_threads, "workers": workers},
                "models": models,
            },
            "max_body_bytes": max(1, int(max_body_mb * 1024 * 1024)),
            "access_log": access_log,
        },
        "berth serve",
    )
    c = client(ctx)
    settings = c.settings
    log_to_stderr(LOGGERS)
    console.print(
        f"serving {settings.home.resolve()} on http://{host}:{port} "
        f"(docs: http://{host}:{port}/docs)"
    )
    stop = _start_scheduler(c, scheduler_interval) if scheduler else None
    try:
        _run(settings, options, host, port, workers)
    finally:
        if stop is not None:
            stop.set()


def _start_scheduler(c: Any, interval: float) -> threading.Event:
    """The scheduler loop on a daemon thread of this (the main) process, never in the workers:
    one scheduler per server, however many workers it has."""
    from berth.batch.scheduler import Scheduler

    runner = Scheduler(
        c.jobs,
        lambda spec, schedule_id: c.run_batch(spec, schedule_id=schedule_id),
        interval_s=interval,
    )
    stop = threading.Event()
    threading.Thread(
        target=runner.run_forever, args=(stop,), name="berth-scheduler", daemon=True
    ).start()
    logging.getLogger("berth.scheduler").info("scheduler: running due batch jobs")
    return stop


def _run(settings: Any, options: Any, host: str, port: int, workers: int) -> None:
    import uvicorn

    from berth.app import SERVE_OPTIONS_ENV, build_server

    common = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 30,
    }
    if workers == 1:
        uvicorn.run(build_server(settings, options), **common)  # type: ignore[arg-type]
        return
    from berth.runtime.metrics import multiprocess_folder

    os.environ[SERVE_OPTIONS_ENV] = options.model_dump_json()
    os.environ["BERTH_HOME"] = str(settings.home.resolve())
    if settings.database_url:
        os.environ["BERTH_DATABASE_URL"] = settings.database_url
    # uvicorn sets logging up again in every worker it spawns (a spawned process starts with
    # none: its INFO lines, the access log among them, would go nowhere).
    common["log_config"] = _worker_logging()
    # Workers inherit the folder's name and sum their metrics there; it goes when they have.
    with multiprocess_folder():
        uvicorn.run("berth.app:server_factory", factory=True, workers=workers, **common)  # type: ignore[arg-type]


def _worker_logging() -> dict[str, Any]:
    """What ``log_to_stderr`` sets in this process, as a ``logging.config`` dict."""
    logger = {"handlers": ["stderr"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {name: logger for name in LOGGERS},
    }
