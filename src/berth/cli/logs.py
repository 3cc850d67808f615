"""``berth logs``: prediction records of a model, printed or exported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from berth.errors import InvalidInputError
from berth.registry.references import parse_reference

from .context import client
from .output import console


def logs(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (every version), NAME/VERSION or NAME@ALIAS.")],
    since: Annotated[str, typer.Option(help="30m, 1h, 2d or an ISO time.")] = "1h",
    until: Annotated[str | None, typer.Option(help="End of the window (default now).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Export to a .parquet or .csv file.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to print (the newest).", min=1)] = 20,
) -> None:
    """Print or export the prediction records of a model in a time window.

    Example: berth logs credit-risk@production --since 1h --output last-hour.parquet
    """
    from berth.runtime.record_reader import RecordReader, parse_since

    c = client(ctx)
    reference = parse_reference(ref)
    version = None
    if reference.is_default:  # the model: every version's records
        c.registry.list_versions(reference.name)  # a clear error for an unknown model
    else:
        version = c.get_version(str(reference)).version
    if output is not None and output.suffix.lower() not in (".parquet", ".csv"):
        raise InvalidInputError(f"cannot export to {output.name!r}: use .parquet or .csv")
    table = RecordReader(c.settings.resolved_records_root()).read(
        reference.name,
        version=version,
        since=parse_since(since),
        until=parse_since(until) if until else None,
    )
    if output is not None:
        _export(table, output)
        console.print(f"wrote {table.num_rows} records to {output}")
        return
    if table.num_rows == 0:
        console.print(f"no records for {ref} since {since}")
        return
    newest = table.slice(max(0, table.num_rows - limit))
    view = Table(
        "time",
        "version",
        "prediction id",
        "unit",
        "ms",
        "outputs",
        title=f"{ref}: {table.num_rows} records, the newest {newest.num_rows}",
        title_justify="left",
    )
    outputs = [n for n in newest.column_names if n.startswith("out.")]
    for row in newest.to_pylist():
        shown = ", ".join(f"{n[4:]}={_short(row[n])}" for n in outputs)
        view.add_row(
            row["time"].strftime("%H:%M:%S.%f")[:-3],
            str(row["version"]),
            row["prediction_id"],
            row["unit_id"] or "-",
            f"{row['latency_ms']:.1f}",
            shown,
        )
    console.print(view)


def _short(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _export(table: object, output: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    assert isinstance(table, pa.Table)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".parquet":
        pq.write_table(table, output)
        return
    flat = table
    for i, field in enumerate(table.schema):
        if pa.types.is_fixed_size_list(field.type) or pa.types.is_list(field.type):
            as_text = pa.array([None if v is None else str(v) for v in table.column(i).to_pylist()])
            flat = flat.set_column(i, field.name, as_text)
    pacsv.write_csv(flat, output)
