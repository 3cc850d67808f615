"""What a batch job is asked to do, checked before anything runs, and stored with the job.

A spec round-trips through JSON (the jobs table, schedules), and the same spec always gives the
same fingerprint: that is how running a command again finds the job it interrupted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from berth.errors import InvalidInputError
from berth.runtime.files import format_of

FILE_FORMATS = ("parquet", "csv", "jsonl")
DEFAULT_CHUNK_ROWS = 100_000
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Location:
    """A file, a folder of Parquet parts, or a table or query in a database.

    ``target`` is a path, or a database URL (SQLAlchemy, or ``duckdb:///file.duckdb``); ``query``
    reads from a database, ``table`` writes to one.
    """

    target: str
    format: str
    query: str | None = None
    table: str | None = None

    @property
    def is_database(self) -> bool:
        return self.format in ("sql", "duckdb")

    @property
    def url(self) -> str:
        """The database URL with ``${VARIABLES}`` filled in from the environment, when it is
        opened: a password given as ``${PGPASSWORD}`` is never stored with the job."""
        return os.path.expandvars(self.target)

    def describe(self) -> str:
        if self.query is not None:
            return f"{_hide_password(self.target)} query {self.query!r}"
        if self.table is not None:
            return f"{_hide_password(self.target)} table {self.table!r}"
        return self.target


def source(target: str, fmt: str | None = None, query: str | None = None) -> Location:
    """An input, checked to exist and to be in a format we read."""
    if _is_url(target):
        if not query:
            raise InvalidInputError(f"input {_hide_password(target)} is a database: pass --query")
        query = query.strip().rstrip(";").rstrip()  # a query is wrapped: no statement end
        return Location(target, _database_format(target), query=query)
    if query:
        raise InvalidInputError("--query reads from a database: give a database URL as --input")
    path = Path(target).expanduser()
    if not path.exists():
        raise InvalidInputError(f"input {target!r} does not exist")
    if path.is_dir():
        if fmt not in (None, "parquet"):
            raise InvalidInputError(f"input {target!r} is a folder: only Parquet parts are read")
        return Location(str(path.resolve()), "parquet")
    return Location(str(path.resolve()), fmt or _file_format(path, "input"))


def destination(target: str, fmt: str | None = None, table: str | None = None) -> Location:
    """An output: a file (by suffix), a folder of Parquet parts, or a database table."""
    if _is_url(target):
        if not table:
            raise InvalidInputError(f"output {_hide_password(target)} is a database: pass --table")
        return Location(target, _database_format(target), table=table)
    if table:
        raise InvalidInputError("--table writes to a database: give a database URL as --output")
    path = Path(target).expanduser()
    if fmt is None and (target.endswith("/") or not path.suffix):
        fmt = "parquet-folder"
    elif fmt is None:
        fmt = _file_format(path, "output")
    elif fmt not in (*FILE_FORMATS, "parquet-folder"):
        raise InvalidInputError(f"unknown output format {fmt!r}; use {', '.join(FILE_FORMATS)}")
    templated = "{" in str(path.parent)  # a schedule's {date} folder: made when it runs
    if not templated and not path.resolve().parent.is_dir():
        raise InvalidInputError(f"output folder {str(path.parent)!r} does not exist")
    return Location(str(path.resolve()), fmt)


@dataclass(frozen=True)
class ErrorLimit:
    """``--max-errors``: a count of bad rows (``100``) or a share of the rows read (``0.01``,
    ``1%``). Past it the job stops; below it bad rows go to the errors file."""

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> ErrorLimit:
        if text is None or text == "":
            return cls()
        raw = text.strip()
        try:
            if raw.endswith("%"):
                return cls._fraction(float(raw[:-1]) / 100.0, text)
            if "." in raw or "e" in raw.lower():
                value = float(raw)
                if value >= 1 and value.is_integer():
                    return cls(count=int(value))  # 1e3: a count written as a float
                return cls._fraction(value, text)
            count = int(raw)
        except ValueError:
            raise InvalidInputError(
                f"--max-errors {text!r}: give a count (100), a fraction (0.01) or a percentage (1%)"
            ) from None
        if count < 0:
            raise InvalidInputError(f"--max-errors {text!r} is negative")
        return cls(count=count)

    @classmethod
    def _fraction(cls, value: float, text: str) -> ErrorLimit:
        if not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"--max-errors {text!r}: a fraction must be in [0, 1]")
        return cls(fraction=value)

    def exceeded(self, errors: int, rows: int) -> bool:
        if self.count is not None:
            return errors > self.count
        if self.fraction is not None:
            return rows > 0 and errors / rows > self.fraction
        return False

    def describe(self) -> str:
        if self.count is not None:
            return f"{self.count} bad row{'s' if self.count != 1 else ''}"
        if self.fraction is not None:
            return f"{self.fraction:.2%} of the rows"
        return "no limit"


@dataclass(frozen=True)
class JobSpec:
    reference: str
    input: Location
    output: Location
    passthrough: tuple[str, ...] = ()
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_errors: ErrorLimit = field(default_factory=ErrorLimit)
    errors_path: str | None = None
    """Where bad rows go (CSV); by default beside the output, ``NAME.errors.csv``."""
    overwrite: bool = False
    restart: bool = False
    """Give up an unfinished job doing the same work and start again from the first row."""
    engine: str = "local"
    ray_address: str | None = None
    record: bool = True

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise InvalidInputError(f"--chunk-rows must be at least 1, not {self.chunk_rows}")
        if self.engine not in ENGINES:
            raise InvalidInputError(f"unknown engine {self.engine!r}; use {', '.join(ENGINES)}")
        if len(set(self.passthrough)) != len(self.passthrough):
            raise InvalidInputError("--passthrough names a column twice")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        values = dict(data)
        values["input"] = Location(**values["input"])
        values["output"] = Location(**values["output"])
        values["max_errors"] = ErrorLimit(**values["max_errors"])
        values["passthrough"] = tuple(values["passthrough"])
        return cls(**values)

    def redacted(self) -> JobSpec:
        """For showing: a password written into a database URL is masked."""
        return replace(
            self,
            input=replace(self.input, target=_hide_password(self.input.target)),
            output=replace(self.output, target=_hide_password(self.output.target)),
        )

    def fingerprint(self) -> str:
        """Identity of the work, not of how it is run: overwrite and restart are left out, so a
        resumed run may say them or not."""
        data = self.to_dict()
        data.pop("overwrite")
        data.pop("restart")
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def errors_file(self, work: Path) -> Path:
        if self.errors_path:
            return Path(self.errors_path).expanduser().resolve()
        if self.output.is_database:
            return work.parent / f"{work.name}.errors.csv"
        out = Path(self.output.target)
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return out.with_name(f"{stem}.errors.csv")


def _is_url(target: str) -> bool:
    return "://" in target


def _database_format(url: str) -> str:
    return "duckdb" if url.startswith("duckdb:") else "sql"


def _file_format(path: Path, what: str) -> str:
    return format_of(path, FILE_FORMATS, f"{what} ", f"--{what}-format")


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
