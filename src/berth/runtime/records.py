"""Prediction records: every prediction, from every mode, written off the request path.

Storage is Parquet partitioned by model and day (``records/model=NAME/date=YYYY-MM-DD/*.parquet``),
with the validated inputs and the outputs as typed columns (``in.age``, ``out.label``...). Why
Parquet and not the metadata database: monitoring and A/B analysis read a few columns over millions
of rows within a time window, which columnar files with partition pruning do in milliseconds,
while every worker of every mode appends without contending for a database lock.

The writer never blocks a prediction: ``record`` puts a batch on a bounded queue and counts it as
dropped when the queue is full. A thread drains the queue, groups batches per model version and
writes one file per group every ``flush_interval_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.errors import InvalidInputError

log = logging.getLogger("berth.records")

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from berth.runtime.codecs import Columns
    from berth.types import Outputs

_STOP = object()


@dataclass(frozen=True)
class RecorderLimits:
    """Tuning of the record writer."""

    max_queue: int = 10_000
    """Batches waiting to be written; beyond this they are dropped (and counted)."""
    flush_interval_s: float = 2.0
    """How often queued records are written out."""


@dataclass
class RecordBatch:
    """The rows of one request (or one chunk of a batch job) as the inference path saw them."""

    model: str
    version: int
    mode: str
    prediction_ids: Sequence[str]
    """A list, or for big batches a pyarrow string array (made without a Python string per
    row)."""
    inputs: pd.DataFrame | Columns
    """The validated inputs: a frame, or (cheaper to write) its column arrays."""
    outputs: Outputs
    latency_ms: float
    unit_id: str | None = None
    at: float = field(default_factory=time.time)


class RecordWriter:
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

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="berth-records", daemon=True)
            self._thread.start()

    def record(self, batch: RecordBatch) -> bool:
        """Queue a batch; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            rows = len(batch.prediction_ids)
            with self._lock:
                self.dropped += rows
            if self._on_drop is not None:
                self._on_drop(rows)
            return False
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            self.flush_now()
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("the record writer is stuck; %d batches were not written", self.depth)
            return
        thread.join(timeout)

    def flush_now(self) -> None:
        """Write what is queued from the calling thread (tests, batch jobs, shutdown)."""
        pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not _STOP:
                    pending.append(item)
        self._write_safely(pending)

    def _run(self) -> None:
        pending: list[RecordBatch] = []
        deadline = time.monotonic() + self.limits.flush_interval_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write_safely(pending)
                return
            if item is not None:
                pending.append(item)
            if time.monotonic() >= deadline:
                self._write_safely(pending)
                pending = []
                deadline = time.monotonic() + self.limits.flush_interval_s

    def _write_safely(self, batches: list[RecordBatch]) -> None:
        """A failed write (disk full, permissions) loses those records, counted as dropped, and
        never the writer thread: predictions go on and later writes may succeed."""
        try:
            self._write(batches)
        except Exception:
            rows = sum(len(b.prediction_ids) for b in batches)
            log.exception("writing %d prediction records failed", rows)
            with self._lock:
                self.dropped += rows
            if self._on_drop is not None:
                self._on_drop(rows)

    def _write(self, batches: list[RecordBatch]) -> None:
        if not batches:
            return
        groups: dict[tuple[str, int, str], list[RecordBatch]] = {}
        for b in batches:
            day = datetime.fromtimestamp(b.at, UTC).strftime("%Y-%m-%d")
            groups.setdefault((b.model, b.version, day), []).append(b)
        for (model, _version, day), group in groups.items():
            table = _table(group)
            folder = self.root / f"model={model}" / f"date={day}"
            _write_parquet(table, folder)
            with self._lock:
                self.written += table.num_rows


def write_records(root: Path, batch: RecordBatch, name: str) -> None:
    """Write one batch's records now, as ``name``: batch jobs name a chunk's file after the job
    and the chunk, so that a chunk done again replaces its records instead of adding to them."""
    day = datetime.fromtimestamp(batch.at, UTC).strftime("%Y-%m-%d")
    for stale in root.glob(f"model={batch.model}/date=*/{name}.parquet"):
        stale.unlink(missing_ok=True)  # the chunk's earlier attempt, on another day
    _write_parquet(_table([batch]), root / f"model={batch.model}" / f"date={day}", name)


