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
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa

from berth.batch.specs import Location
from berth.errors import InvalidInputError, MissingExtraError
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
        self.names = names
        self.columns = list(self.files[0].schema_arrow.names)
        try:
            self.schema = self._common_schema()
        except InvalidInputError:
            self.close()
            raise

    def _common_schema(self) -> pa.Schema | None:
        """The wanted columns' types over every part: types that widen (int32 in one part, int64
        in another) are read as the wider; others fail here, naming the part, not mid-job."""
        common: pa.Schema | None = None
        first = self.names[0]
        for file, name in zip(self.files, self.names, strict=True):
            arrow = file.schema_arrow
            absent = [c for c in self.wanted if c not in arrow.names]
            if absent:  # the first part's are found by check(), with the columns it has
                if common is None:
                    return None
                raise InvalidInputError(f"{name}: part has no column {absent[0]!r}")
            part = pa.schema([arrow.field(c) for c in self.wanted])
            if common is None:
                common = part
                continue
            try:
                common = pa.unify_schemas([common, part], promote_options="permissive")
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                column = next(f for f in part if common.field(f.name).type != f.type)
                raise InvalidInputError(
                    f"{name}: column {column.name!r} is {column.type} here but "
                    f"{common.field(column.name).type} in {first}; give every part the same types"
                ) from None
        return common

    @property
    def total_rows(self) -> int:
        return sum(int(f.metadata.num_rows) for f in self.files)

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        skip = skip_chunks * chunk_rows
        first = skip

        def batches() -> Iterator[pa.RecordBatch]:
            to_skip = skip
            started = False  # once a group is kept, every later one is read whole
            for file, name in zip(self.files, self.names, strict=True):
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
                for batch in self._read(file, name, groups, min(chunk_rows, 65_536)):
                    if to_skip:
                        cut = min(to_skip, batch.num_rows)
                        batch, to_skip = batch.slice(cut), to_skip - cut
                    if batch.num_rows:
                        yield batch

        for i, table in enumerate(rechunk(batches(), chunk_rows)):
            yield Chunk(skip_chunks + i, first + i * chunk_rows, table)

    def _read(
        self, file: pq.ParquetFile, name: Path, groups: list[int], size: int
    ) -> Iterator[pa.RecordBatch]:
        """A part's batches in the common types; a damaged page (a checksum, a compressed block
        that does not decode) ends the job with the part's name instead of pyarrow's trace."""
        batches = file.iter_batches(batch_size=size, row_groups=groups, columns=self.wanted)
        rows = sum(file.metadata.row_group(g).num_rows for g in range(groups[0]))
        while True:
            try:
                batch = next(batches)
                if self.schema is not None and batch.schema != self.schema:
                    batch = batch.cast(self.schema)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as exc:
                raise InvalidInputError(
                    f"{name} is damaged: its rows from {rows:,} on cannot be read "
                    f"({_first_line(exc)})"
                ) from exc
            rows += batch.num_rows
            yield batch

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
        try:
            self.file = _CountingFile(location.target)
        except OSError as exc:  # a folder, no permission, a file gone since the spec was made
            raise InvalidInputError(f"input {location.target!r} cannot be read: {exc}") from exc
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
                # A ragged row among the first lines is the chunks' to refuse, not the header's.
                parse_options=csv.ParseOptions(invalid_row_handler=lambda row: "skip"),
            )
            self.columns = list(header.schema.names)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            self.close()
            raise InvalidInputError(
                f"{location.target}: not a readable CSV file: {_first_line(exc)}"
            ) from exc
        self.file.raw.seek(0)

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        import pyarrow.csv as csv

        self.file.raw.seek(0)
        self.file.done = 0
        ragged = _RaggedRows(self.location.target)
        skip = skip_chunks * chunk_rows

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                reader = csv.open_csv(
                    self.file,
                    # One thread: pyarrow knows a ragged row's number only when it parses in order.
                    read_options=csv.ReadOptions(block_size=4 << 20, use_threads=False),
                    parse_options=csv.ParseOptions(invalid_row_handler=ragged),
                    convert_options=csv.ConvertOptions(
                        include_columns=self.wanted,
                        # Bytes, decoded per chunk: a value that is not UTF-8 refuses its row alone.
                        column_types=dict.fromkeys(self.wanted, pa.binary()),
                        # Only an empty field is missing: "NA", "null" or "nan" may be a real text.
                        null_values=[""],
                        strings_can_be_null=True,
                    ),
                )
                yield from ragged.placed(reader, reader.schema)
            except pa.ArrowInvalid as exc:
                reason = _first_line(exc)
                if "out of sync with chunker" in reason:  # pyarrow's advice names its own option
                    reason = (
                        "a quoted value runs over several lines, or a quote is not closed; "
                        "values with line breaks are not read from CSV (use JSONL or Parquet)"
                    )
                raise InvalidInputError(f"{self.location.target}: {reason}") from exc

        for i, table in enumerate(rechunk(_skip(batches(), skip), chunk_rows)):
            first = skip + i * chunk_rows
            failed = ragged.take(first, table.num_rows)
            table, undecodable = _decoded(table, first)
            data = typed_columns(table, self.signature)
            yield Chunk(skip_chunks + i, first, data, sorted([*failed, *undecodable]))


