"""``berth serve``: the realtime server."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from typing import Annotated, Any

import typer

from berth.errors import InvalidInputError, UnavailableError

from .context import client
from .errors import stderr
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
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take to arrive (else 408).", min=0.001)
    ] = 30.0,
    threads: Annotated[
        int, typer.Option(help="OpenMP/BLAS threads per worker for tabular models.", min=1)
    ] = 1,
    torch_threads: Annotated[
        int | None,
        typer.Option(help="Threads for text models (default: cores / workers - 1).", min=1),
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
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve a non-loopback address with auth off: whoever reaches it is an admin.",
        ),
    ] = False,
    tls_cert: Annotated[
        str | None, typer.Option(help="Serve HTTPS with this PEM certificate (chain).")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="The PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(help="Mutual TLS: clients need a certificate signed by a CA in this PEM."),
    ] = None,
) -> None:
    """Serve every model of the registry over the Open Inference Protocol v2 and /v1 JSON.

    Aliased versions load at start; other versions on first request. Alias moves take effect
    without a restart.

    With --scheduler the server process also starts scheduled batch jobs when due (as
    berth scheduler does), on threads beside the server: they share its cores.

    With auth on (BERTH_AUTH=1) every request needs an API key (berth keys create). A
    non-loopback --host is refused with auth off, unless --insecure.

    With --tls-cert and --tls-key the server speaks HTTPS only (TLS 1.2 or later) and sends
    Strict-Transport-Security; with --tls-ca too, clients must present a certificate that CA
    signed. Rate limits: BERTH_RATE_LIMITS (BERTH_RATE_LIMIT_REDIS_URL to share them).

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
            "body_timeout_s": body_timeout,
        },
        "berth serve",
    )
    c = client(ctx, acting=False)  # the server acts as each request's principal, not as one
    settings = c.settings
    log_to_stderr(LOGGERS)
    # -- secure by default: no server without auth on an address others can reach ----------
    if not settings.auth and not _loopback(host):
        if not insecure:
            raise InvalidInputError(
                f"refusing to serve {host} with auth off: whoever reaches it could call every "
                "route as an admin; turn auth on (BERTH_AUTH=1, with a key from `berth keys "
                "create --name NAME --role admin`) or pass --insecure"
            )
        warning = (
            f"WARNING: serving {host}:{port} WITH AUTH OFF (--insecure): anyone who reaches "
            "this address can register, move aliases, delete versions and predict, as an admin"
        )
        stderr.print(warning, style="bold red")
        logging.getLogger("berth.server").warning(warning)
    # -- end of secure by default ----------------------------------------------------------
    # -- TLS: the files checked here, once (uvicorn loads them again in each worker) --------
    from berth.server.tls import tls_config

    tls = tls_config(tls_cert, tls_key, tls_ca)
    scheme = "https" if tls else "http"
    if tls_ca is not None:
        console.print(f"mutual TLS: clients need a certificate signed by {tls_ca}")
    # -- end of TLS ------------------------------------------------------------------------
    console.print(
        f"serving {settings.home.resolve()} on {scheme}://{host}:{port} "
        f"(docs: {scheme}://{host}:{port}/docs)"
    )
    stop = _start_scheduler(c, scheduler_interval) if scheduler else None
    try:
        _run(settings, options, host, port, workers, tls)
    finally:
        if stop is not None:
            stop.set()


def _start_scheduler(c: Any, interval: float) -> threading.Event:
    """The scheduler loop on a daemon thread of this (the main) process, never in the workers:
    one scheduler per server, however many workers it has."""
    from berth.batch.scheduler import Scheduler

    with c.acting():  # the scheduled runs act as the command's principal (needs deploy)
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


def _loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost may
    resolve to anything: it counts as reachable)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _run(
    settings: Any, options: Any, host: str, port: int, workers: int, tls: dict[str, Any]
) -> None:
    import uvicorn

    from berth.app import SERVE_OPTIONS_ENV, build_server

    common = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 30,
        **tls,  # file names: each worker (a spawned process) builds its SSL context from them
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
        if not _BALANCED:
            uvicorn.run("berth.app:server_factory", factory=True, workers=workers, **common)  # type: ignore[arg-type]
            return
        config = uvicorn.Config("berth.app:server_factory", factory=True, workers=workers, **common)  # type: ignore[arg-type]
        Workers(config, workers).run()


