"""The client a command works on, built once per invocation from the root options, and the
principal the invocation acts as."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from berth.app import Berth
from berth.config import Settings
from berth.errors import InvalidInputError
from berth.registry.access import reset_current, set_current


def client(ctx: typer.Context, *, acting: bool = True) -> Berth:
    """The invocation's client. ``acting`` (every command but ``serve``, whose requests act as
    their own principals): the rest of the invocation acts as the client's principal, the
    local user with auth off, else the principal of ``--api-key`` / ``BERTH_API_KEY``; with
    auth on and no key the command ends here in one line."""
    root = ctx.find_root()
    found = root.meta.get("berth.client")
    if found is None:
        overrides = root.meta.get("berth.settings", {})
        found = Berth(_settings(overrides))
        root.meta["berth.client"] = found
        root.call_on_close(found.close)
    assert isinstance(found, Berth)
    if acting and not root.meta.get("berth.acting"):
        token = set_current(found.principal)  # raises UnauthorizedError without a good key
        root.meta["berth.acting"] = True
        root.call_on_close(lambda: reset_current(token))
    return found


def _settings(overrides: dict[str, Any]) -> Settings:
    """The settings, a bad ``BERTH_*`` value one line naming the variable (not a traceback)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field, *inner = (str(part) for part in first["loc"])
        where = ".".join(inner)
        raise InvalidInputError(
            f"BERTH_{field.upper()} is not valid: {where + ': ' if where else ''}{first['msg']}"
        ) from exc
    except SettingsError as exc:  # not JSON where JSON was expected
        cause = exc.__cause__
        raise InvalidInputError(f"{exc}: {cause}" if cause else str(exc)) from exc


def configure(
    ctx: typer.Context,
    home: Path | None,
    database_url: str | None,
    debug: bool,
    api_key: str | None = None,
) -> None:
    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = home
    if database_url is not None:
        overrides["database_url"] = database_url
    if api_key is not None:
        overrides["api_key"] = api_key
    ctx.meta["berth.settings"] = overrides
    ctx.meta["berth.debug"] = debug
