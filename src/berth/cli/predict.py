"""``berth predict``: one-off predictions from a file or standard input."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from berth.runtime.files import FORMATS, read_input

from .context import client
from .output import console, print_jsonl


def predict(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
    input_: Annotated[
        str,
        typer.Option("--input", "-i", help="CSV, JSON, JSONL or Parquet file, or - for stdin."),
    ],
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"Input format: {', '.join(FORMATS)}.")
    ] = None,
    table: Annotated[bool, typer.Option("--table", help="Print a table, not JSON lines.")] = False,
) -> None:
    """Predict with a registered version; prints one JSON object per input row.

    JSON input may be a list of records, {"records": [...]}, {"texts": [...]} or a list of
    strings for text models.

    Example: echo '{"texts": ["great service"]}' | berth predict sentiment@production -i -
    """
    model = client(ctx).load(ref)
    rows = model.predict_records(read_input(input_, fmt))
    if not table:
        print_jsonl(rows)
        return
    out = Table(*rows[0].keys(), title=model.version.ref, title_justify="left")
    for row in rows:
        out.add_row(*(_cell(v) for v in row.values()))
    console.print(out)


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(
            f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items()
        )
    return f"{value:.4f}" if isinstance(value, float) else str(value)
