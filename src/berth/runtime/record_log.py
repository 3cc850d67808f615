"""The durable mode's local log of prediction records: append-only, group-committed, replayed.

In durable mode (``RecorderLimits.durable``, ``BERTH_RECORDS_DURABLE=1``) a request is answered
only once its records are on disk in this log. Requests hand their :class:`RecordBatch` to
:meth:`RecordLog.submit` and await what it returns; one thread takes every batch waiting, writes
them as Arrow IPC and makes them durable with one ``fdatasync`` for all of them (group commit:
while one sync runs the next requests gather, so there is one sync per micro-batch or per few
milliseconds, never one per request), then settles every waiter at once (one wake-up of each
event loop, not one per request).

Layout, under the records root: ``_log/OWNER.lock`` (held with ``flock`` while the owning
process lives) and ``_log/OWNER-SEQ.arrows``, the segments. A segment is a sequence of frames,
each ``BRL1``, the payload's length and CRC-32, then the payload: the model and day the records
belong to, and one Arrow IPC stream (a schema and record batches) of one model version's records
in the declared record schema. The record writer
rotates the segment every flush interval, writes its tables as Parquet, makes those durable and
only then removes the segment. A segment whose owner is gone (its lock is free) is replayed by
the next writer to start: frames up to the first torn or damaged one (never acknowledged: its
sync did not return), and, because the owner may have died between writing the Parquet files
and removing the segment, only the records whose prediction ids are not stored yet. So every
answered prediction is in the records exactly once.

POSIX only (``flock``), like the servers it backs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from berth.registry.artifacts import fsync_folder

if TYPE_CHECKING:
    import pyarrow as pa

    from berth.runtime.records import RecordBatch

log = logging.getLogger("berth.records")

LOG_FOLDER = "_log"
"""Under the records root; the reader never looks there (it scans ``model=*`` folders)."""
_FRAME = struct.Struct("<4sII")
_KEY = struct.Struct("<H")
_MAGIC = b"BRL1"

LogEntry = tuple[str, str, "pa.Table"]
"""Records of one model version and day: (model, day, table)."""

Waiter = Future[None] | asyncio.Future[None]
"""What a request awaits: an asyncio future on an event loop's thread, else a concurrent one."""


@dataclass
class Segment:
    """One rotated log file and the tables written to it (kept in memory, so that turning it
    into Parquet reads nothing back)."""

    path: Path
    entries: list[LogEntry] = field(default_factory=list)


