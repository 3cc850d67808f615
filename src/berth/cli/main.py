"""The ``berth`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import audit, batch, demo, doctor, keys, logs, models, predict, records, schedules, serve
from .context import configure
from .errors import BerthGroup

app = typer.Typer(
    cls=BerthGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.add_typer(batch.app, name="batch")
app.add_typer(records.app, name="records")
app.add_typer(audit.app, name="audit")
app.add_typer(keys.app, name="keys")
app.command("scheduler")(schedules.scheduler)
app.command("predict")(predict.predict)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("logs")(logs.logs)
app.command("doctor")(doctor.doctor)


@app.command("gc")
def gc(
    ctx: typer.Context,
    older_than: Annotated[
        float,
        typer.Option(
            help="Remove leftovers without a known owner, and unreferenced artifacts, only "
            "when older than this many seconds."
        ),
    ] = 3600.0,
) -> None:
    """Remove what interrupted registrations left behind (never a registered version).

    A staging folder whose registration process is gone (same host, pid not running) goes at
    once; one of a running registration stays.

    Example: berth gc --older-than 600
    """
    from .context import client
    from .output import console

    done = client(ctx).collect_garbage(older_than)
    console.print(
        f"removed {done['staging_removed']} staging folder(s) and "
        f"{done['orphans_removed']} unreferenced artifact(s)"
    )


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(help="Berth home folder (SQLite DB and artifacts).", envvar="BERTH_HOME"),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="Metadata database URL (PostgreSQL).", envvar="BERTH_DATABASE_URL"),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Act with this API key (when auth is on, BERTH_AUTH).",
            envvar="BERTH_API_KEY",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Berth: take a trained model to production and keep it healthy there.

    Example: berth demo && berth models list
    """
    configure(ctx, home, database_url, debug, api_key)


def main() -> None:
    app()
