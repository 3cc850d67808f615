"""The ``berth`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import demo, models, predict
from .context import configure
from .errors import BerthGroup

app = typer.Typer(
    cls=BerthGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.command("predict")(predict.predict)
app.command("demo")(demo.demo)


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
) -> None:
    """Berth: take a trained model to production and keep it healthy there.

    Example: berth demo && berth models list
    """
    configure(ctx, home, database_url, debug)


def main() -> None:
    app()
