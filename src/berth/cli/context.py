"""The client a command works on, built once per invocation from the root options."""

from __future__ import annotations

from pathlib import Path

import typer

from berth.app import Berth
from berth.config import Settings


def client(ctx: typer.Context) -> Berth:
    root = ctx.find_root()
    found = root.meta.get("berth.client")
    if found is None:
        overrides = root.meta.get("berth.settings", {})
        found = Berth(Settings(**overrides))
        root.meta["berth.client"] = found
        root.call_on_close(found.close)
    assert isinstance(found, Berth)
    return found


def configure(ctx: typer.Context, home: Path | None, database_url: str | None, debug: bool) -> None:
    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = home
    if database_url is not None:
        overrides["database_url"] = database_url
    ctx.meta["berth.settings"] = overrides
    ctx.meta["berth.debug"] = debug
