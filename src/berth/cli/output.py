"""Rendering for the terminal: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

# Markup off: model names, descriptions and error messages are user text, never Rich markup.
console = Console(highlight=False, soft_wrap=True, markup=False)


def bold(title: str, rest: str = "") -> None:
    """A line with a bold lead, the rest printed verbatim."""
    console.print(Text.assemble((title, "bold"), rest))


def print_json(value: Any) -> None:
    """Write JSON to stdout without Rich's wrapping, so pipes get valid JSON."""
    data = orjson.dumps(
        value, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    )
    console.file.write(data.decode() + "\n")


def print_jsonl(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        console.file.write(orjson.dumps(row, default=_default).decode() + "\n")


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def when(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def key_values(pairs: list[str], what: str) -> dict[str, str]:
    """Parse repeated ``key=value`` options."""
    from berth.errors import InvalidInputError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{what} {pair!r} must look like key=value")
        out[key] = value
    return out


def fields(title: str, rows: list[tuple[str, str]]) -> None:
    """A titled block of ``name  value`` lines (one record, shown whole)."""
    from rich.table import Table

    bold(title)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value)
    console.print(grid)


def log_to_stderr(names: tuple[str, ...], fmt: str = "%(message)s") -> None:
    """Show these loggers' INFO lines on stderr (long-running commands: serve, scheduler)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
