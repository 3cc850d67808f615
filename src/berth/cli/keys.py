"""``berth keys``: create, list and revoke API keys (each needs the ``keys`` permission)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from berth.registry.access import ROLES
from berth.registry.keys import KeyInfo, parse_duration

from .context import client
from .errors import stderr
from .output import console, print_json, when

app = typer.Typer(
    help="API keys: who may call the server and the commands when auth is on (BERTH_AUTH).\n\n"
    "Example: berth keys create --name ci --role deployer --expires 90d",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A name for the key (the audit's actor).")],
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="A model or deployment a predictor key may predict on (repeat; default all).",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            help="Valid for this long: 90d, 12h, 2w (default: until revoked).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key and print it, once: only a keyed hash of it is stored.

    Send it as 'Authorization: Bearer KEY' to the server, or give it to the CLI and the
    Python API as BERTH_API_KEY (or --api-key).

    Example: berth keys create --name scoring-app --role predictor --scope credit-risk
    """
    expires_in = parse_duration(expires) if expires is not None else None
    new = client(ctx).create_key(name, role, scopes=scope or (), expires_in=expires_in)
    if as_json:
        print_json({"key": new.key, **_key_dict(new.info)})
        return
    console.print(new.key)
    until = f", expires {when(new.info.expires_at)}" if new.info.expires_at else ""
    scoped = f", scoped to {', '.join(new.info.scopes)}" if new.info.scopes else ""
    stderr.print(
        f"key {new.info.name!r} ({new.info.role}{scoped}{until}): shown this once; "
        "store it now, it cannot be shown again"
    )


@app.command("list")
def list_keys(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the keys (never their secrets): role, scopes, status, who created them.

    Example: berth keys list --json
    """
    keys = client(ctx).list_keys()
    if as_json:
        print_json([_key_dict(k) for k in keys])
        return
    if not keys:
        console.print("No keys yet. Create one: berth keys create --name NAME --role admin")
        return
    table = Table("name", "id", "role", "scopes", "status", "created", "by", "expires")
    for k in keys:
        table.add_row(
            k.name,
            k.id,
            k.role,
            ", ".join(k.scopes) or "all",
            k.status(),
            when(k.created_at),
            k.created_by,
            when(k.expires_at) if k.expires_at else "never",
        )
    console.print(table)


@app.command("revoke")
def revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a key for good. Servers refuse it within a few seconds (their cache of verified
    keys lasts 5 s).

    Example: berth keys revoke scoring-app
    """
    info = client(ctx).revoke_key(name)
    console.print(f"revoked key {info.name!r} ({info.role}); servers refuse it within 5 s")


def _key_dict(k: KeyInfo) -> dict[str, Any]:
    return {
        "name": k.name,
        "id": k.id,
        "role": k.role,
        "scopes": list(k.scopes),
        "status": k.status(),
        "created_at": k.created_at.isoformat(),
        "created_by": k.created_by,
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "revoked_by": k.revoked_by,
    }