def remove_records(root: Path, model: str, prefix: str) -> int:
    """Remove record files whose name starts with ``prefix``; how many were removed."""
    found = list(root.glob(f"model={model}/date=*/{prefix}*.parquet"))
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def _table(group: list[RecordBatch]) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    ids: Any = (
        group[0].prediction_ids if len(group) == 1 else [i for b in group for i in b.prediction_ids]
    )
    counts = [len(b.prediction_ids) for b in group]

    def repeat(values: list[Any], kind: pa.DataType) -> pa.Array:
        if len(values) == 1:  # one batch (a batch job's chunk): no Python object per row
            return pa.repeat(pa.scalar(values[0], type=kind), counts[0])
        return pa.array(np.repeat(np.asarray(values, dtype=object), counts), type=kind)

    columns: dict[str, Any] = {
        "prediction_id": ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.string()),
        "time": pa.array(
            np.repeat(np.array([b.at for b in group]) * 1e6, counts).astype("int64"),
            type=pa.timestamp("us", tz="UTC"),
        ),
        "model": repeat([b.model for b in group], pa.string()),
        "version": repeat([b.version for b in group], pa.int32()),
        "mode": repeat([b.mode for b in group], pa.string()),
        "unit_id": repeat([b.unit_id for b in group], pa.string()),
        "latency_ms": repeat([b.latency_ms for b in group], pa.float32()),
    }

    # Plain numpy per column: concatenating hundreds of one-row DataFrames would hold the GIL
    # for a noticeable pause of every request in flight.
    def joined(arrays: list[Any]) -> Any:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    for name in _input_columns(group[0].inputs):
        values = joined([_input_columns(b.inputs)[name] for b in group])
        columns[f"in.{name}"] = _arrow(values)
    for name in group[0].outputs:
        values = joined([b.outputs[name] for b in group])
        if values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            columns[f"out.{name}"] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            columns[f"out.{name}"] = _arrow(values)
    return pa.table(columns)


def _input_columns(inputs: pd.DataFrame | Columns) -> Columns:
    if isinstance(inputs, dict):
        return inputs
    return {str(c): inputs[c].to_numpy() for c in inputs.columns}


def _arrow(values: Any) -> pa.Array:
    import pyarrow as pa

    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values  # a batch job hands over its Arrow input columns as they are
    if values.dtype == object:
        try:  # straight from the object array: five times faster than through a list
            return pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # numpy scalars mixed with Python ones
            return pa.array(values.tolist(), from_pandas=True)
    return pa.array(values)


def _write_parquet(table: pa.Table, folder: Path, name: str | None = None) -> None:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{name or f'{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'}.parquet"
    tmp = folder / f".{name}.tmp"
    # Statistics only where readers filter (time windows, versions): computing them for every
    # input column cost a sixth of a batch job's record writing.
    stats = [c for c in ("time", "version") if c in table.column_names]
    pq.write_table(table, tmp, compression="zstd", write_statistics=stats)
    tmp.rename(folder / name)  # readers never see half a file


def read_records(
    root: Path,
    model: str,
    *,
    version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Records of one model (optionally one version) in a time window, oldest first."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    folder = root / f"model={model}"
    if not folder.is_dir():
        return pa.table({})
    options: dict[str, Any] = {
        "format": "parquet",
        "partitioning": ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        "ignore_prefixes": [".", "_"],
    }
    files = ds.dataset(folder, **options)
    # Versions differ in features and outputs: read with the union of every file's columns.
    schemas = [fragment.physical_schema for fragment in files.get_fragments()]
    if not schemas:
        return pa.table({})
    schema = pa.unify_schemas(
        [*schemas, pa.schema([("date", pa.string())])], promote_options="permissive"
    )
    dataset = ds.dataset(folder, schema=schema, **options)
    condition = None
    for clause in _filters(version, since, until):
        condition = clause if condition is None else condition & clause
    table = dataset.to_table(filter=condition, columns=columns)
    if "date" in table.column_names and (columns is None or "date" not in columns):
        table = table.drop_columns(["date"])
    return table.sort_by("time") if "time" in table.column_names else table


def _filters(version: int | None, since: datetime | None, until: datetime | None) -> Iterator[Any]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if version is not None:
        yield ds.field("version") == version
    if since is not None:
        yield ds.field("date") >= since.astimezone(UTC).strftime("%Y-%m-%d")
        yield ds.field("time") >= pc.scalar(since.astimezone(UTC))
    if until is not None:
        yield ds.field("date") <= until.astimezone(UTC).strftime("%Y-%m-%d")
        yield ds.field("time") < pc.scalar(until.astimezone(UTC))


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``1h``, ``2d`` ago, or an ISO-8601 time."""
    now = now or datetime.now(UTC)
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    amount = text[:-1].replace(".", "", 1)
    if text[-1:] in units and amount.isascii() and amount.isdigit():
        try:
            return now - timedelta(**{units[text[-1]]: float(text[:-1])})
        except OverflowError:
            raise InvalidInputError(f"time {text!r} reaches past the calendar") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"cannot read time {text!r}: use 30m, 1h, 2d or an ISO time like 2026-11-26T10:00"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
