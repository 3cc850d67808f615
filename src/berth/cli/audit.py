"""``berth audit``: read, verify and export the audit log's hash chain."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from berth.registry import audit

from .context import client
from .errors import EXIT_CODES
from .output import console, print_json, when

app = typer.Typer(no_args_is_help=True, help="Read, verify and export the audit log.")


@app.command("log")
def log(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="30m, 1h, 2d or an ISO time.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this principal's events.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (alias.set), or a prefix (alias.*).")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="Only subjects starting so (credit-risk).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Events to show (the newest).", min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON (with the hashes).")] = False,
) -> None:
    """Who changed what, when, in chain order.

    Example: berth audit log --since 1d --action 'alias.*'
    """
    from berth.runtime.record_reader import parse_since

    start = parse_since(since) if since else None
    with client(ctx).db.read() as s:
        found = deque(
            audit.events(s, since=start, actor=actor, action=action, subject=subject),
            maxlen=limit,
        )
    if as_json:
        print_json([e.to_dict() for e in found])
        return
    if not found:
        console.print("no audit events" + (" match" if since or actor or action or subject else ""))
        return
    table = Table("seq", "time", "actor", "action", "subject", "details")
    for column in table.columns[:-1]:
        column.no_wrap = True
    table.columns[-1].min_width = 24  # details wrap; they never vanish
    for e in found:
        table.add_row(
            str(e.seq) if e.seq is not None else "-",
            when(datetime.fromisoformat(e.at)),
            e.actor,
            e.action,
            e.subject,
            orjson.dumps(e.details).decode() if e.details else "",
        )
    console.print(table)


@app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Verify an export (berth audit export) instead of the DB."),
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option(help="A head hash printed by an earlier verify: it must still be there."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The result as JSON.")] = False,
) -> None:
    """Walk the hash chain; name the first edited, deleted, inserted or reordered event.

    Prints the head hash: keep it elsewhere, and a later `--expect-head HASH` also catches the
    newest events removed or the chain rewritten from an earlier point.

    Example: berth audit verify --expect-head 3f1c...
    """
    if file is not None:
        result = audit.verify_export(file, expect_head)
    else:
        with client(ctx).db.read() as s:
            result = audit.verify_database(s, expect_head)
    if as_json:
        print_json(result.to_dict())
        if result.problem is not None:
            raise typer.Exit(EXIT_CODES[audit.AuditChainError.kind])
        return
    if result.problem is not None:
        raise audit.AuditChainError(result.problem)
    where = str(file) if file is not None else "audit log"
    head = f"seq {result.head_seq}" if result.head_seq is not None else "empty"
    console.print(f"{where} verified: {result.events} events; head {head} {result.head_hash}")
    if result.anchor_seq is not None:
        console.print(f"the anchored head is event {result.anchor_seq}: nothing up to it changed")
    else:
        console.print("keep the head hash elsewhere: --expect-head HASH checks it later")


@app.command("export")
def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSON Lines file to write.")],
) -> None:
    """Write every event with its hashes, and the head, for an auditor to verify offline
    (berth audit verify --file FILE).

    Example: berth audit export --out audit-2026-12.jsonl
    """
    with client(ctx).db.read() as s:
        result = audit.export(s, out)
    if result.problem is not None:  # written whole all the same: the auditor sees it all
        console.print(f"wrote {result.events} events to {out}, but the chain does not verify")
        raise audit.AuditChainError(result.problem)
    head = f"seq {result.head_seq}" if result.head_seq is not None else "empty"
    console.print(f"wrote {result.events} events to {out}; head {head} {result.head_hash}")
