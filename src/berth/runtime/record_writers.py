"""The two record writers: queued (off the request path, bounded) and keyed (idempotent).

Both write Parquet files of the declared record schema under
``ROOT/model=NAME/date=YYYY-MM-DD/``, each to a hidden temporary name first and then renamed, so
a reader never sees half a file. Files of the queued writer are named ``auto-…``; those of the
keyed writer after their key (``batch-JOB-000003``). Only ``auto-`` files are ever compacted:
merging a keyed file into another would stop a later write of its key from replacing it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from berth.registry.artifacts import fsync_folder, fsync_path
from berth.runtime.codecs import InputBlock
from berth.runtime.record_log import (
    LOG_FOLDER,
    LogEntry,
    RecordLog,
    Segment,
    Waiter,
    orphans,
    read_segment,
)
from berth.runtime.records import RecordBatch, to_table

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("berth.records")

AUTO_PREFIX = "auto-"
LIBRARY_PREFIX = "library-"
"""Keyed files of library calls: one per call, unique, so compaction may merge them."""


@dataclass(frozen=True)
class RecorderLimits:
    """Tuning of the queued writer.

    How much a crash may lose by default: what is queued, at most ``flush_interval_s`` of
    records (or ``max_queue`` batches); a clean shutdown loses nothing. With ``durable`` a crash
    loses nothing answered: each response waits for its record to be in the local log (see
    ``record_log``), which costs a sync of the disk per group of requests."""

    max_queue: int = 10_000
    """Batches waiting to be written; beyond this they are dropped (and counted). Durable
    records are never dropped: the requests wait for them."""
    flush_interval_s: float = 2.0
    """How often queued records (or the durable log's segment) are written out as Parquet."""
    compact_interval_s: float | None = 3600.0
    """How often the writer's thread merges each day's small files into one (files older than
    a flush interval; see ``RecordReader.compact``); None turns it off."""
    durable: bool = False
    """Answer a request only once its records are in the local log (group commit)."""


_DAYS: dict[int, str] = {}


def day_of(at: float) -> str:
    """The UTC day of a time, cached per day (a flush asks once per request)."""
    number = int(at // 86_400)
    day = _DAYS.get(number)
    if day is None:
        day = _DAYS[number] = datetime.fromtimestamp(number * 86_400, UTC).strftime("%Y-%m-%d")
    return day


def write_parquet(
    table: pa.Table,
    folder: Path,
    name: str,
    metadata: dict[str, str] | None = None,
    *,
    durable: bool = False,
    compression: str = "zstd",
) -> Path:
    """Write ``table`` as ``folder/name.parquet``, atomically (temporary name, then rename);
    ``durable``: on disk, name included, when this returns. The queued writer's files use the
    cheaper ``lz4`` (half zstd's time on numeric features): compaction rewrites them in zstd."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.parquet.tmp"
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    # Statistics only where readers filter (time windows, versions): computing them for every
    # input column cost a sixth of a batch job's record writing.
    stats = [c for c in ("time", "version") if c in table.column_names]
    pq.write_table(
        table,
        tmp,
        compression=compression,
        write_statistics=stats,
        use_dictionary=dictionary_columns(table.schema),
    )
    final = folder / f"{name}.parquet"
    if durable:
        fsync_path(tmp)
    tmp.rename(final)
    if durable:
        fsync_folder(folder)
    return final


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth a dictionary: strings, but not the unique prediction ids. Trying one on
    every float feature (and giving up) was three quarters of a flush's time, and the files
    came out larger."""
    import pyarrow as pa

    return [
        f.name
        for f in schema
        if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        and f.name != "prediction_id"
    ]


def auto_name() -> str:
    return f"{AUTO_PREFIX}{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


GroupKey = tuple[str, int, str, tuple[str, ...]]


def group_batches(batches: list[RecordBatch]) -> dict[GroupKey, list[RecordBatch]]:
    """Batches that share a file: same model version, day and columns (a policy may have
    dropped some)."""
    groups: dict[GroupKey, list[RecordBatch]] = {}
    for b in batches:
        inputs = b.inputs
        names = inputs.names if isinstance(inputs, InputBlock) else tuple(inputs)
        groups.setdefault((b.model, b.version, day_of(b.at), names), []).append(b)
    return groups


def log_entries(batches: list[RecordBatch]) -> list[LogEntry]:
    """The durable log's entries of ``batches``: one table per group."""
    return [
        (model, day, to_table(group))
        for (model, _, day, _), group in group_batches(batches).items()
    ]


class QueuedRecordWriter:
    """Never blocks a prediction: ``record`` appends a batch to a bounded queue and counts it as
    dropped when the queue is full. A thread takes the queue every ``flush_interval_s``, groups
    batches per model version and day, and writes one file per group.

    Durable (``limits.durable``): ``commit`` hands the batch to the local log (see
    ``record_log``) and returns what the request awaits; the thread turns the log's segment
    into Parquet every ``flush_interval_s``. Either way, starting the writer first replays
    the logs of durable writers that died."""

    def __init__(
        self,
        root: Path,
        limits: RecorderLimits | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or RecorderLimits()
        # A deque, not a queue.Queue: appending is one atomic C call, where a Queue takes a lock
        # and notifies a condition per request.
        self._queue: deque[RecordBatch] = deque()
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self.replayed = 0
        """Rows of dead writers' logs written on start (not counting those already stored)."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the counts
        self._starting = threading.Lock()  # start and close
        self._stop_compacting = threading.Event()
        self._stopping = threading.Event()
        self.log = RecordLog(root / LOG_FOLDER, log_entries) if self.limits.durable else None
        self._unconverted: list[Segment] = []  # segments whose Parquet write failed: retried

    @property
    def durable(self) -> bool:
        return self.log is not None

    def start(self) -> None:
        if self._thread is not None:  # called for every record: no lock once running
            return
        with self._starting:
            if self._thread is not None:
                return
            self.replay()
            if self.log is not None:
                self.log.open()
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
        if len(self._queue) >= self.limits.max_queue:
            self._count_dropped(batch.rows)
            return False
        self._queue.append(batch)
        return True

    def commit(self, batch: RecordBatch) -> Waiter:
        """Durable mode: the future the request awaits, done once ``batch`` is in the log."""
        if self.log is None:
            raise RuntimeError("commit() needs a durable writer (RecorderLimits(durable=True))")
        self.start()
        return self.log.submit(batch)

    @property
    def depth(self) -> int:
        return len(self._queue) + (self.log.depth if self.log is not None else 0)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued (and logged), then stop the threads."""
        self._stop_compacting.set()
        with self._starting:
            thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            self._final_flush()
            return
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("the record writer did not finish in %.0f s; records may be lost", timeout)

    def flush_now(self) -> None:
        """Write what is queued (and the log's segment) from the calling thread (tests,
        benchmarks, shutdown)."""
        self._write_safely(self._take_queued())
        self._convert_log()

    def replay(self) -> int:
        """Write the records of dead writers' logs that are not stored yet; rows written."""
        rows = 0
        own = self.log.owner if self.log is not None else None
        for owner, segments in orphans(self.root / LOG_FOLDER, own):
            for path in segments:
                try:
                    rows += self._convert(Segment(path, read_segment(path)), replay=True)
                except Exception:  # the segment stays for the next start: nothing is lost
                    log.exception("replaying the record log %s failed", path)
            log.info("replayed the record log of %s: %d rows", owner, rows)
        self.replayed += rows
        return rows

    def _final_flush(self) -> None:
        if self.log is not None:
            self.log.stop()
        self.flush_now()
        if self.log is not None and not self._unconverted:
            self.log.release()

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
            if stopping:
                self._final_flush()
                return
            self.flush_now()

    def _take_queued(self) -> list[RecordBatch]:
        queued = self._queue
        return [queued.popleft() for _ in range(len(queued))]

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
        for (model, _version, day, _), group in group_batches(batches).items():
            try:
                table = to_table(group)
                folder = self.root / f"model={model}" / f"date={day}"
                write_parquet(table, folder, auto_name(), compression="lz4")
            except Exception:
                rows = sum(b.rows for b in group)
                log.exception("writing %d prediction records failed", rows)
                self._count_dropped(rows)
                continue
            with self._lock:
                self.written += table.num_rows

    def _convert_log(self) -> None:
        """The log's segment (and any that failed before) as Parquet; a segment is removed
        only once its files are durable, and one that fails stays for the next flush (or the
        next start), which writes only what is not stored yet."""
        if self.log is None:
            return
        retried, self._unconverted = self._unconverted, []
        # A segment that failed before may have written some of its files: those it leaves out.
        pending = [(seg, True) for seg in retried]
        pending += [(seg, False) for seg in self.log.rotate()]
        for seg, replay in pending:
            try:
                self._convert(seg, replay=replay)
            except Exception:
                log.exception("writing the record log %s as Parquet failed; retried", seg.path)
                self._unconverted.append(seg)

    def _convert(self, segment: Segment, *, replay: bool) -> int:
        """Write a segment's tables as Parquet (one file per model, day and columns), durably,
        then remove it. ``replay``: leave out records already stored (an earlier attempt may
        have written some before it was killed)."""
        import pyarrow as pa

        groups: dict[tuple[str, str, pa.Schema], list[pa.Table]] = {}
        for model, day, table in segment.entries:
            groups.setdefault((model, day, table.schema), []).append(table)
        rows = 0
        for (model, day, _), tables in groups.items():
            table = pa.concat_tables(tables)
            if replay:
                table = _not_stored(self.root, model, table)
            if table.num_rows:
                folder = self.root / f"model={model}" / f"date={day}"
                write_parquet(
                    table.combine_chunks(), folder, auto_name(), durable=True, compression="lz4"
                )
                rows += table.num_rows
        segment.path.unlink(missing_ok=True)
        with self._lock:
            self.written += rows
        return rows


def _not_stored(root: Path, model: str, table: pa.Table) -> pa.Table:
    """The rows of ``table`` whose prediction ids are not in the records yet (looked for in
    the time window the table spans, which the files' statistics narrow to a few files)."""
    from datetime import timedelta

    import pyarrow.compute as pc

    from berth.runtime.record_reader import RecordReader

    span = pc.min_max(table.column("time"))
    since, until = span["min"].as_py(), span["max"].as_py() + timedelta(microseconds=1)
    stored = RecordReader(root).read(model, since=since, until=until, columns=["prediction_id"])
    if not stored.num_rows:
        return table
    ids = stored.column("prediction_id").combine_chunks()
    return table.filter(pc.invert(pc.is_in(table.column("prediction_id"), value_set=ids)))


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
