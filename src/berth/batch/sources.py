"""Chunked readers: each input format as a stream of fixed-size chunks, in a stable order.

Every chunk but the last holds exactly ``chunk_rows`` rows, and the same input always splits the
same way: chunk ``i`` is rows ``i * chunk_rows`` onwards, so a resumed job skips the chunks it
finished and nothing else. Only the columns a job needs (the features and the passthrough
columns) are read.

Text formats are read with their feature columns as text and converted here, value by value only
where a whole column does not convert: a value that is not a number then reaches validation as
itself, and refuses its row alone, instead of failing the reader's whole block.

Longer than an adapter module should be: one small reader class per format (Parquet, CSV,
JSONL, SQL, DuckDB) sharing the text-column conversion; none holds model logic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa

from berth.batch.specs import Location
from berth.errors import InvalidInputError, MissingExtraError, UnavailableError
from berth.registry.signature import NUMERIC, Signature
from berth.runtime.codecs import column

if TYPE_CHECKING:
    import pyarrow.parquet as pq


@dataclass
class Chunk:
    index: int
    first_row: int
    """Where the chunk starts in the input (0-based)."""
    data: pa.Table | dict[str, np.ndarray[Any, Any]]
    """The needed columns: a table, or (JSONL, SQL) column arrays as decoded."""
    failed: list[tuple[int, str]] = field(default_factory=list)
    """Rows the reader could not decode (row in chunk, reason); their data rows hold nulls."""

    @property
    def rows(self) -> int:
        if isinstance(self.data, pa.Table):
            return int(self.data.num_rows)
        return len(next(iter(self.data.values()))) if self.data else 0


class Reader:
    """A readable input. ``columns`` are what it offers; ``total_rows`` is known for Parquet
    and databases that say, and estimated from bytes read for text files."""

    columns: list[str]

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        self.location = location
        self.wanted = list(wanted)
        self.signature = signature

    @property
    def total_rows(self) -> int | None:
        return None

    def estimate_total(self, rows_read: int) -> int | None:
        return self.total_rows

    def check(self) -> None:
        """Fail fast, before any scoring, when a needed column is missing."""
        missing = [c for c in self.wanted if c not in self.columns]
        if missing:
            features = set(self.signature.names)
            kind = "feature" if all(m in features for m in missing) else "column"
            raise InvalidInputError(
                f"input {self.location.describe()} has no {kind}"
                f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                f"it has: {', '.join(self.columns[:30])}"
            )

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and connections."""


def open_reader(location: Location, wanted: Sequence[str], signature: Signature) -> Reader:
    """Open an input and check that it has every wanted column: fails before any scoring."""
    if not location.is_database and not Path(location.target).exists():
        raise InvalidInputError(f"input {location.target!r} does not exist")
    readers: dict[str, type[Reader]] = {
        "parquet": ParquetReader,
        "csv": CsvReader,
        "jsonl": JsonlReader,
        "sql": SqlReader,
        "duckdb": DuckDbReader,
    }
    reader = readers[location.format](location, wanted, signature)
    try:
        reader.check()
    except BaseException:
        reader.close()
        raise
    return reader


def input_stamp(location: Location) -> str:
    """Size and modification time of an input file (or of every part of a folder), to tell
    whether it changed between a job's attempts; empty for databases, which cannot say."""
    if location.is_database:
        return ""
    import hashlib

    path = Path(location.target)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:32]


