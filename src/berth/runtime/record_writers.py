"""The two record writers: queued (off the request path, bounded) and keyed (idempotent).

Both write Parquet files of the declared record schema under
``ROOT/model=NAME/date=YYYY-MM-DD/``, each to a hidden temporary name first and then renamed, so
a reader never sees half a file. Files of the queued writer are named ``auto-…``; those of the
keyed writer after their key (``batch-JOB-000003``). Only ``auto-`` files are ever compacted:
merging a keyed file into another would stop a later write of its key from replacing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.runtime.records import RecordBatch, to_table

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("berth.records")

AUTO_PREFIX = "auto-"
LIBRARY_PREFIX = "library-"
"""Keyed files of library calls: one per call, unique, so compaction may merge them."""


@dataclass(frozen=True)
class RecorderLimits:
    """Tuning of the queued writer. How much a crash may lose: what is queued, at most
    ``flush_interval_s`` of records (or ``max_queue`` batches); a clean shutdown loses nothing."""

    max_queue: int = 10_000
    """Batches waiting to be written; beyond this they are dropped (and counted)."""
    flush_interval_s: float = 2.0
    """How often queued records are written out."""
    compact_interval_s: float | None = 3600.0
    """How often the writer's thread merges each day's small files into one (files older than
    a flush interval; see ``RecordReader.compact``); None turns it off."""


def day_of(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def write_parquet(
    table: pa.Table, folder: Path, name: str, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``table`` as ``folder/name.parquet``, atomically (temporary name, then rename)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.parquet.tmp"
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    # Statistics only where readers filter (time windows, versions): computing them for every
    # input column cost a sixth of a batch job's record writing.
    stats = [c for c in ("time", "version") if c in table.column_names]
    pq.write_table(table, tmp, compression="zstd", write_statistics=stats)
    final = folder / f"{name}.parquet"
    tmp.rename(final)
    return final


def auto_name() -> str:
    return f"{AUTO_PREFIX}{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class QueuedRecordWriter:
    """Never blocks a prediction: ``record`` puts a batch on a bounded queue and counts it as
    dropped when the queue is full. A thread drains the queue, groups batches per model version
    and day, and writes one file per group every ``flush_interval_s``."""

    def __init__(
        self,
        root: Path,
        limits: RecorderLimits | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or RecorderLimits()
        self._queue: queue.Queue[Any] = queue.Queue(self.limits.max_queue)
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop_compacting = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._thread is not None:  # called for every record: no lock once running
            return
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="berth-records", daemon=True)
            self._thread.start()
            if self.limits.compact_interval_s:
                self._stop_compacting.clear()
                threading.Thread(
                    target=self._compact_forever, name="berth-records-compact", daemon=True
                ).start()

    def record(self, batch: RecordBatch) -> bool:
        """Queue a batch; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self._count_dropped(batch.rows)
            return False
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the threads."""
        self._stop_compacting.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            self.flush_now()
            return
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("the record writer did not finish in %.0f s; records may be lost", timeout)

    def flush_now(self) -> None:
        """Write what is queued from the calling thread (tests, shutdown)."""
        self._write_safely(self._take_queued())

    def _count_dropped(self, rows: int) -> None:
        with self._lock:
            self.dropped += rows
        if self._on_drop is not None:
            self._on_drop(rows)

    def _run(self) -> None:
        """Sleeps until a flush is due, then takes everything queued: waiting on the queue
        itself woke this thread for every request (the queue's condition, the GIL handed over
        and back), which cost the event loop more than the record did."""
        while True:
            stopping = self._stopping.wait(self.limits.flush_interval_s)
            self._write_safely(self._take_queued())
            if stopping:
                return

    def _take_queued(self) -> list[RecordBatch]:
        pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                pending.append(self._queue.get_nowait())
        return pending

    def _compact_forever(self) -> None:
        """In a thread of its own, so that writing never waits for a compaction."""
        from berth.runtime.record_reader import RecordReader

        interval = self.limits.compact_interval_s or 0.0
        while not self._stop_compacting.wait(interval):
            try:
                RecordReader(self.root).compact(older_than_s=2 * self.limits.flush_interval_s)
            except Exception:  # housekeeping: never the end of the writer
                log.exception("compacting prediction records failed")

    def _write_safely(self, batches: list[RecordBatch]) -> None:
        """A failed write (disk full, permissions) loses those records, counted as dropped, and
        never the writer thread: predictions go on and later writes may succeed."""
        groups: dict[tuple[str, int, str, tuple[str, ...]], list[RecordBatch]] = {}
        for b in batches:
            # Same version, day and columns (a policy may have dropped some) share a file.
            key = (b.model, b.version, day_of(b.at), tuple(b.inputs))
            groups.setdefault(key, []).append(b)
        for (model, _version, day, _), group in groups.items():
            try:
                table = to_table(group)
                write_parquet(table, self.root / f"model={model}" / f"date={day}", auto_name())
            except Exception:
                rows = sum(b.rows for b in group)
                log.exception("writing %d prediction records failed", rows)
                self._count_dropped(rows)
                continue
            with self._lock:
                self.written += table.num_rows


class KeyedRecordWriter:
    """Writes each batch as the file named by its key, in a thread of its own (so a batch job's
    prediction thread does not wait for it), replacing the key's earlier file on any day."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, batch: RecordBatch | None, key: str, model: str) -> Future[None]:
        """``batch`` None (a policy kept nothing) removes the key's earlier file only."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="berth-records-keyed")
            return self._executor.submit(self.write, batch, key, model)

    def write(self, batch: RecordBatch | None, key: str, model: str) -> None:
        for stale in self.root.glob(f"model={model}/date=*/{key}.parquet"):
            stale.unlink(missing_ok=True)  # the key's earlier attempt, perhaps on another day
        if batch is not None and batch.rows:
            folder = self.root / f"model={model}" / f"date={day_of(batch.at)}"
            write_parquet(to_table([batch]), folder, key)

    def remove(self, model: str, prefix: str) -> int:
        found = list(self.root.glob(f"model={model}/date=*/{prefix}*.parquet"))
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
