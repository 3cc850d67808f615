"""The one reader of prediction records (``berth logs``, monitoring), and their compaction.

Records are scanned with ``pyarrow.dataset``: partition pruning on the day, statistics on time
and version, only the columns asked for. Versions differ in features and outputs, so a scan reads
with the union of every file's columns.

Compaction merges the many small files that the queued writer leaves in a day (one every flush
interval per worker, one per recorded library call) into one per run, so a day of traffic is a
few files, not thousands; merged files are not merged again. The merged file is streamed one
input at a time, names the files it replaced in its metadata, and is made durable and renamed
into place before they are removed; a crash in between leaves both, and the next compaction
removes the replaced ones first (a scan at exactly that moment may count those records twice).
A scan that loses a file to a compaction under way starts again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.errors import InvalidInputError
from berth.registry.artifacts import fsync_folder, fsync_path
from berth.runtime.record_writers import (
    AUTO_PREFIX,
    LIBRARY_PREFIX,
    auto_name,
    dictionary_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("berth.records")
_REPLACED = b"berth.replaced"
_MERGED = f"{AUTO_PREFIX}merged-"


class RecordReader:
    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in self.root.glob("model=*") if p.is_dir())

    def read(
        self,
        model: str,
        *,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Records of one model (optionally one version) in a time window, oldest first."""

        folder = self.root / f"model={model}"
        for attempt in range(3):
            try:
                return self._read(folder, version, since, until, columns)
            except FileNotFoundError:  # a compaction removed a file between listing and reading
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(
        self,
        folder: Path,
        version: int | None,
        since: datetime | None,
        until: datetime | None,
        columns: list[str] | None,
    ) -> pa.Table:
        import pyarrow as pa
        import pyarrow.dataset as ds

        if not folder.is_dir():
            return pa.table({})
        options: dict[str, Any] = {
            "format": "parquet",
            "partitioning": ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
            "ignore_prefixes": [".", "_"],
        }
        files = ds.dataset(folder, **options)
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

    # -- compaction ------------------------------------------------------------------------------

    def compact(
        self, model: str | None = None, *, min_files: int = 2, older_than_s: float = 60.0
    ) -> CompactionReport:
        """Merge each day's queued-writer files of ``model`` (every model by default) that are
        older than ``older_than_s`` (a file still being written is never touched; the writer
        renames files into place whole anyway) into one file per version and column set."""
        import time

        from filelock import FileLock, Timeout

        report = CompactionReport()
        cutoff = time.time() - older_than_s
        for name in [model] if model else self.models():
            folder = self.root / f"model={name}"
            # One compaction per model at a time, across processes (every server worker compacts):
            # two merging the same files would each write them once more.
            lock = FileLock(folder / ".compact.lock", timeout=0)
            try:
                lock.acquire()
            except Timeout:
                report.busy.append(name)
                continue
            try:
                self._compact_model(folder, cutoff, min_files, report)
            finally:
                lock.release()
        return report

    def _compact_model(
        self, folder: Path, cutoff: float, min_files: int, report: CompactionReport
    ) -> None:
        for day in sorted(folder.glob("date=*")):
            self._finish_interrupted(day)
            files = [
                f
                for f in sorted(day.glob("*.parquet"))
                if _is_small(f) and f.stat().st_mtime <= cutoff
            ]
            if len(files) < min_files:
                continue
            merged = self._merge(day, files)
            report.days += 1
            report.files_before += len(files)
            report.files_after += merged

    def _merge(self, day: Path, files: list[Path]) -> int:
        import pyarrow.parquet as pq

        groups: dict[tuple[Any, ...], list[Path]] = {}
        for f in files:
            schema = pq.read_schema(f)
            key = tuple((field.name, str(field.type)) for field in schema)
            groups.setdefault(key, []).append(f)
        written = 0
        for group in groups.values():
            if len(group) < 2:
                written += len(group)
                continue
            _merge_files(day, group)
            written += 1
        return written

    def _finish_interrupted(self, day: Path) -> None:
        """Remove files that a merged file already holds (a compaction killed mid-way)."""
        import pyarrow.parquet as pq

        for f in sorted(day.glob(f"{_MERGED}*.parquet")):
            if not f.exists():  # replaced by a later merge, removed just now
                continue
            meta = pq.read_schema(f).metadata or {}
            for name in meta.get(_REPLACED, b"").decode().split(","):
                if name:
                    (day / name).unlink(missing_ok=True)


@dataclass
class CompactionReport:
    days: int = 0
    """Day partitions compacted."""
    files_before: int = 0
    files_after: int = 0
    busy: list[str] = field(default_factory=list)
    """Models skipped because another process was compacting them."""


def _is_small(path: Path) -> bool:
    """A file compaction merges: one flush of the queued writer, or one library call's records.
    Merged files are not merged again (each compaction would rewrite the whole day), nor are
    keyed files of batch chunks and stream messages (a later write of their key replaces them)."""
    name = path.name
    if name.startswith(_MERGED):
        return False
    # Files written before keyed names existed are named by a timestamp: queued-writer files too.
    return name.startswith((AUTO_PREFIX, LIBRARY_PREFIX)) or name[:1].isdigit()


def _merge_files(day: Path, group: list[Path]) -> None:
    """Stream ``group`` (one schema) into one file, one input at a time (memory holds one
    flush, not a day), make it durable, put it in place, then remove the inputs."""
    import pyarrow.parquet as pq

    name = auto_name().replace(AUTO_PREFIX, _MERGED, 1)
    tmp = day / f".{name}.parquet.tmp"
    schema = pq.read_schema(group[0])
    meta = {**(schema.metadata or {}), _REPLACED: ",".join(f.name for f in group).encode()}
    stats = [c for c in ("time", "version") if c in schema.names]
    with pq.ParquetWriter(
        tmp,
        schema.with_metadata(meta),
        compression="zstd",
        write_statistics=stats,
        use_dictionary=dictionary_columns(schema),
    ) as out:
        for f in group:
            out.write_table(pq.read_table(f, schema=schema))
    fsync_path(tmp)
    tmp.rename(day / f"{name}.parquet")
    fsync_folder(day)  # the rename is on disk before any input goes
    for f in group:
        f.unlink(missing_ok=True)


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
    """A duration ago (``30m``, ``1h``, ``2d``, ``1h30m``: pytimeparse's grammar), or an ISO-8601
    time."""
    from pytimeparse.timeparse import timeparse as parse_duration

    now = now or datetime.now(UTC)
    seconds = parse_duration(text.strip()) if text.strip()[:1].isdigit() else None
    if seconds is not None:
        try:
            return now - timedelta(seconds=float(seconds))
        except OverflowError:
            raise InvalidInputError(f"time {text!r} reaches past the calendar") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"cannot read time {text!r}: use 30m, 1h, 2d or an ISO time like 2026-11-26T10:00"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
