"""Reading small tables and JSON payloads from files or standard input (CSV, JSON, JSONL, Parquet).

For one-off predictions and training data; large inputs go through the batch adapter's chunked
readers instead.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from berth.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "json", "jsonl", "parquet")


def read_input(source: str, fmt: str | None = None) -> Any:
    """A DataFrame for CSV, JSONL and Parquet; the decoded document for JSON. ``-`` is stdin."""
    if source == "-":
        raw = sys.stdin.buffer.read()
        return _decode(raw, fmt or _sniff(raw), "standard input")
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"input file {source!r} does not exist")
    fmt = fmt or format_of(path)
    if fmt == "parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise InvalidInputError(f"{source}: not a readable Parquet file: {exc}") from exc
    return _decode(path.read_bytes(), fmt, source)


def format_of(
    path: Path, formats: tuple[str, ...] = FORMATS, what: str = "", option: str = "--format"
) -> str:
    """The format a file's suffix names (``.pq`` is Parquet, ``.ndjson`` JSONL), one of
    ``formats``; a one-line error naming the file otherwise."""
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"ndjson": "jsonl", "pq": "parquet", "parq": "parquet"}.get(suffix, suffix)
    if fmt not in formats:
        raise InvalidInputError(
            f"cannot tell the format of {what}{path.name!r} from its suffix; "
            f"use one of .{', .'.join(formats)} or pass {option}"
        )
    return fmt


def _sniff(raw: bytes) -> str:
    """JSON when the whole text parses as one document, JSONL when it is one per line, else CSV."""
    if raw.lstrip()[:1] not in (b"[", b"{"):
        return "csv"
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "jsonl"
    return "json"


def _jsonl(raw: bytes, where: str) -> pd.DataFrame:
    import pandas as pd

    records = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"{where}: invalid JSON on line {number}: {exc}") from exc
        if not isinstance(record, dict):
            raise InvalidInputError(
                f"{where}: line {number} is a {type(record).__name__}, not an object (one record "
                "per line)"
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _decode(raw: bytes, fmt: str, where: str) -> Any:
    import pandas as pd

    if not raw.strip():
        raise InvalidInputError(f"{where} is empty")
    try:
        if fmt == "json":
            return orjson.loads(raw)
        if fmt == "jsonl":
            return _jsonl(raw, where)
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: invalid JSON: {exc}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{where}: invalid {fmt.upper()}: {exc}") from exc
    raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