class RecordLog:
    """The log of one process's record writer. ``build`` makes the entries of a group of
    batches (the writer's grouping and ``to_table``): one table per model version and day."""

    def __init__(self, folder: Path, build: Callable[[list[RecordBatch]], list[LogEntry]]) -> None:
        self.folder = folder
        self._build = build
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._cond = threading.Condition()
        self._pending: list[tuple[RecordBatch, Waiter]] = []
        self._idle = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._segment_lock = threading.Lock()
        self._fd: int | None = None
        self._segment: Segment | None = None
        self._closed: list[Segment] = []  # segments given up after a failed write
        self._seq = 0
        self.commits = 0
        """Group commits so far (one sync each): batches per commit = submitted / commits."""
        self.submitted = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Take this process's lock and start the commit thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(self.folder / f"{self.owner}.lock")
        if fd is None:  # nobody else has this random name: the lock must be ours
            raise RuntimeError(f"cannot lock the record log {self.folder}/{self.owner}.lock")
        self._lock_fd = fd
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="berth-records-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is waiting, then stop the commit thread (segments stay for the writer)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def release(self) -> None:
        """Give up the lock, once every segment is converted: nothing of ours is left."""
        if self._lock_fd is None:
            return
        (self.folder / f"{self.owner}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    # -- the request side ------------------------------------------------------------------------

    def submit(self, batch: RecordBatch) -> Waiter:
        """Queue ``batch`` for the next group commit; the returned future is done once it is
        durable (or fails with ``UnavailableError`` when it cannot be written)."""
        waiter: Waiter
        try:
            waiter = asyncio.get_running_loop().create_future()
        except RuntimeError:  # a sync caller: no event loop on this thread
            waiter = Future()
        with self._cond:
            self._pending.append((batch, waiter))
            if self._idle:
                self._cond.notify()
        return waiter

    # -- the commit thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                taken, self._pending = self._pending, []
                stopping = self._stopping
            if taken:
                self._commit(taken)
            elif stopping:
                return

    def _commit(self, taken: list[tuple[RecordBatch, Waiter]]) -> None:
        self.commits += 1
        self.submitted += len(taken)
        waiters = [w for _, w in taken]
        try:
            built = self._build([b for b, _ in taken])
            frames = b"".join(_frame(entry) for entry in built)
        except Exception as exc:  # a record that Arrow cannot hold: those requests fail
            log.exception("prediction records of %d requests could not be encoded", len(taken))
            _settle(waiters, f"prediction records could not be encoded: {exc}")
            return
        try:
            with self._segment_lock:
                self._append(frames, built)
        except OSError as exc:
            log.exception("the record log %s could not be written", self.folder)
            _settle(waiters, f"prediction records could not be made durable ({exc})")
            return
        _settle(waiters, None)

    def _append(self, frames: bytes, entries: list[LogEntry]) -> None:
        if self._fd is None or self._segment is None:
            self._seq += 1
            path = self.folder / f"{self.owner}-{self._seq:06d}.arrows"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            self._segment = Segment(path)
            fsync_folder(self.folder)  # the new file's name is durable too
        fd = self._fd
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(frames)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except OSError:
            # The next commit goes to a new segment; this one keeps what it acknowledged (a
            # torn frame at its end is where a replay stops reading).
            with contextlib.suppress(OSError, UnboundLocalError):
                os.ftruncate(fd, start)
            with contextlib.suppress(OSError):
                os.close(fd)
            self._closed.append(self._segment)
            self._segment, self._fd = None, None
            raise
        self._segment.entries.extend(entries)

    def rotate(self) -> list[Segment]:
        """Close the current segment and return the segments closed since the last rotation
        (none when nothing was written); the next commit starts a new one."""
        with self._segment_lock:
            segment, fd = self._segment, self._fd
            self._segment, self._fd = None, None
            closed, self._closed = self._closed, []
        if fd is not None:
            os.close(fd)
        return [*closed, *([segment] if segment is not None else [])]


def _frame(entry: LogEntry) -> bytes:
    """One frame. The IPC stream is its schema's message and then each batch's: what a stream
    writer writes, at half its cost for the small tables of one commit."""
    model, day, table = entry
    key = f"{model}\n{day}".encode()
    parts = [_KEY.pack(len(key)), key, table.schema.serialize()]
    parts.extend(batch.serialize() for batch in table.to_batches())
    payload = b"".join(parts)
    return _FRAME.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _settle(waiters: list[Waiter], error: str | None) -> None:
    """Resolve every waiter, each event loop's in one callback on that loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append(waiter)
        elif not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(_unavailable(error))
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(_settle_on_loop, futures, error)


def _settle_on_loop(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(_unavailable(error))


def _unavailable(message: str) -> Exception:
    from berth.errors import UnavailableError

    return UnavailableError(message)


# -- reading back and replaying ------------------------------------------------------------------


def read_segment(path: Path) -> list[LogEntry]:
    """The entries of a segment's whole frames; a torn or damaged tail (a write that was never
    acknowledged) ends it."""
    import pyarrow as pa

    data = path.read_bytes()
    entries: list[LogEntry] = []
    at = 0
    while at + _FRAME.size <= len(data):
        magic, size, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size : at + _FRAME.size + size]
        if magic != _MAGIC or len(payload) != size or zlib.crc32(payload) != crc:
            break
        (length,) = _KEY.unpack_from(payload)
        model, day = payload[_KEY.size : _KEY.size + length].decode().split("\n")
        stream = pa.py_buffer(payload)[_KEY.size + length :]
        entries.append((model, day, pa.ipc.open_stream(stream).read_all()))
        at += _FRAME.size + size
    if at != len(data):
        log.warning("%s: %d bytes after the last whole frame ignored", path, len(data) - at)
    return entries


def orphans(folder: Path, own: str | None) -> Iterator[tuple[str, list[Path]]]:
    """Owners whose process is gone, each with its segments in order, while this process holds
    their lock (so two starting writers never replay one log twice)."""
    if not folder.is_dir():
        return
    owners = {p.stem for p in folder.glob("*.lock")}
    owners |= {p.stem.rsplit("-", 1)[0] for p in folder.glob("*.arrows")}
    for owner in sorted(owners - {own}):
        lock = folder / f"{owner}.lock"
        fd = _try_lock(lock)
        if fd is None:  # alive
            continue
        try:
            yield owner, sorted(folder.glob(f"{owner}-*.arrows"))
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
