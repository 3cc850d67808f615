"""Checkpoint parts, and the output assembled from them in one step nobody sees half-done.

A finished chunk is a Parquet part in the job's work folder, written under a temporary name and
renamed: a part that exists is complete, and the parts that exist are the checkpoint. At the end
the parts become the output: renamed into place (a Parquet folder), streamed into a temporary
file that is then renamed (a Parquet, CSV or JSONL file), or inserted in one transaction (a
database table). Until then the output does not exist, so a failed or interrupted job leaves
nothing half-written where users look.

Longer than an adapter module should be: one writer per output format sharing the atomic
placement; none holds model logic.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from berth.batch.specs import Location
from berth.errors import ConflictError, InvalidInputError, MissingExtraError, UnavailableError

PART = "part-{:06d}.parquet"
ARROW_PART = "part-{:06d}.arrow"


def write_part(folder: Path, index: int, table: pa.Table, *, parquet: bool = False) -> Path:
    """A checkpoint part. Arrow IPC (LZ4) unless the parts are to become the output itself (a
    Parquet folder): a third of Parquet's encoding work, and read back without decoding."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (PART if parquet else ARROW_PART).format(index)
    tmp = folder / f".{final.name}.tmp"
    if parquet:
        pq.write_table(table, tmp, compression="zstd")
    else:
        import pyarrow.ipc as ipc

        options = ipc.IpcWriteOptions(compression="lz4")
        with ipc.new_file(tmp, table.schema, options=options) as writer:
            writer.write_table(table)
    os.replace(tmp, final)
    return final


def _part(folder: Path, index: int) -> Path | None:
    for name in (ARROW_PART, PART):
        path = folder / name.format(index)
        if path.is_file():
            return path
    return None


def finished_parts(folder: Path) -> int:
    """How many chunks are done: parts 0..n-1 all present (a gap ends the count; later parts
    were written out of order by nobody, but are redone rather than trusted)."""
    n = 0
    while _part(folder, n) is not None:
        n += 1
    return n


def parts(folder: Path) -> list[Path]:
    found = [_part(folder, i) for i in range(finished_parts(folder))]
    return [p for p in found if p is not None]


def read_part(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def part_schema(path: Path) -> pa.Schema:
    if path.suffix == ".parquet":
        return pq.read_schema(path)
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).schema


def part_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return int(pq.read_metadata(path).num_rows)
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as source:
        reader = ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def tables(paths: list[Path]) -> Iterator[pa.Table]:
    for path in paths:
        yield read_part(path)


def check_free(location: Location, overwrite: bool) -> None:
    """Fail fast when the output exists and the job may not replace it."""
    if location.is_database:
        exists = _sql_table_exists if location.format == "sql" else _duckdb_table_exists
        if not overwrite and exists(location):
            raise ConflictError(
                f"output table {location.table!r} exists; pass --overwrite to replace it"
            )
        return
    path = Path(location.target)
    if path.exists() and not overwrite:
        raise ConflictError(f"output {location.target!r} exists; pass --overwrite to replace it")