class _RaggedRows:
    """pyarrow's ``invalid_row_handler``: a row whose fields do not match the header's is set
    aside with its line and text, and :meth:`placed` puts a row of nulls where it was, so that the
    rows after it keep their numbers (the prediction ids, the chunks a resumed job skips) and the
    row is refused alone.

    pyarrow numbers rows from 1 with the header, not counting blank lines (which it skips): that
    number is the line number in a file without blank lines, and minus 2 the data row's.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.reasons: dict[int, str] = {}
        self.order: list[int] = []  # ascending: pyarrow parses in order on one thread
        self.unclosed: str | None = None
        self._lock = threading.Lock()

    def __call__(self, row: Any) -> str:
        if row.number is None:  # never on one thread; without a place the row cannot be refused
            return "error"
        text = str(row.text)
        with self._lock:
            if "\n" in text or "\r" in text:
                # A quote left open: the parser took every line to the end of its block as one
                # value. Refusing them as one row would lose them without a word.
                lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
                self.unclosed = self.unclosed or (
                    f"{self.source}: line {row.number}: a quote is not closed (the row runs over "
                    f"{lines:,} lines); close it and run the job again"
                )
                return "skip"
            shown = _shown(text)
            fields = "field" if row.actual_columns == 1 else "fields"
            index = row.number - 2
            self.reasons[index] = (
                f"line {row.number} has {row.actual_columns} {fields} where the header has "
                f"{row.expected_columns}: {shown}"
            )
            self.order.append(index)
        return "skip"

    def placed(
        self, batches: Iterator[pa.RecordBatch], schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        """The reader's batches with a row of nulls for each ragged row. A ragged row is known by
        the time a batch after it comes: blocks are parsed in order, each before its batch."""
        blank = pa.RecordBatch.from_arrays([pa.nulls(1, f.type) for f in schema], schema=schema)
        position = 0  # rows handed out, ragged ones included
        seen = 0  # ragged rows placed
        for batch in batches:
            self._check()
            while batch.num_rows:
                due = self._next(seen)
                if due is None or due >= position + batch.num_rows:
                    position += batch.num_rows
                    yield batch
                    break
                if due > position:
                    yield batch.slice(0, due - position)
                    batch = batch.slice(due - position)
                position = due + 1
                seen += 1
                yield blank
        self._check()
        while (due := self._next(seen)) is not None:  # ragged rows after the last good one
            position = due + 1
            seen += 1
            yield blank

    def take(self, first: int, rows: int) -> list[tuple[int, str]]:
        """The ragged rows among rows ``first`` to ``first + rows``, as (row in chunk, reason)."""
        with self._lock:
            found = [i for i in self.reasons if first <= i < first + rows]
            return [(i - first, self.reasons.pop(i)) for i in sorted(found)]

    def _next(self, seen: int) -> int | None:
        with self._lock:
            return self.order[seen] if seen < len(self.order) else None

    def _check(self) -> None:
        if self.unclosed is not None:
            raise InvalidInputError(self.unclosed)


SHOWN = 200
"""Characters of a bad row's text kept in its error: enough to find and fix it."""


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _decoded(table: pa.Table, first: int) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The CSV's byte columns as text; a value that is not UTF-8 becomes null and refuses its
    row (decoded value by value only in a column where the whole does not decode)."""
    import pyarrow.compute as pc

    columns: dict[str, Any] = {}
    failed: dict[int, str] = {}
    for name in table.column_names:
        values = table.column(name)
        try:
            columns[name] = pc.cast(values, pa.string())
            continue
        except pa.ArrowInvalid:
            pass
        text: list[str | None] = []
        for i, raw in enumerate(values.to_pylist()):
            try:
                text.append(None if raw is None else raw.decode())
            except UnicodeDecodeError:
                text.append(None)
                failed.setdefault(
                    i, f"line {first + i + 2}: column {name!r} is not UTF-8 text: {raw[:60]!r}"
                )
        columns[name] = pa.array(text, pa.string())
    return pa.table(columns), sorted(failed.items())


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
                record, reason = None, f"line {number} is not JSON ({exc})"
            else:
                reason = f"line {number} is a {type(record).__name__}, not an object"
            if not isinstance(record, dict):
                text = line.decode(errors="replace").rstrip("\r\n")
                failed.append((len(records), f"{reason}: {_shown(text)}"))
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
            raise InvalidInputError(location.scrub(f"input database URL: {exc}")) from exc
        self.text = text
        try:
            with self.engine.connect() as conn:
                probe = f"SELECT * FROM ({location.query}) AS berth_probe WHERE 1 = 0"
                self.columns = list(conn.execute(text(probe)).keys())
        except SQLAlchemyError as exc:
            self.engine.dispose()
            message = f"input query failed: {_first_line(exc)}"
            raise InvalidInputError(location.scrub(message)) from exc

    def chunks(self, chunk_rows: int, skip_chunks: int = 0) -> Iterator[Chunk]:
        """The query's rows. A query can fail half-way (a division by zero in row 10,000, a
        lost connection): that ends the job with the database's first line, after the chunks
        already done, which a resumed job keeps."""
        from sqlalchemy.exc import SQLAlchemyError

        assert self.location.query is not None
        skip = skip_chunks * chunk_rows
        read = 0
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(
                    stream_results=True, max_row_buffer=chunk_rows
                ).execute(self.text(self.location.query))
                self._open = (conn, result)  # closed by close() when the job stops half-way
                keys = list(result.keys())
                positions = [keys.index(name) for name in self.wanted]
                index = skip_chunks
                while skip:
                    skipped = len(result.fetchmany(min(skip, chunk_rows)))
                    if not skipped:
                        return
                    skip -= skipped
                    read += skipped
                while rows := result.fetchmany(chunk_rows):
                    data = {
                        name: column([_plain(row[i]) for row in rows])
                        for name, i in zip(self.wanted, positions, strict=True)
                    }
                    read += len(rows)
                    yield Chunk(index, index * chunk_rows, data)
                    index += 1
        except SQLAlchemyError as exc:
            message = f"input query failed after row {read:,}: {_first_line(exc)}"
            raise InvalidInputError(self.location.scrub(message)) from exc

    def close(self) -> None:
        opened: tuple[Any, Any] | None = getattr(self, "_open", None)
        if opened is not None:  # a job stopped half-way: its cursor and connection, now
            opened[1].close()
            opened[0].close()
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
    lines = str(orig or exc).strip().splitlines()
    return lines[0] if lines else type(orig or exc).__name__


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
        import duckdb

        query = f"SELECT {', '.join(_quote(c) for c in self.wanted)} FROM ({self.location.query})"
        try:
            relation = self.conn.sql(query)
            # DuckDB 2 renamed the streaming reader; 1.x has only the old name.
            old_name = "fetch_arrow_reader"
            reader = getattr(relation, "to_arrow_reader", None) or getattr(relation, old_name)
            batches = reader(min(chunk_rows, 65_536))
        except Exception as exc:  # duckdb.Error, or pyarrow's when it converts the results
            raise InvalidInputError(f"input query failed: {_first_line(exc)}") from exc
        skip = skip_chunks * chunk_rows
        read = 0

        def fetched() -> Iterator[pa.RecordBatch]:  # a query can fail half-way, as in SqlReader
            nonlocal read
            try:
                for batch in batches:
                    read += batch.num_rows
                    yield batch
            except (duckdb.Error, pa.ArrowException, OSError) as exc:  # OSError: pyarrow wraps it
                raise InvalidInputError(
                    f"input query failed after row {read:,}: {_first_line(exc)}"
                ) from exc

        for i, table in enumerate(rechunk(_skip(fetched(), skip), chunk_rows)):
            yield Chunk(skip_chunks + i, skip + i * chunk_rows, table)

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
