"""``berth records``: housekeeping of the prediction records (``berth logs`` reads them)."""

from __future__ import annotations

from typing import Annotated

import typer

from .context import client
from .output import console

app = typer.Typer(no_args_is_help=True, help="Prediction records: compact them.")


@app.command("compact")
def compact(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="One model (default: every model).")
    ] = None,
    older_than: Annotated[
        float,
        typer.Option(help="Leave files younger than this many seconds (being written now).", min=0),
    ] = 60.0,
) -> None:
    """Merge each day's small record files (one per flush of each server worker) into one.

    A running server does this every hour by itself; records of batch jobs are one file per
    chunk already and are left as they are (a chunk scored again replaces its file).

    Example: berth records compact --model credit-risk
    """
    from berth.registry.references import check_model_name
    from berth.runtime.record_reader import RecordReader

    if model is not None:
        check_model_name(model)
    report = RecordReader(client(ctx).settings.resolved_records_root()).compact(
        model, older_than_s=older_than
    )
    busy = f"; busy elsewhere, skipped: {', '.join(report.busy)}" if report.busy else ""
    console.print(
        f"compacted {report.files_before} file(s) into {report.files_after} "
        f"in {report.days} day(s){busy}"
    )