_BALANCED = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Where the kernel spreads connections over the sockets of one SO_REUSEPORT group."""
_STARTUP_FAILURE = 3  # a uvicorn worker's exit status when its app failed to start
_log = logging.getLogger("uvicorn.error")


class Workers:
    """``workers`` uvicorn worker processes serving one port, each on a listening socket of its
    own in one SO_REUSEPORT group, so that the kernel spreads new connections over them.

    uvicorn's own supervisor hands every worker the one socket it bound, and the worker that
    wakes first accepts every connection waiting: the 16 connections a load generator opened at
    once went all to one worker in two runs out of three here, and the other worker idled. A
    worker that exits is replaced on a fresh socket (the dead one's is closed, so that the kernel
    gives new connections to the live workers meanwhile); one whose app fails to start stops the
    server. SIGINT and SIGTERM stop every worker gracefully."""

    def __init__(self, config: Any, workers: int) -> None:
        self.config = config
        self.count = workers
        self.stopping = threading.Event()
        self.port = 0

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM. Raises ``UnavailableError`` when the port is taken."""
        self.port = self._claim(self.config.port)
        sockets: list[socket.socket] = []
        try:
            sockets += [self._bind(self.port) for _ in range(self.count)]
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        scheme = "https" if self.config.is_ssl else "http"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        _log.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, host, self.port)
        _log.info("Started parent process [%d]", os.getpid())
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        processes = [self._start(sock) for sock in sockets]
        try:
            while not self.stopping.wait(0.5):
                self._replace_exited(processes, sockets)
        finally:
            _log.info("stopping the workers")
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: each finishes its requests, flushes records
            for process in processes:
                process.join()
            for sock in sockets:
                sock.close()

    def _replace_exited(self, processes: list[Any], sockets: list[socket.socket]) -> None:
        for i, process in enumerate(processes):
            if process.is_alive():
                continue
            process.join()
            if process.exitcode == _STARTUP_FAILURE:
                _log.error("worker [%d] failed to start: stopping the server", process.pid)
                self.stopping.set()
                return
            _log.info("worker [%d] exited (%s): starting another", process.pid, process.exitcode)
            sockets[i].close()
            try:
                sockets[i] = self._bind(self.port)
            except UnavailableError as exc:  # the port was taken meanwhile
                _log.error("%s: stopping the server", exc)
                self.stopping.set()
                return
            processes[i] = self._start(sockets[i])

    def _claim(self, port: int) -> int:
        """The port (a free one for 0), after checking that nothing listens on it: a socket
        of another SO_REUSEPORT group there (another server of this user) would otherwise be
        joined without a word, and the two servers would share the connections."""
        with self._socket() as probe:
            try:
                probe.bind((self.config.host, port))
            except OSError as exc:
                where = f"{self.config.host}:{port}"
                raise UnavailableError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
            return int(probe.getsockname()[1])

    def _bind(self, port: int) -> socket.socket:
        sock = self._socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.config.host, port))
        except OSError as exc:
            sock.close()
            where = f"{self.config.host}:{port}"
            raise UnavailableError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        return sock

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # IPPROTO_TCP named, so that accepted sockets say TCP and get TCP_NODELAY.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock

    def _start(self, sock: socket.socket) -> Any:
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked
        process = spawn.Process(target=_serve_on, args=(self.config, sock), name="berth-worker")
        process.start()
        return process


def _serve_on(config: Any, sock: socket.socket) -> None:
    """A worker process: uvicorn on one listening socket (the app is built here, by the
    factory named in ``config``)."""
    import uvicorn

    config.configure_logging()  # a spawned process starts with none
    # SIGINT is raised again after the graceful shutdown: nothing to add to it.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])


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
