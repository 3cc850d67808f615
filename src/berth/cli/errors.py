"""How a BerthError ends a command: one line on stderr and an exit code per kind."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from berth.errors import BerthError, ErrorKind

EXIT_CODES: dict[ErrorKind, int] = {
    "invalid_input": 2,
    "not_found": 3,
    "conflict": 4,
    "unauthorized": 5,
    "forbidden": 6,
    "unavailable": 7,
}

stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class BerthGroup(TyperGroup):
    """The root group: turns a BerthError raised anywhere below into one line and an exit code,
    unless ``--debug`` asked for the traceback."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # same class at run time
        try:
            return super().invoke(ctx)
        except BerthError as exc:
            if ctx.meta.get("berth.debug"):
                raise
            stderr.print(Text.assemble(("error:", "bold red"), f" {exc}"))
            ctx.exit(EXIT_CODES[exc.kind])
