"""Prometheus metrics of the inference path.

One worker (and every test): the metrics live on a registry of their own (never the global one),
so two apps in one process do not collide. Several workers (``berth serve --workers N``):
prometheus-client's multiprocess mode. The parent process makes a fresh folder
(:func:`multiprocess_folder`) and names it in ``PROMETHEUS_MULTIPROC_DIR`` before any worker
starts, each worker's metrics write their values to memory-mapped files there, and ``/metrics``
in any worker merges every worker's files: counters and histograms add up over workers (and over
workers that have exited or been restarted), gauges by the mode given for each below.

In multiprocess mode the metrics of a process share one set of files, so a worker holds one
:class:`Metrics` (two in one process would overwrite each other's values).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from berth.errors import MissingExtraError

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when it is imported: it must be set before a worker starts."""

log = logging.getLogger("berth.metrics")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingExtraError("prometheus_client", "server", "serving metrics") from exc
    return prometheus_client


class Metrics:
    """The path's metrics; ``multiprocess`` is the folder of multiprocess mode (None: a registry
    of this object's own). Raises ``RuntimeError`` when that folder is not the one
    prometheus-client was imported with."""

    def __init__(self, multiprocess: Path | None = None) -> None:
        prom = _prometheus()
        if multiprocess is not None:
            _check_multiprocess(prom, multiprocess)
        self.multiprocess = multiprocess
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.requests = prom.Counter(
            "berth_requests",
            "Prediction requests answered.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.rows = prom.Counter(
            "berth_predictions", "Rows predicted.", labels, registry=self.registry
        )
        self.latency = prom.Histogram(
            "berth_request_latency_seconds",
            "Time from decoded request to outputs.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = prom.Histogram(
            "berth_batch_size",
            "Rows per call to a predictor.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # Gauges over workers: what is waiting adds up over the live ones; a load time is the
        # slowest worker's (every worker loads every version it serves).
        self.queue_depth = prom.Gauge(
            "berth_queue_depth",
            "Requests waiting for a batch.",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.load_seconds = prom.Gauge(
            "berth_model_load_seconds",
            "Time to load a version.",
            labels,
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.records_dropped = prom.Counter(
            "berth_records_dropped",
            "Prediction records dropped: the writer's queue was full.",
            registry=self.registry,
        )
        self.records_queue = prom.Gauge(
            "berth_records_queue_depth",
            "Record batches waiting to be written.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.http = prom.Counter(
            "berth_http_requests",
            "HTTP requests by route and status.",
            ("route", "status"),
            registry=self.registry,
        )

    def sample(self, queue_depths: Mapping[tuple[str, int], int], records_queued: int) -> None:
        """Set the gauges read from the path's state (queues) rather than counted as they go."""
        self.records_queue.set(records_queued)
        for (model, version), depth in queue_depths.items():
            self.queue_depth.labels(model, str(version)).set(depth)

    def render(self) -> tuple[bytes, str]:
        """The text exposition: this object's registry, or every worker's files."""
        prom = _prometheus()
        if self.multiprocess is None:
            return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
        merged = prom.CollectorRegistry()
        _multiprocess().MultiProcessCollector(merged, path=str(self.multiprocess))
        return prom.generate_latest(merged), prom.CONTENT_TYPE_LATEST

    def labels(self, model: str, version: int) -> dict[str, Any]:
        return {"model": model, "version": str(version)}


def _multiprocess() -> Any:
    _prometheus()
    import prometheus_client.multiprocess

    return prometheus_client.multiprocess


def _check_multiprocess(prom: Any, folder: Path) -> None:
    # prometheus-client picks its value class (process memory or mapped files) once, on import.
    mapped = getattr(prom.values.ValueClass, "_multiprocess", False)
    named = os.environ.get(MULTIPROCESS_ENV)
    if not mapped or named is None or Path(named).resolve() != folder.resolve():
        raise RuntimeError(
            f"multiprocess metrics in {folder} need {MULTIPROCESS_ENV}={folder} set before "
            "prometheus_client is imported"
        )
    if not folder.is_dir():
        raise RuntimeError(f"the multiprocess metrics folder {folder} does not exist")


class GaugeSampler:
    """Calls ``sample`` every ``interval_s`` seconds on a daemon thread, until :meth:`stop`.

    In multiprocess mode ``/metrics`` is answered by one worker, which can set only its own
    gauges; each worker refreshes the gauges read from its state on its own, so a scrape is at
    most one interval behind on the others."""

    def __init__(self, sample: Callable[[], None], interval_s: float = 1.0) -> None:
        self._sample = sample
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="berth-metrics-sampler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._sample()
            except Exception:  # a metric a second late is no reason to stop sampling
                log.exception("sampling gauges failed")


@contextlib.contextmanager
def multiprocess_folder(reap_interval_s: float = 1.0) -> Iterator[Path]:
    """For the parent of server workers: a fresh, empty folder named in
    ``PROMETHEUS_MULTIPROC_DIR`` while the block runs (workers started inside inherit it), a
    thread that marks every worker that has exited dead (its live gauges go; its counts stay),
    and the folder removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="berth-metrics-"))
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = str(folder)
    stop = threading.Event()
    reaper = threading.Thread(
        target=_reap_forever,
        args=(folder, stop, reap_interval_s),
        name="berth-metrics-reaper",
        daemon=True,
    )
    reaper.start()
    try:
        yield folder
    finally:
        stop.set()
        reaper.join(5.0)
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous


def _reap_forever(folder: Path, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        try:
            reap_dead_workers(folder)
        except Exception:  # housekeeping: never the end of the server
            log.exception("marking exited workers' metrics dead failed")


def reap_dead_workers(folder: Path) -> list[int]:
    """Mark every process with live gauges in ``folder`` that no longer runs dead (uvicorn's
    supervisor restarts a worker that exits; the new one has a pid, and files, of its own)."""
    pids = set()
    for f in folder.glob("gauge_live*_*.db"):
        number = f.stem.rsplit("_", 1)[-1]
        if number.isdigit():
            pids.add(int(number))
    dead = sorted(pid for pid in pids if not _running(pid))
    for pid in dead:
        _multiprocess().mark_process_dead(pid, str(folder))
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child that has exited but is not yet waited for is a zombie: gone all the same
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