def rechunk(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``chunk_rows`` rows (the last one shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(chunk_rows - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == chunk_rows:
                yield pa.Table.from_batches(pending)
                pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending)


class ParquetReader(Reader):
    """One file or a folder of parts (read in name order). Skipping chunks skips whole row groups
    by their metadata, so a resumed job does not re-read what it finished."""

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        import pyarrow.parquet as pq

        path = Path(location.target)
        if path.is_dir():
            names = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not p.name.startswith((".", "_")) and p.suffix != ".crc"
            )
            if not names:
                raise InvalidInputError(f"input folder {location.target!r} holds no Parquet files")
        else:
            names = [path]
        self.files: list[pq.ParquetFile] = []
        for name in names:
            try:
                self.files.append(pq.ParquetFile(name))
            except Exception as exc:  # pyarrow raises several unrelated types for a bad file
                self.close()
                raise InvalidInputError(f"{name}: not a readable Parquet file: {exc}") from exc
        self.columns = list(self.files[0].schema_arrow.names)
        for file, name in zip(self.files[1:], names[1:], strict=True):
            absent = [c for c in wanted if c not in file.schema_arrow.names]
            if absent:
                self.close()
                raise InvalidInputError(f"{name}: part has no column {absent[0]!r}")

    @property
    def total_rows(self) -> int:
        return sum(int(f.metadata.num_rows) for f in self.files)

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        skip = skip_chunks * chunk_rows
        first = skip

        def batches() -> Iterator[pa.RecordBatch]:
            to_skip = skip
            started = False  # once a group is kept, every later one is read whole
            for file in self.files:
                groups = []
                for g in range(file.metadata.num_row_groups):
                    n = file.metadata.row_group(g).num_rows
                    if not started and to_skip >= n:
                        to_skip -= n
                        continue
                    started = True
                    groups.append(g)
                if not groups:
                    continue
                for batch in file.iter_batches(
                    batch_size=min(chunk_rows, 65_536), row_groups=groups, columns=self.wanted
                ):
                    if to_skip:
                        cut = min(to_skip, batch.num_rows)
                        batch, to_skip = batch.slice(cut), to_skip - cut
                    if batch.num_rows:
                        yield batch

        for i, table in enumerate(rechunk(batches(), chunk_rows)):
            yield Chunk(skip_chunks + i, first + i * chunk_rows, table)

    def close(self) -> None:
        for file in getattr(self, "files", []):
            file.close()


class _CountingFile:
    """A file that tells how far it has been read, for an ETA on inputs of unknown length."""

    def __init__(self, path: str) -> None:
        self.raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the reader
        self.size = os.fstat(self.raw.fileno()).st_size
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.done += len(data)
        return data

    def readline(self) -> bytes:
        data = self.raw.readline()
        self.done += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _TextReader(Reader):
    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        self.file = _CountingFile(location.target)
        if self.file.size == 0:
            self.file.raw.close()
            raise InvalidInputError(f"input {location.target!r} is empty")

    def estimate_total(self, rows_read: int) -> int | None:
        """Rows read so far scaled by the share of bytes read; unknown once the reader has
        buffered the whole file ahead of the rows handed out."""
        if not self.file.done or not rows_read or self.file.done >= self.file.size:
            return None
        return max(rows_read, int(rows_read * self.file.size / self.file.done))

    def close(self) -> None:
        self.file.raw.close()


class CsvReader(_TextReader):
    """Streamed by pyarrow in blocks; features read as text and converted by
    :func:`typed_columns`; passthrough columns kept as text, exactly as written."""

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        import pyarrow.csv as csv

        try:
            header = csv.open_csv(
                self.file.raw,
                read_options=csv.ReadOptions(block_size=1 << 16),
            )
            self.columns = list(header.schema.names)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            self.close()
            raise InvalidInputError(f"{location.target}: not a readable CSV file: {exc}") from exc
        self.file.raw.seek(0)

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        import pyarrow.csv as csv

        self.file.raw.seek(0)
        self.file.done = 0
        reader = csv.open_csv(
            self.file,
            read_options=csv.ReadOptions(block_size=4 << 20),
            convert_options=csv.ConvertOptions(
                include_columns=self.wanted,
                column_types=dict.fromkeys(self.wanted, pa.string()),
                # Only an empty field is missing: "NA", "null" or "nan" may be a real text or id.
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
        skip = skip_chunks * chunk_rows

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from reader
            except pa.ArrowInvalid as exc:
                raise InvalidInputError(f"{self.location.target}: {exc}") from exc

        for i, table in enumerate(rechunk(_skip(batches(), skip), chunk_rows)):
            data = typed_columns(table, self.signature)
            yield Chunk(skip_chunks + i, skip + i * chunk_rows, data)


def _skip(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if rows >= batch.num_rows:
            rows -= batch.num_rows
            continue
        yield batch.slice(rows)
        rows = 0


def typed_columns(table: pa.Table, signature: Signature) -> pa.Table | dict[str, Any]:
    """Text feature columns as the signature's types. When every value of a column converts it
    is cast in Arrow; otherwise (rare) the chunk comes back as numpy columns, in which the values
    that convert are numbers and the rest stay text, so that validation refuses just those rows
    and names the value."""
    import pyarrow.compute as pc

    types = {f.name: f.dtype for f in signature.inputs}
    cast: dict[str, Any] = {}
    mixed: list[str] = []
    for name in table.column_names:
        values = table.column(name)
        dtype = types.get(name)
        if dtype is None or dtype == "string" or not pa.types.is_string(values.type):
            cast[name] = values
            continue
        target = pa.bool_() if dtype == "bool" else pa.from_numpy_dtype(np.dtype(dtype))
        try:
            cast[name] = pc.cast(values, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            cast[name] = values
            mixed.append(name)
    if not mixed:
        return pa.table(cast)
    columns = {n: c.to_numpy(zero_copy_only=False) for n, c in cast.items()}
    for name in mixed:
        columns[name] = _per_value(columns[name], types[name])
    return columns


def _per_value(text: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    """Numbers (or booleans) where the text is one, the text itself where it is not."""
    import pandas as pd

    out = np.empty(len(text), dtype=object)
    if dtype == "bool":
        words = {"true": True, "false": False, "1": True, "0": False}
        out[:] = [words.get(v.lower(), v) if isinstance(v, str) else v for v in text]
        return out
    parsed = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=float)
    out[:] = text
    good = np.flatnonzero(~np.isnan(parsed))
    if dtype in NUMERIC and np.dtype(dtype).kind in "iu":
        out[good] = [int(v) if v.is_integer() else v for v in parsed[good].tolist()]
    else:
        out[good] = parsed[good].tolist()
    return out


_BOM = b"\xef\xbb\xbf"


class JsonlReader(_TextReader):
    """One JSON object per line, decoded with orjson. Why not pyarrow's JSON reader: it fails a
    whole block on one bad line and infers types per block; here a bad line refuses its row
    alone (with its line number) and values keep their JSON types for validation to judge."""

    PEEK = 1000
    """Records whose keys stand for the file's columns in the fail-fast check."""

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        keys: dict[str, None] = {}
        seen = 0
        for number, raw in enumerate(self.file.raw, start=1):
            line = raw.removeprefix(_BOM) if number == 1 else raw
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if seen:
                    continue  # a bad line later on refuses its own row
                self.close()
                raise InvalidInputError(
                    f"{location.target}: line {number} is not JSON: {exc}"
                ) from exc
            if not isinstance(record, dict):
                if seen:
                    continue
                self.close()
                raise InvalidInputError(
                    f"{location.target}: line {number} is not a JSON object (one record per line)"
                )
            keys.update(dict.fromkeys(record))
            seen += 1
            if seen == self.PEEK:
                break
        if not seen:
            self.close()
            raise InvalidInputError(f"{location.target} holds no JSON records")
        # A key that none of the first records has is taken as missing from the file; a
        # record that lacks a key later refuses its row alone.
        self.columns = list(keys)

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        self.file.raw.seek(0)
        self.file.done = 0
        skip = skip_chunks * chunk_rows
        row = 0
        index = skip_chunks
        records: list[dict[str, Any] | None] = []
        failed: list[tuple[int, str]] = []
        for number, line in enumerate(iter(self.file.readline, b""), start=1):
            if number == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            row += 1
            if row <= skip:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                record, reason = None, f"line {number} is not JSON: {exc}"
            else:
                reason = f"line {number} is a {type(record).__name__}, not an object"
            if not isinstance(record, dict):
                failed.append((len(records), reason))
                record = None
            records.append(record)
            if len(records) == chunk_rows:
                yield self._chunk(index, (index) * chunk_rows, records, failed)
                index += 1
                records, failed = [], []
        if records:
            yield self._chunk(index, index * chunk_rows, records, failed)

    def _chunk(
        self,
        index: int,
        first: int,
        records: list[dict[str, Any] | None],
        failed: list[tuple[int, str]],
    ) -> Chunk:
        empty: dict[str, Any] = {}
        data = {name: column([(r or empty).get(name) for r in records]) for name in self.wanted}
        return Chunk(index, first, data, failed)


class SqlReader(Reader):
    """A query on any SQLAlchemy database, streamed with a server-side cursor. Give the query an
    ORDER BY: a resumed job skips the rows it finished by position."""

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self.engine = create_engine(location.url)
        except ModuleNotFoundError as exc:
            raise MissingExtraError(exc.name or "driver", "postgres", "this database") from exc
        except Exception as exc:  # ArgumentError, NoSuchModuleError: a URL we cannot use
            raise InvalidInputError(f"input database URL: {exc}") from exc
        self.text = text
        try:
            with self.engine.connect() as conn:
                probe = f"SELECT * FROM ({location.query}) AS berth_probe WHERE 1 = 0"
                self.columns = list(conn.execute(text(probe)).keys())
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise InvalidInputError(f"input query failed: {_first_line(exc)}") from exc

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        assert self.location.query is not None
        skip = skip_chunks * chunk_rows
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(
                self.text(self.location.query)
            )
            keys = list(result.keys())
            positions = [keys.index(name) for name in self.wanted]
            index = skip_chunks
            while skip:
                skipped = len(result.fetchmany(min(skip, chunk_rows)))
                if not skipped:
                    return
                skip -= skipped
            while rows := result.fetchmany(chunk_rows):
                data = {
                    name: column([_plain(row[i]) for row in rows])
                    for name, i in zip(self.wanted, positions, strict=True)
                }
                yield Chunk(index, index * chunk_rows, data)
                index += 1

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()


def _plain(value: Any) -> Any:
    """Database types validation does not know, as the JSON-like values it does."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


class DuckDbReader(Reader):
    """A query on DuckDB (``duckdb:///file.duckdb``, or ``duckdb:///:memory:`` to query files
    with DuckDB's own readers), streamed as Arrow batches."""

    def __init__(self, location: Location, wanted: Sequence[str], signature: Signature) -> None:
        super().__init__(location, wanted, signature)
        try:
            import duckdb
        except ModuleNotFoundError as exc:
            raise MissingExtraError("duckdb", "duckdb", "a DuckDB input") from exc
        path = location.url.split(":///", 1)[1] if ":///" in location.url else ":memory:"
        try:
            self.conn = duckdb.connect(path or ":memory:", read_only=path not in ("", ":memory:"))
            self.columns = [
                d[0] for d in self.conn.execute(f"DESCRIBE {location.query}").fetchall()
            ]
        except duckdb.Error as exc:
            raise InvalidInputError(f"input query failed: {_first_line(exc)}") from exc

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        query = f"SELECT {', '.join(_quote(c) for c in self.wanted)} FROM ({self.location.query})"
        try:
            relation = self.conn.sql(query)
            # DuckDB 2 renamed the streaming reader; 1.x has only the old name.
            old_name = "fetch_arrow_reader"
            reader = getattr(relation, "to_arrow_reader", None) or getattr(relation, old_name)
            batches = reader(min(chunk_rows, 65_536))
        except Exception as exc:
            raise UnavailableError(f"input query failed: {_first_line(exc)}") from exc
        skip = skip_chunks * chunk_rows
        for i, table in enumerate(rechunk(_skip(iter(batches), skip), chunk_rows)):
            yield Chunk(skip_chunks + i, skip + i * chunk_rows, table)

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
