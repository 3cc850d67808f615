"""What a batch job is asked to do, checked before anything runs, and stored with the job.

A spec round-trips through JSON (the jobs table, schedules), and the same spec always gives the
same fingerprint: that is how running a command again finds the job it interrupted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from berth.errors import InvalidInputError
from berth.registry.redaction import hide_password, passwords, scrub, strip_password
from berth.runtime.files import format_of

FILE_FORMATS = ("parquet", "csv", "jsonl")
DEFAULT_CHUNK_ROWS = 100_000
ENGINES = ("local", "ray")


class _Spec(BaseModel):
    """Stored with a job as JSON and read back: an unknown key is a mistake, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Spec):
    """A file, a folder of Parquet parts, or a table or query in a database."""

    target: str = Field(
        description="A path, or a database URL (SQLAlchemy, or duckdb:///file.duckdb)."
    )
    format: str = Field(description="parquet, parquet-folder, csv, jsonl, sql or duckdb.")
    query: str | None = Field(default=None, description="What to read from a database.")
    table: str | None = Field(default=None, description="Where to write in a database.")

    @property
    def is_database(self) -> bool:
        return self.format in ("sql", "duckdb")

    @property
    def url(self) -> str:
        """The database URL with ``${VARIABLES}`` filled in from the environment, when it is
        opened: a password given as ``${PGPASSWORD}`` is never stored with the job."""
        return os.path.expandvars(self.target)

    def stored(self) -> Location:
        """As a job or schedule stores it: a password written into a database URL removed."""
        if not self.is_database:
            return self
        return self.model_copy(update={"target": strip_password(self.target)})

    def scrub(self, message: str) -> str:
        """A driver's message about this location, its passwords (written or filled in from
        the environment) masked; when it is about a password, where one comes from."""
        if not self.is_database:
            return message
        message = scrub(message, (self.target, self.url))
        if "password" in message.lower() and not passwords(self.url):
            message += (
                " (a password written into a database URL is never stored with a job: give it "
                "as ${VAR}, in PGPASSWORD or ~/.pgpass, or run the same berth batch run "
                "command, password included, again)"
            )
        return message

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
        return Location(target=target, format=_database_format(target), query=query)
    if query:
        raise InvalidInputError("--query reads from a database: give a database URL as --input")
    path = Path(target).expanduser()
    if not path.exists():
        raise InvalidInputError(f"input {target!r} does not exist")
    if path.is_dir():
        if fmt not in (None, "parquet"):
            raise InvalidInputError(f"input {target!r} is a folder: only Parquet parts are read")
        return Location(target=str(path.resolve()), format="parquet")
    return Location(target=str(path.resolve()), format=fmt or _file_format(path, "input"))


def destination(target: str, fmt: str | None = None, table: str | None = None) -> Location:
    """An output: a file (by suffix), a folder of Parquet parts, or a database table."""
    if _is_url(target):
        if not table:
            raise InvalidInputError(f"output {_hide_password(target)} is a database: pass --table")
        return Location(target=target, format=_database_format(target), table=table)
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
    return Location(target=str(path.resolve()), format=fmt)


class ErrorLimit(_Spec):
    """``--max-errors``: a count of bad rows (``100``) or a share of the rows read (``0.01``,
    ``1%``). Past it the job stops; below it bad rows go to the errors file."""

    count: int | None = Field(default=None, ge=0, description="Bad rows allowed.")
    fraction: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Share of the rows read allowed to be bad."
    )

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


class JobSpec(_Spec):
    """What a batch job is asked to do (``berth batch run``'s options)."""

    reference: str = Field(description="NAME, NAME/VERSION, NAME@ALIAS or NAME@latest.")
    input: Location
    output: Location
    passthrough: tuple[str, ...] = Field(
        default=(), description="Input columns copied to the output beside the predictions."
    )
    chunk_rows: int = Field(
        default=DEFAULT_CHUNK_ROWS, description="Rows read, validated and scored at a time."
    )
    max_errors: ErrorLimit = Field(default_factory=ErrorLimit)
    errors_path: str | None = Field(
        default=None,
        description="Where bad rows go (CSV); by default beside the output, NAME.errors.csv.",
    )
    overwrite: bool = Field(default=False, description="Replace an existing output.")
    restart: bool = Field(
        default=False,
        description="Give up an unfinished job doing the same work and start from the first row.",
    )
    engine: str = Field(default="local", description="Where predictions run: local or ray.")
    ray_address: str | None = Field(default=None, description="A Ray cluster; none: local Ray.")
    record: bool = Field(default=True, description="Write prediction records (mode batch).")

    @model_validator(mode="after")
    def _coherent(self) -> JobSpec:
        if self.chunk_rows < 1:
            raise InvalidInputError(f"--chunk-rows must be at least 1, not {self.chunk_rows}")
        if self.engine not in ENGINES:
            raise InvalidInputError(f"unknown engine {self.engine!r}; use {', '.join(ENGINES)}")
        if len(set(self.passthrough)) != len(self.passthrough):
            raise InvalidInputError("--passthrough names a column twice")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec as the jobs and schedules tables store it: passwords written into database
        URLs removed (``${VAR}`` references kept), so neither a stored spec nor its
        fingerprint holds a secret."""
        return self.stored().model_dump()

    def stored(self) -> JobSpec:
        return self.model_copy(
            update={"input": self.input.stored(), "output": self.output.stored()}
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInputError(f"a stored batch job spec is not valid: {exc}") from None

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with ``changes``, checked again."""
        return JobSpec.model_validate({**self.model_dump(), **changes})

    def redacted(self) -> JobSpec:
        """For showing: a password written into a database URL is masked."""
        return self.model_copy(
            update={
                "input": self.input.model_copy(
                    update={"target": _hide_password(self.input.target)}
                ),
                "output": self.output.model_copy(
                    update={"target": _hide_password(self.output.target)}
                ),
            }
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
    return hide_password(url) if _is_url(url) else url