class Streamed:
    """A Parquet output written as chunks finish, beside the parts, so that the end of a job is a
    rename instead of a pass over every part (a sixth of a 1M-row job's work). The parts remain
    the checkpoint: a resumed job, or a chunk whose schema does not fit the file's, gives up the
    stream and the output is assembled from the parts as for other formats."""

    def __init__(self, location: Location, work: Path) -> None:
        self.enabled = location.format == "parquet"
        self.path = work / "output.parquet.partial"
        self.writer: pq.ParquetWriter | None = None
        self.chunks = 0

    def add(self, index: int, table: pa.Table) -> None:
        if not self.enabled:
            return
        if index != self.chunks:  # resumed: the first chunks are only in the parts
            self.drop()
            return
        if self.writer is None:
            _remove(self.path)
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        elif table.schema != self.writer.schema:
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                self.drop()
                return
        self.writer.write_table(table)
        self.chunks += 1

    def finish(self, chunks: int) -> Path | None:
        """The complete file, or None when the stream was given up."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.enabled and chunks == self.chunks and chunks > 0:
            return self.path
        self.drop()
        return None

    def drop(self) -> None:
        self.enabled = False
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        _remove(self.path)


def place(made: Path, location: Location, overwrite: bool) -> None:
    """Move a finished output file into place: beside it first (the work folder may be on another
    file system), then one rename."""
    path = Path(location.target)
    tmp = path.with_name(f".{path.name}.berth-tmp")
    _remove(tmp)
    try:
        shutil.move(made, tmp)
        _replace(tmp, path, location, overwrite)
    finally:
        _remove(tmp)


def _replace(tmp: Path, path: Path, location: Location, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise ConflictError(
                f"output {location.target!r} appeared while the job ran; "
                "pass --overwrite to replace it"
            )
        _remove(path)
    os.replace(tmp, path)


def assemble(location: Location, paths: list[Path], schema: pa.Schema, overwrite: bool) -> None:
    """Make the output from the parts, atomically."""
    if location.format == "sql":
        _to_sql(location, paths, schema, overwrite)
    elif location.format == "duckdb":
        _to_duckdb(location, paths, schema, overwrite)
    else:
        path = Path(location.target)
        tmp = path.with_name(f".{path.name}.berth-tmp")
        _remove(tmp)
        try:
            _to_file(location.format, paths, schema, tmp)
            _replace(tmp, path, location, overwrite)
        finally:
            _remove(tmp)


def write_table_file(fmt: str, tables_: Iterator[pa.Table], schema: pa.Schema, path: Path) -> None:
    """One file from tables of one schema: Parquet, CSV or JSONL."""
    tables_ = (t if t.schema == schema else t.cast(schema) for t in tables_)
    if fmt == "parquet":
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for table in tables_:
                writer.write_table(table)
    elif fmt == "csv":
        import pyarrow.csv as csv

        flat = _flat_schema(schema)
        with csv.CSVWriter(path, flat) as writer:
            for table in tables_:
                writer.write_table(_flatten(table, flat))
    elif fmt == "jsonl":
        with open(path, "wb") as out:
            for table in tables_:
                for row in table.to_pylist():
                    out.write(orjson.dumps(row, default=str, option=orjson.OPT_APPEND_NEWLINE))
    else:  # pragma: no cover - formats are checked when the spec is made
        raise InvalidInputError(f"unknown output format {fmt!r}")


def _to_file(fmt: str, paths: list[Path], schema: pa.Schema, tmp: Path) -> None:
    if fmt == "parquet-folder":
        tmp.mkdir()
        for i, part in enumerate(paths):
            if not part.is_file():
                continue
            try:  # a hard link costs nothing; the work folder may be on another file system
                os.link(part, tmp / PART.format(i))
            except OSError:
                shutil.copyfile(part, tmp / PART.format(i))
        if not paths:
            pq.write_table(schema.empty_table(), tmp / PART.format(0))
        return
    write_table_file(fmt, tables(paths) if paths else iter([schema.empty_table()]), schema, tmp)


def _flat_schema(schema: pa.Schema) -> pa.Schema:
    """CSV holds scalars: list columns (an embedding, say) are written as JSON text."""
    return pa.schema([pa.field(f.name, pa.string()) if _is_nested(f.type) else f for f in schema])


def _is_nested(kind: pa.DataType) -> bool:
    return bool(pa.types.is_nested(kind))


def _flatten(table: pa.Table, flat: pa.Schema) -> pa.Table:
    columns = []
    for field, values in zip(table.schema, table.columns, strict=True):
        if _is_nested(field.type):
            text = [None if v is None else orjson.dumps(v).decode() for v in values.to_pylist()]
            columns.append(pa.array(text, type=pa.string()))
        else:
            columns.append(values)
    return pa.Table.from_arrays(columns, schema=flat)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- databases -------------------------------------------------------------------------------


def _sql_engine(location: Location) -> Any:
    from sqlalchemy import create_engine

    try:
        return create_engine(location.url)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(exc.name or "driver", "postgres", "this database") from exc
    except Exception as exc:  # ArgumentError, NoSuchModuleError: a URL we cannot use
        raise InvalidInputError(location.scrub(f"output database URL: {exc}")) from exc


def _sql_table_exists(location: Location) -> bool:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    engine = _sql_engine(location)
    try:
        return bool(inspect(engine).has_table(location.table or ""))
    except SQLAlchemyError as exc:
        message = f"output database: {str(exc).splitlines()[0]}"
        raise UnavailableError(location.scrub(message)) from exc
    finally:
        engine.dispose()


def _duckdb_table_exists(location: Location) -> bool:
    try:
        import duckdb
    except ModuleNotFoundError as exc:
        raise MissingExtraError("duckdb", "duckdb", "a DuckDB output") from exc
    path = location.url.split(":///", 1)[1]
    if not Path(path).exists():
        return False
    with duckdb.connect(path, read_only=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
            [location.table],
        ).fetchone()
    return bool(found and found[0])


def _sql_type(kind: pa.DataType) -> Any:
    import sqlalchemy as sa

    if pa.types.is_boolean(kind):
        return sa.Boolean()
    if pa.types.is_integer(kind):
        return sa.BigInteger()
    if pa.types.is_floating(kind):
        return sa.Float(precision=53)
    if pa.types.is_timestamp(kind):
        return sa.DateTime(timezone=kind.tz is not None)
    return sa.Text()


def _to_sql(location: Location, paths: list[Path], schema: pa.Schema, overwrite: bool) -> None:
    """One transaction: the table appears with every row, or not at all."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    engine = _sql_engine(location)
    flat = _flat_schema(schema)
    table = sa.Table(
        location.table or "",
        sa.MetaData(),
        *(sa.Column(f.name, _sql_type(f.type)) for f in flat),
    )
    try:
        with engine.begin() as conn:
            if sa.inspect(conn).has_table(table.name):
                if not overwrite:
                    raise ConflictError(
                        f"output table {table.name!r} exists; pass --overwrite to replace it"
                    )
                table.drop(conn)
            table.create(conn)
            for part in tables(paths):
                flat_part = _flatten(part if part.schema == schema else part.cast(schema), flat)
                for batch in flat_part.to_batches(max_chunksize=10_000):
                    conn.execute(table.insert(), batch.to_pylist())
    except SQLAlchemyError as exc:
        message = f"writing output table: {str(exc).splitlines()[0]}"
        raise UnavailableError(location.scrub(message)) from exc
    finally:
        engine.dispose()


def _to_duckdb(location: Location, paths: list[Path], schema: pa.Schema, overwrite: bool) -> None:
    try:
        import duckdb
    except ModuleNotFoundError as exc:
        raise MissingExtraError("duckdb", "duckdb", "a DuckDB output") from exc
    path = location.url.split(":///", 1)[1]
    name = '"' + (location.table or "").replace('"', '""') + '"'
    conn = duckdb.connect(path)
    try:
        conn.execute("BEGIN")
        exists = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
            [location.table],
        ).fetchone()
        if exists and exists[0]:
            if not overwrite:
                raise ConflictError(
                    f"output table {location.table!r} exists; pass --overwrite to replace it"
                )
            conn.execute(f"DROP TABLE {name}")
        empty = schema.empty_table()  # noqa: F841 - read by DuckDB's replacement scan
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM empty")
        for table in tables(paths):
            part = table if table.schema == schema else table.cast(schema)  # noqa: F841 - read by DuckDB
            conn.execute(f"INSERT INTO {name} SELECT * FROM part")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
